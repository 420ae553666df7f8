"""COCO evaluation runs: images from an annotation file's folder or a MindRecord split,
batched detection, results JSON, COCOeval bbox/segm AP, and a benchmark mode.

Every input and the output are checked before the first image is detected
(``prepare_coco_evaluation``): a wrong file costs seconds, not a run."""
import contextlib
import io
import itertools
import os
import time
from typing import Iterator, NamedTuple

import cv2
import mindspore.dataset as ds
import numpy as np
from mindspore import Tensor
from pycocotools.coco import COCO

from src.data.coco import CategoryMap, DatasetError
from src.data.dataset import read_image
from src.data.mindrecord import INFO_FILE, field_bytes, read_dataset_info, shard_paths, split_dir
from src.evaluation.coco_eval import CocoEvaluator, format_results_table, results_paths
from src.inference.annotate import MediaError, make_output_dir
from src.inference.detector import detections_to_image
from src.utils.progress import Progress


def load_ground_truth(ann_file, num_fg_classes):
    """pycocotools COCO of ``ann_file`` and the label -> category id map (ids sorted, as
    ``create_mindrecord.py`` and the authors' COCO label map order them)."""
    if not os.path.isfile(ann_file):
        raise DatasetError(f"{ann_file}: annotation file not found")
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            coco_gt = COCO(ann_file)
        except (ValueError, KeyError, TypeError) as error:
            raise DatasetError(f"{ann_file}: not a COCO annotation file ({error})") from None
    category_ids = tuple(sorted(coco_gt.getCatIds()))
    if len(category_ids) != num_fg_classes:
        raise DatasetError(f"{ann_file}: {len(category_ids)} categories, but the config has "
                           f"{num_fg_classes} classes; use the config the model was trained with")
    return coco_gt, category_ids


def evaluated_image_ids(coco_gt, max_images=0):
    """Ids of the images with at least one annotation (the authors skip the others), in
    id order, cut to ``max_images`` when > 0."""
    ids = sorted(i for i in coco_gt.getImgIds() if coco_gt.getAnnIds(imgIds=[i]))
    return ids[:max_images] if max_images > 0 else ids


class CocoEvaluation(NamedTuple):
    """A COCO evaluation whose inputs and output were checked (``prepare_coco_evaluation``)."""
    coco_gt: COCO               # pycocotools COCO of the annotation file
    category_ids: tuple         # label -> COCO category id
    image_ids: tuple            # the evaluated images, in id order
    images: Iterator            # (image_id, [H, W, 3] uint8 BGR) of image_ids; read once, lazily
    output_json: str            # prefix of the results json, or ""


def prepare_coco_evaluation(ann_file, class_names, image_dir="", mindrecord_dir="", split="val",
                            max_images=0, output_json=""):
    """Check everything a COCO evaluation reads and writes, before any image is detected.

    The images come from ``image_dir`` (every evaluated image must be a file there) or from
    split ``split`` of ``mindrecord_dir`` (every evaluated image must be in the split, with
    the annotation file's size, and the split's categories must be the annotation file's and
    the config's). ``output_json``, when given, must be writable.

    Args:
        ann_file: COCO-format annotations of the evaluated images.
        class_names: the config's class names (label order).
        max_images: evaluate only the first N annotated images (0: all).

    Raises:
        DatasetError (images, annotations) or MediaError (output): one line naming the file.
    """
    coco_gt, category_ids = load_ground_truth(ann_file, len(class_names))
    image_ids = evaluated_image_ids(coco_gt, max_images)
    if mindrecord_dir:
        check_split_categories(ann_file, coco_gt, class_names, mindrecord_dir, split)
        images = images_from_mindrecord(ann_file, coco_gt, mindrecord_dir, split, image_ids)
    elif image_dir:
        images = images_from_folder(coco_gt, image_dir, image_ids)
    else:
        raise ValueError(f"{ann_file}: give the folder of its images or a MindRecord split")
    if output_json:
        check_results_writable(output_json)
    return CocoEvaluation(coco_gt, category_ids, tuple(image_ids), images, output_json)


def check_results_writable(path_prefix):
    """Raise MediaError unless ``results_paths(path_prefix)`` can be written: their folder is
    created and takes a probe file, and neither path is a folder."""
    make_output_dir(os.path.dirname(path_prefix), f"--output_json {path_prefix}")
    for path in results_paths(path_prefix).values():
        if os.path.isdir(path):
            raise MediaError(f"{path}: is a folder; --output_json expects a file name prefix")


def images_from_folder(coco_gt, image_dir, image_ids):
    """Check that every image of ``image_ids`` is a file in ``image_dir``, then return an
    iterator of (image_id, BGR image) read with OpenCV.

    Raises:
        DatasetError: naming the first missing file and how many are missing.
    """
    if not os.path.isdir(image_dir):
        raise DatasetError(f"{image_dir}: image directory not found")
    paths = [os.path.join(image_dir, coco_gt.imgs[i]["file_name"]) for i in image_ids]
    missing = [path for path in paths if not os.path.isfile(path)]
    if missing:
        problem = "is not a file" if os.path.exists(missing[0]) else "not found"
        raise DatasetError(f"{missing[0]}: image {problem}; {len(missing)} of the {len(paths)} "
                           f"evaluated images are missing from {image_dir}")
    return _read_image_files(image_ids, paths)


def _read_image_files(image_ids, paths):
    for image_id, path in zip(image_ids, paths):
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            raise DatasetError(f"{path}: image unreadable (image id {image_id})")
        yield image_id, image


def _first_difference(ours, theirs):
    """(label, ours[label], theirs[label]) at the first label where two per-label lists differ
    ("nothing" past the end of the shorter), or None when they are equal."""
    for label, (mine, other) in enumerate(itertools.zip_longest(ours, theirs, fillvalue="nothing")):
        if mine != other:
            return label, mine, other
    return None


def check_split_categories(ann_file, coco_gt, class_names, mindrecord_dir, split):
    """Raise DatasetError unless the split's recorded categories (dataset_info.json) are the
    annotation file's (ids and names, label order) and its class names the config's: otherwise
    labels would be scored as other categories."""
    info_path = os.path.join(split_dir(mindrecord_dir, split), INFO_FILE)
    try:
        recorded = CategoryMap.from_dict(read_dataset_info(mindrecord_dir, split))
    except KeyError as error:
        raise DatasetError(f"{info_path}: no {error} field; re-create split '{split}' with "
                           f"create_mindrecord.py") from None
    annotated = [f"category {i} '{coco_gt.cats[i]['name']}'" for i in sorted(coco_gt.getCatIds())]
    difference = _first_difference(annotated, [
        f"category {i} '{name}'" for i, name in zip(recorded.category_ids, recorded.class_names)])
    if difference:
        label, in_file, in_split = difference
        raise DatasetError(f"{ann_file}: categories differ from split '{split}' of "
                           f"{mindrecord_dir} ({INFO_FILE}): label {label} is {in_file} in the "
                           f"annotation file but {in_split} in the split")
    difference = _first_difference([f"'{name}'" for name in recorded.class_names],
                                   [f"'{name}'" for name in class_names])
    if difference:
        label, in_split, in_config = difference
        raise DatasetError(f"{info_path}: class names differ from the config's: label {label} is "
                           f"{in_split} in split '{split}' but {in_config} in the config")


def _split_image_sizes(mindrecord_dir, split):
    """{image_id: (height, width)} of every row of a MindRecord split; no image is decoded."""
    dataset = ds.MindDataset(shard_paths(mindrecord_dir, split),
                             columns_list=["image_id", "height", "width"], shuffle=False)
    return {int(row["image_id"]): (int(row["height"]), int(row["width"]))
            for row in dataset.create_dict_iterator(output_numpy=True, num_epochs=1)}


def images_from_mindrecord(ann_file, coco_gt, mindrecord_dir, split, image_ids):
    """Check that every image of ``image_ids`` is in the MindRecord split with the size
    ``ann_file`` gives it (a split of other images would be scored against this file's
    objects), then return an iterator of (image_id, BGR image) of those rows, in split order.

    Raises:
        DatasetError: naming both files, the split, the first image that differs and how many do.
    """
    where = f"split '{split}' of {mindrecord_dir}"
    sizes = _split_image_sizes(mindrecord_dir, split)
    missing = [i for i in image_ids if i not in sizes]
    if missing:
        raise DatasetError(f"{ann_file}: {len(missing)} of the {len(image_ids)} evaluated images "
                           f"are not in {where}, e.g. image id {missing[0]}; expected the split "
                           f"converted from this file (create_mindrecord.py --keep_empty keeps "
                           f"images without usable objects)")
    annotated = {i: (coco_gt.imgs[i]["height"], coco_gt.imgs[i]["width"]) for i in image_ids}
    resized = [i for i in image_ids if sizes[i] != annotated[i]]
    if resized:
        first = resized[0]
        (height, width), (split_height, split_width) = annotated[first], sizes[first]
        raise DatasetError(f"{ann_file}: image id {first} is {height}x{width} (height x width) "
                           f"there but {split_height}x{split_width} in {where} ({len(resized)} of "
                           f"the {len(image_ids)} evaluated images differ); expected the split "
                           f"converted from this file")
    return read_split_images(mindrecord_dir, split, set(image_ids))


def read_split_images(mindrecord_dir, split, wanted):
    """(image_id, [H, W, 3] uint8 BGR image) of the split's rows whose id is in ``wanted``,
    in split order; nothing is checked (``images_from_mindrecord`` checks first)."""
    columns = ["image", "file_name", "image_id", "ignore_exif_orientation"]
    dataset = ds.MindDataset(shard_paths(mindrecord_dir, split), columns_list=columns,
                             shuffle=False)
    for row in dataset.create_dict_iterator(output_numpy=True, num_epochs=1):
        image_id = int(row["image_id"])
        if image_id in wanted:
            name = str(np.asarray(row["file_name"]).item())
            yield image_id, read_image(field_bytes(row["image"]),
                                       bool(row["ignore_exif_orientation"]), name)


def _batches(items, size):
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def run_coco_evaluation(detector, evaluation):
    """Detect every image, write the results json if asked, then COCOeval bbox and segm over
    the evaluated images.

    Args:
        detector: a ``src.inference.BatchDetector`` (checkpoint or exported MINDIR).
        evaluation: a ``CocoEvaluation`` of ``prepare_coco_evaluation`` (its images are read).

    Returns:
        {"bbox": {AP, AP50, ...}, "segm": {...}} as fractions.
    """
    evaluator = CocoEvaluator(evaluation.category_ids)
    progress = Progress(len(evaluation.image_ids), label="eval")
    for batch in _batches(evaluation.images, detector.batch_size):
        results = detector.detect_batch([image for _, image in batch])
        for (image_id, _), result in zip(batch, results):
            evaluator.add(image_id, result)
        progress.update(len(batch))
    if evaluation.output_json:
        for kind, path in evaluator.write_json(evaluation.output_json).items():
            print(f"wrote {kind} results to {path}")
    metrics = evaluator.evaluate(evaluation.coco_gt)
    print(format_results_table(metrics))
    return metrics


def run_benchmark(detector, evaluation):
    """Time each stage per image of ``evaluation`` (a ``CocoEvaluation``; its images are read),
    like the authors' ``--benchmark``: host preprocessing, the network (backbone, FPN, heads,
    protonet), the in-graph post-processing (Fast NMS, mask assembly and re-scoring) and the
    host post-processing (masks to image size, boxes to pixels). The first batch compiles the
    graphs and is not counted.

    ``detector`` must be a checkpoint ``Detector`` (its network is run on its own to split the
    graph time). Returns {stage: mean seconds per image} and prints them with the FPS.
    """
    stages = {"preprocess": 0.0, "network": 0.0, "detect + masks (graph)": 0.0,
              "postprocess (host)": 0.0}
    counted = 0
    progress = Progress(len(evaluation.image_ids), label="benchmark")
    size = detector.config.max_size
    for index, batch in enumerate(_batches(evaluation.images, detector.batch_size)):
        start = time.perf_counter()
        array = np.zeros((detector.batch_size, 3, size, size), np.float32)
        for slot, (_, image) in enumerate(batch):
            array[slot] = detector.preprocess(image)[0]
        tensor = Tensor(array)
        prepared = time.perf_counter()
        for output in detector.model(tensor):
            output.asnumpy()
        network_done = time.perf_counter()
        outputs = detector.run_network(array)
        graph_done = time.perf_counter()
        for slot, (_, image) in enumerate(batch):
            detections_to_image(outputs, slot, image.shape[0], image.shape[1],
                                detector.config.eval.mask_threshold)
        finished = time.perf_counter()
        progress.update(len(batch))
        if index == 0:
            continue
        # The full graph re-runs the network: its own share is the difference.
        network = network_done - prepared
        stages["preprocess"] += prepared - start
        stages["network"] += network
        stages["detect + masks (graph)"] += max(graph_done - network_done - network, 0.0)
        stages["postprocess (host)"] += finished - graph_done
        counted += len(batch)
    if counted == 0:
        raise ValueError("--benchmark needs more images than one batch (the first compiles)")
    per_image = {stage: total / counted for stage, total in stages.items()}
    total = sum(per_image.values())
    for stage, seconds in per_image.items():
        print(f"{stage:>24}: {seconds * 1000:8.1f} ms/img")
    print(f"{'total':>24}: {total * 1000:8.1f} ms/img  ({1.0 / total:.2f} FPS, batch "
          f"{detector.batch_size}, {counted} images timed)")
    return per_image
