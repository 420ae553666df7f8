"""Run a detector on an image, a folder of images or a video and write annotated copies
(masks in class colours, boxes, "class: score" labels)."""
import os

import cv2

from src.utils.files import cannot_write_reason
from src.utils.progress import Progress
from src.utils.visualize import draw_detections

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class MediaError(ValueError):
    """An input that cannot be read or an output that cannot be written; names the path."""


def split_pair(value, flag):
    """``"in:out"`` -> (in, out), or a MediaError naming the flag."""
    source, sep, target = value.rpartition(":")
    if not sep or not source or not target:
        raise MediaError(f"{flag} '{value}': expected INPUT:OUTPUT")
    return source, target


def check_output_dir(directory, label):
    """Raise MediaError unless ``directory`` ("": the current one) is a folder a file can be
    created in, for the output ``label``. A probe file is written and removed: permission
    bits do not tell (root ignores them; read-only mounts and /sys refuse root too)."""
    directory = directory or "."
    if not os.path.isdir(directory):
        problem = "is not a folder" if os.path.exists(directory) else "does not exist"
        raise MediaError(f"{directory}: output folder for {label} {problem}")
    reason = cannot_write_reason(directory)
    if reason:
        raise MediaError(f"{directory}: output folder for {label} is not writable ({reason})")


def make_output_dir(directory, label):
    """Create ``directory`` and its parents if needed, then ``check_output_dir``."""
    try:
        os.makedirs(directory or ".", exist_ok=True)
    except OSError as error:
        raise MediaError(f"{directory}: cannot create the output folder "
                         f"({error.strerror})") from None
    check_output_dir(directory, label)


def _write_image(path, image):
    try:
        written = cv2.imwrite(path, image)
    except cv2.error:
        written = False
    if not written:
        raise MediaError(f"{path}: cannot write the image (unknown extension or no permission)")


def annotate_image(detector, source, target, class_names, score_threshold=0.0, top_k=None):
    """Detect in one image file and write the drawing to ``target``; returns the result."""
    check_output_dir(os.path.dirname(target), target)
    image = cv2.imread(source, cv2.IMREAD_COLOR)
    if image is None:
        raise MediaError(f"{source}: image missing or unreadable")
    result = detector(image)
    _write_image(target, draw_detections(image, result, class_names, score_threshold, top_k))
    return result


def annotate_folder(detector, source_dir, target_dir, class_names, score_threshold=0.0,
                    top_k=None):
    """Every image of ``source_dir`` (by suffix, sorted) -> a drawing of the same name in
    ``target_dir`` (created). Returns the number of images written."""
    if not os.path.isdir(source_dir):
        raise MediaError(f"{source_dir}: input folder does not exist")
    names = sorted(name for name in os.listdir(source_dir)
                   if name.lower().endswith(IMAGE_SUFFIXES))
    if not names:
        raise MediaError(f"{source_dir}: no images ({', '.join(IMAGE_SUFFIXES)}) in the folder")
    make_output_dir(target_dir, target_dir)
    progress = Progress(len(names), label="images")
    for name in names:
        annotate_image(detector, os.path.join(source_dir, name), os.path.join(target_dir, name),
                       class_names, score_threshold, top_k)
        progress.update()
    return len(names)


def annotate_video(detector, source, target, class_names, score_threshold=0.0, top_k=None):
    """Detect in every frame of a video and write an annotated video (mp4v codec, the
    source's frame rate and size). Returns the number of frames written."""
    check_output_dir(os.path.dirname(target), target)
    capture = cv2.VideoCapture(source)
    if not capture.isOpened():
        raise MediaError(f"{source}: video missing or unreadable")
    fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
    width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
    height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    writer = cv2.VideoWriter(target, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        capture.release()
        raise MediaError(f"{target}: cannot write a video there (use a .mp4 or .avi name)")
    progress = Progress(max(total, 1), label="frames", unit="frame")
    frames = 0
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            result = detector(frame)
            writer.write(draw_detections(frame, result, class_names, score_threshold, top_k))
            frames += 1
            progress.update()
    finally:
        capture.release()
        writer.release()
    if frames == 0:
        raise MediaError(f"{source}: no frame could be decoded")
    return frames
