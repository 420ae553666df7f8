"""COCO evaluation runs: images from an annotation file's folder or a MindRecord split,
batched detection, results JSON, COCOeval bbox/segm AP, and a benchmark mode."""
import contextlib
import io
import os
import time

import cv2
import mindspore.dataset as ds
import numpy as np
from mindspore import Tensor
from pycocotools.coco import COCO

from src.data.coco import DatasetError
from src.data.dataset import read_image
from src.data.mindrecord import field_bytes, shard_paths
from src.evaluation.coco_eval import CocoEvaluator, format_results_table
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


def images_from_folder(coco_gt, image_dir, image_ids):
    """Yield (image_id, BGR image) read with OpenCV from ``image_dir``."""
    for image_id in image_ids:
        path = os.path.join(image_dir, coco_gt.imgs[image_id]["file_name"])
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            raise DatasetError(f"{path}: image missing or unreadable (image id {image_id})")
        yield image_id, image


def images_from_mindrecord(mindrecord_dir, split, image_ids):
    """Yield (image_id, BGR image) of the MindRecord split's rows whose id is in ``image_ids``."""
    wanted = set(image_ids)
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


def run_coco_evaluation(detector, coco_gt, category_ids, images, num_images, output_json=""):
    """Detect every image, then COCOeval bbox and segm over the evaluated images.

    Args:
        detector: a ``src.inference.BatchDetector`` (checkpoint or exported MINDIR).
        coco_gt: pycocotools COCO of the ground truth.
        category_ids: label -> COCO category id.
        images: iterable of (image_id, BGR image).
        num_images: how many ``images`` yields (for the progress line).
        output_json: prefix of the ``_bbox.json`` / ``_segm.json`` results to write, or "".

    Returns:
        {"bbox": {AP, AP50, ...}, "segm": {...}} as fractions.
    """
    evaluator = CocoEvaluator(category_ids)
    progress = Progress(num_images, label="eval")
    for batch in _batches(images, detector.batch_size):
        results = detector.detect_batch([image for _, image in batch])
        for (image_id, _), result in zip(batch, results):
            evaluator.add(image_id, result)
        progress.update(len(batch))
    if output_json:
        for kind, path in evaluator.write_json(output_json).items():
            print(f"wrote {kind} results to {path}")
    metrics = evaluator.evaluate(coco_gt)
    print(format_results_table(metrics))
    return metrics


def run_benchmark(detector, images, num_images):
    """Time each stage per image, like the authors' ``--benchmark``: host preprocessing, the
    network (backbone, FPN, heads, protonet), the in-graph post-processing (Fast NMS, mask
    assembly and re-scoring) and the host post-processing (masks to image size, boxes to
    pixels). The first batch compiles the graphs and is not counted.

    ``detector`` must be a checkpoint ``Detector`` (its network is run on its own to split the
    graph time). Returns {stage: mean seconds per image} and prints them with the FPS.
    """
    stages = {"preprocess": 0.0, "network": 0.0, "detect + masks (graph)": 0.0,
              "postprocess (host)": 0.0}
    counted = 0
    progress = Progress(num_images, label="benchmark")
    size = detector.config.max_size
    for index, batch in enumerate(_batches(images, detector.batch_size)):
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
