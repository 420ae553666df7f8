"""eval.py's drawing modes and its bad-input contract, in subprocesses on the tiny YOLACT++.

One checkpoint (``tests.conftest.save_detecting_checkpoint``: many detections) serves every
run. Only the working run compiles the inference graph; it draws an image, a folder and a
video and evaluates the same image with --output_json, whose detections let the test redraw
the expected picture. Each bad input must end the run with exit code 2 and one last stderr line
``eval.py: error: ...`` naming the file, before anything is written.
"""
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from src.utils.visualize import draw_detections
from tests.conftest import save_detecting_checkpoint, tiny_config
from tests.test_train import write_config_yaml

# Slow: eval.py subprocesses compile the inference graph.
pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The detecting checkpoint's random mask-IoU net predicts IoUs near 0: its mask scores (the
# ones drawn) are < 0.01. About 9 of scene.png's detections pass 0.002, and top_k cuts them to 5.
SCORE_THRESHOLD = 0.002
TOP_K = 5
VIDEO_FRAMES = 5
VIDEO_SIZE = (64, 48)        # (width, height)


def run_eval_py(cwd, *args):
    """eval.py in a fresh process (cwd: MindSpore may drop IR dumps there)."""
    env = dict(os.environ, MS_COMPILER_CACHE_ENABLE="0")
    return subprocess.run([sys.executable, os.path.join(REPO, "eval.py"), *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=600)


def decode_rle(segmentation):
    """[H, W] bool of a results-json RLE (counts stored as str)."""
    return mask_utils.decode(dict(segmentation, counts=segmentation["counts"].encode())) > 0


def smooth_image(seed, height, width):
    """[height, width, 3] uint8 BGR: random colour blobs (upsampled noise)."""
    noise = np.random.default_rng(seed).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return cv2.resize(noise, (width, height), interpolation=cv2.INTER_LINEAR)


def write_video(path, num_frames, size):
    """An mp4v video of ``num_frames`` random frames of ``size`` (width, height)."""
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 5.0, size)
    assert writer.isOpened()
    for index in range(num_frames):
        writer.write(smooth_image(100 + index, size[1], size[0]))
    writer.release()


def read_video(path):
    """(decoded frame count, (width, height)) of a video file."""
    capture = cv2.VideoCapture(path)
    size = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    frames = 0
    while capture.read()[0]:
        frames += 1
    capture.release()
    return frames, size


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The tiny config's YAML and checkpoint, a YAML of another config, and input media."""
    root = tmp_path_factory.mktemp("eval_cli")
    files = SimpleNamespace(root=root)
    files.config = tiny_config()
    files.yaml = write_config_yaml(root / "tiny.yaml", files.config)
    files.other_yaml = write_config_yaml(root / "other.yaml", tiny_config(num_classes=3))
    files.ckpt = save_detecting_checkpoint(files.config, str(root / "tiny.ckpt"))

    files.folder = root / "pictures"
    files.folder.mkdir()
    files.scene = str(files.folder / "scene.png")
    cv2.imwrite(files.scene, smooth_image(0, 72, 96))
    cv2.imwrite(str(files.folder / "street.jpg"), smooth_image(1, 50, 40))

    files.video = str(root / "clip.mp4")
    write_video(files.video, VIDEO_FRAMES, VIDEO_SIZE)
    files.garbage_jpg = str(root / "garbage.jpg")
    files.garbage_mp4 = str(root / "garbage.mp4")
    for path in (files.garbage_jpg, files.garbage_mp4):
        with open(path, "wb") as handle:
            handle.write(np.random.default_rng(5).bytes(2000))
    files.regular_file = str(root / "notes.txt")
    with open(files.regular_file, "w") as handle:
        handle.write("a file, not a folder\n")

    # scene.png as a one-image COCO split: --output_json then records its detections.
    files.ann_file = str(root / "scene.json")
    with open(files.ann_file, "w") as handle:
        json.dump({"images": [{"id": 7, "file_name": "scene.png", "height": 72, "width": 96}],
                   "annotations": [{"id": 1, "image_id": 7, "category_id": 2, "iscrowd": 0,
                                    "bbox": [10, 10, 30, 20], "area": 600.0,
                                    "segmentation": [[10, 10, 40, 10, 40, 30, 10, 30]]}],
                   "categories": [{"id": i, "name": f"class{i - 1}"} for i in (1, 2, 3)]},
                  handle)
    return files


@pytest.fixture(scope="module")
def drawn(inputs):
    """One eval.py run: --image, --images, --video, and COCO evaluation of scene.png."""
    out = inputs.root / "drawn"
    out.mkdir()
    result = SimpleNamespace(image=str(out / "scene_drawn.png"), folder=str(out / "folder"),
                             video=str(out / "clip_drawn.mp4"), prefix=str(out / "scene"))
    result.proc = run_eval_py(
        inputs.root, "--config", inputs.yaml, "--ckpt", inputs.ckpt,
        "--image", f"{inputs.scene}:{result.image}",
        "--images", f"{inputs.folder}:{result.folder}",
        "--video", f"{inputs.video}:{result.video}",
        "--draw_score_threshold", str(SCORE_THRESHOLD), "--draw_top_k", str(TOP_K),
        "--ann_file", inputs.ann_file, "--image_dir", str(inputs.folder),
        "--output_json", result.prefix)
    assert result.proc.returncode == 0, result.proc.stderr[-3000:]
    return result


def test_image_is_drawn_with_the_detections_eval_reports(inputs, drawn):
    source = cv2.imread(inputs.scene)
    picture = cv2.imread(drawn.image)
    assert picture.shape == source.shape == (72, 96, 3)

    with open(f"{drawn.prefix}_bbox.json") as bbox, open(f"{drawn.prefix}_segm.json") as segm:
        boxes, masks = json.load(bbox), json.load(segm)
    assert len(boxes) == len(masks) > 0
    assert f"{len(boxes)} detections; wrote {drawn.image}" in drawn.proc.stdout
    assert all(entry["image_id"] == 7 for entry in boxes)
    # The results json holds every detection (none has a zero-area box here): redraw them.
    detections = {
        "boxes": np.array([[x, y, x + w, y + h] for x, y, w, h in (e["bbox"] for e in boxes)],
                          np.float64).round().astype(np.int64),
        "classes": np.array([e["category_id"] - 1 for e in boxes], np.int64),
        "box_scores": np.array([e["score"] for e in boxes], np.float32),
        "mask_scores": np.array([e["score"] for e in masks], np.float32),
        "masks": np.stack([decode_rle(e["segmentation"]) for e in masks]),
    }
    passing = detections["mask_scores"] >= SCORE_THRESHOLD
    assert TOP_K < np.count_nonzero(passing) < len(boxes)
    expected = draw_detections(source, detections, inputs.config.data.class_names,
                               SCORE_THRESHOLD, TOP_K)
    np.testing.assert_array_equal(picture, expected)

    changed = np.any(picture != source, axis=2)
    top = np.argsort(-detections["mask_scores"], kind="stable")[:TOP_K]
    assert changed[detections["masks"][top].any(axis=0)].mean() > 0.9


def test_images_draws_every_picture_of_the_folder(inputs, drawn):
    assert f"wrote 2 images to {drawn.folder}" in drawn.proc.stdout
    assert sorted(os.listdir(drawn.folder)) == ["scene.png", "street.jpg"]
    street = cv2.imread(os.path.join(drawn.folder, "street.jpg"))
    assert street.shape == (50, 40, 3)
    # The same image and weights give the same picture as --image (PNG is lossless).
    np.testing.assert_array_equal(cv2.imread(os.path.join(drawn.folder, "scene.png")),
                                  cv2.imread(drawn.image))


def test_video_is_drawn_frame_by_frame(inputs, drawn):
    assert f"wrote {VIDEO_FRAMES} frames to {drawn.video}" in drawn.proc.stdout
    assert read_video(inputs.video) == (VIDEO_FRAMES, VIDEO_SIZE)
    assert read_video(drawn.video) == (VIDEO_FRAMES, VIDEO_SIZE)


def _error_cases(inputs):
    """case -> (eval.py arguments after --config, expected message, path that must not appear)."""
    root = inputs.root
    missing_ckpt = str(root / "missing.ckpt")
    missing_video = str(root / "missing.mp4")
    under_file = os.path.join(inputs.regular_file, "scene.png")
    weights = ["--ckpt", inputs.ckpt]
    return {
        "missing checkpoint": (
            ["--ckpt", missing_ckpt, "--image", f"{inputs.scene}:{root / 'e1.png'}"],
            f"{missing_ckpt}: checkpoint file not found", root / "e1.png"),
        "checkpoint of another config": (
            ["--ckpt", inputs.ckpt, "--image", f"{inputs.scene}:{root / 'e2.png'}"],
            f"{inputs.ckpt}: does not fit this model", root / "e2.png"),
        "unreadable image": (
            weights + ["--image", f"{inputs.garbage_jpg}:{root / 'e3.png'}"],
            f"{inputs.garbage_jpg}: image missing or unreadable", root / "e3.png"),
        "missing video": (
            weights + ["--video", f"{missing_video}:{root / 'e4.mp4'}"],
            f"{missing_video}: video missing or unreadable", root / "e4.mp4"),
        "garbage video": (
            weights + ["--video", f"{inputs.garbage_mp4}:{root / 'e5.mp4'}"],
            f"{inputs.garbage_mp4}: video missing or unreadable", root / "e5.mp4"),
        "image output under a file": (
            weights + ["--image", f"{inputs.scene}:{under_file}"],
            f"{inputs.regular_file}: output folder for {under_file} is not a folder", None),
        "folder output under a file": (
            weights + ["--images", f"{inputs.folder}:{os.path.join(inputs.regular_file, 'out')}"],
            f"{os.path.join(inputs.regular_file, 'out')}: cannot create the output folder", None),
    }


@pytest.mark.parametrize("case", ["missing checkpoint", "checkpoint of another config",
                                  "unreadable image", "missing video", "garbage video",
                                  "image output under a file", "folder output under a file"])
def test_bad_input_ends_with_one_error_line(inputs, case):
    args, message, output = _error_cases(inputs)[case]
    yaml = inputs.other_yaml if case == "checkpoint of another config" else inputs.yaml
    proc = run_eval_py(inputs.root, "--config", yaml, *args)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("eval.py: error: ") and message in lines[-1], proc.stderr[-3000:]
    assert [line for line in lines if line.startswith("eval.py: error:")] == lines[-1:]
    assert "Traceback" not in proc.stderr
    if output is not None:
        assert not os.path.exists(output)
