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
from src.evaluation.coco_eval import CocoEvaluator, results_paths
from src.evaluation.pipeline import (StageTimes, batches_of, coco_entries_in_order, encode_batch,
                                     host_threads, load_batch)
from src.evaluation.report import default_results_prefix, finish_coco_evaluation
from src.evaluation.sharding import Shard, plan_shard, rank_share
from src.evaluation.testdev import is_image_info, upload_paths, upload_testset
from src.inference.annotate import MediaError, make_output_dir
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


def evaluated_image_ids(coco_gt, max_images=0, annotated_only=True):
    """Ids of the images with at least one annotation (the authors skip the others; every
    image when not ``annotated_only``), in id order, cut to ``max_images`` when > 0."""
    ids = sorted(i for i in coco_gt.getImgIds()
                 if not annotated_only or coco_gt.getAnnIds(imgIds=[i]))
    return ids[:max_images] if max_images > 0 else ids


class CocoEvaluation(NamedTuple):
    """A COCO evaluation whose inputs and output were checked (``prepare_coco_evaluation``)."""
    coco_gt: COCO               # pycocotools COCO of the annotation file
    category_ids: tuple         # label -> COCO category id
    image_ids: tuple            # the evaluated images, in id order
    images: Iterator            # (image_id, [H, W, 3] uint8 BGR) of image_ids; read once, lazily
    output_json: str            # prefix of the results json, or ""
    classwise: bool = False     # also AP per class (src.evaluation.classwise)
    upload: dict = None         # no annotations: {"bbox": zip, "segm": zip} for the COCO server
    shard: Shard = None         # eval.py --distribute: this rank's share (image_ids are its own)


def prepare_coco_evaluation(ann_file, class_names, image_dir="", mindrecord_dir="", split="val",
                            max_images=0, output_json="", classwise=False, algorithm="yolact",
                            distributed=None, benchmark=False):
    """Check everything a COCO evaluation reads and writes, before any image is detected.

    The images come from ``image_dir`` (every evaluated image must be a file there) or from
    split ``split`` of ``mindrecord_dir`` (every evaluated image must be in the split, with
    the annotation file's size, and the split's categories must be the annotation file's and
    the config's). ``output_json``, when given, must be writable; it defaults to
    ``report.default_results_prefix(ann_file)`` when files must be written (``classwise``, an
    annotation file without annotations, ``distributed``) and this is no ``benchmark``, which
    writes nothing.

    Args:
        ann_file: COCO-format annotations of the evaluated images.
        class_names: the config's class names (label order).
        max_images: evaluate only the first N annotated images (0: all).
        classwise: also report the AP per class.
        algorithm: the [alg] part of the COCO upload names (``src.evaluation.testdev``).
        distributed: (rank, group size) of a sharded evaluation (``src.evaluation.sharding``).

    Raises:
        DatasetError (images, annotations) or MediaError (output): one line naming the file.
    """
    coco_gt, category_ids = load_ground_truth(ann_file, len(class_names))
    # An image-info file (COCO test-dev) has no annotation: every image is detected.
    test_dev = is_image_info(coco_gt)
    all_image_ids = evaluated_image_ids(coco_gt, max_images, annotated_only=not test_dev)
    rank, group_size = distributed or (0, 1)
    image_ids = rank_share(all_image_ids, rank, group_size)
    if mindrecord_dir:
        check_split_categories(ann_file, coco_gt, class_names, mindrecord_dir, split)
        images = images_from_mindrecord(ann_file, coco_gt, mindrecord_dir, split, image_ids)
    elif image_dir:
        images = images_from_folder(coco_gt, image_dir, image_ids)
    else:
        raise ValueError(f"{ann_file}: give the folder of its images or a MindRecord split")
    if not output_json and not benchmark and (classwise or test_dev or distributed):
        output_json = default_results_prefix(ann_file)
    if output_json:
        check_results_writable(output_json)
    upload = upload_paths(os.path.dirname(output_json), upload_testset(ann_file),
                          algorithm) if test_dev else None
    shard = plan_shard(rank, group_size, all_image_ids,
                       output_json) if distributed else None
    return CocoEvaluation(coco_gt, category_ids, tuple(image_ids), images, output_json,
                          classwise, upload, shard)


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


# eval.py --benchmark's stages in print order, and the host ones among them.
HOST_STAGES = ("decode", "preprocess", "masks to image", "boxes", "RLE/JSON")
BENCHMARK_STAGES = ("decode", "preprocess", "network", "graph post-processing",
                    "masks to image", "boxes", "RLE/JSON")


def run_coco_evaluation(detector, evaluation):
    """Detect every image, write the results json if asked, then COCOeval bbox and segm over
    the evaluated images.

    Args:
        detector: a ``src.inference.BatchDetector`` (checkpoint or exported MINDIR).
        evaluation: a ``CocoEvaluation`` of ``prepare_coco_evaluation`` (its images are read).

    Returns:
        {"bbox": {AP, AP50, ...}, "segm": {...}} as fractions; None where nothing is scored
        (``report.finish_coco_evaluation``).
    """
    evaluator = CocoEvaluator(evaluation.category_ids)
    progress = Progress(len(evaluation.image_ids), label="eval")
    # Decoding, preprocessing and encoding beside the network where it pays
    # (src.evaluation.pipeline).
    threads = host_threads(detector.config.eval.host_threads)
    for image_id, bbox_entries, segm_entries in coco_entries_in_order(
            detector, batches_of(evaluation.images, detector.batch_size),
            evaluation.category_ids, threads):
        evaluator.add_entries(image_id, bbox_entries, segm_entries)
        progress.update(1)
    return finish_coco_evaluation(evaluator, evaluation)


def run_benchmark(detector, evaluation):
    """Time each stage per image of ``evaluation`` (a ``CocoEvaluation``; its images are read),
    like the authors' ``--benchmark``, and the evaluation loop of ``run_coco_evaluation``.

    The first batch compiles the graphs and is not counted. The other batches go in chunks,
    alternately run stage after stage, each stage timed, and through the evaluation loop
    (``coco_entries_in_order`` with ``eval.host_threads``), so
    that a machine whose load drifts weighs on both alike. Host stages: decode (reading
    included), preprocess, masks to image, boxes, RLE/JSON; device stages: network
    (backbone, FPN, heads, protonet) and graph post-processing (Fast NMS, mask assembly and
    re-scoring: the full graph's time minus the network's).

    ``detector`` must be a checkpoint ``Detector`` (its network is run on its own to split the
    graph time). Prints one ``<stage>: <x> ms/img`` line per stage, ``host: <x> ms/img``, the
    FPS of the stages one after the other, and the evaluation loop's images/s against the
    full graph's alone.

    Returns:
        {stage: mean seconds per image, "host": ..., "pipeline_fps": images/s or None}.
    """
    batch_size = detector.batch_size
    num_batches = -(-len(evaluation.image_ids) // batch_size)
    if num_batches < 2:
        raise ValueError("--benchmark needs more images than one batch (the first compiles)")
    # Two chunks of each kind at least; at most 10 batches a chunk.
    chunk = max(1, min(10, (num_batches - 1) // 4))
    plan = ["compile"] + ["serial" if (i // chunk) % 2 == 0 else "overlapped"
                          for i in range(num_batches - 1)]
    batches = batches_of(evaluation.images, batch_size)
    progress = Progress(len(evaluation.image_ids), label="benchmark")
    threshold = detector.config.eval.mask_threshold
    threads = host_threads(detector.config.eval.host_threads)
    times, counted, overlapped, overlapped_seconds = StageTimes(), 0, 0, 0.0
    for mode, run in itertools.groupby(plan):
        length = len(list(run))
        if mode == "overlapped":
            start = time.perf_counter()
            for _ in coco_entries_in_order(detector, itertools.islice(batches, length),
                                           evaluation.category_ids, threads):
                overlapped += 1
                progress.update(1)
            overlapped_seconds += time.perf_counter() - start
            continue
        timer = times if mode == "serial" else StageTimes()
        for _ in range(length):
            images, array = load_batch(batches, detector, timer)
            tensor = Tensor(array)
            with timer("network"):
                for output in detector.model(tensor):
                    output.asnumpy()
            with timer("graph"):
                outputs = detector.run_network(array)
            encode_batch(outputs, images, threshold, evaluation.category_ids, timer)
            progress.update(len(images))
            counted += len(images) if mode == "serial" else 0
    seconds = dict(times.seconds)
    # The full graph re-runs the network: its own share is the difference.
    seconds["graph post-processing"] = max(seconds.pop("graph") - seconds["network"], 0.0)
    per_image = {stage: seconds[stage] / counted for stage in BENCHMARK_STAGES}
    per_image["host"] = sum(per_image[stage] for stage in HOST_STAGES)
    for stage in BENCHMARK_STAGES + ("host",):
        print(f"{stage}: {per_image[stage] * 1000:.1f} ms/img")
    serial = sum(per_image[stage] for stage in BENCHMARK_STAGES)
    print(f"FPS: {1.0 / serial:.2f} (stages one after the other, {serial * 1000:.1f} ms/img; "
          f"batch {batch_size}, {counted} images timed)")
    per_image["pipeline_fps"] = overlapped / overlapped_seconds if overlapped else None
    if overlapped:
        graph_fps = 1.0 / (per_image["network"] + per_image["graph post-processing"])
        print(f"throughput: {per_image['pipeline_fps']:.2f} img/s of the evaluation loop "
              f"({threads} host threads, {overlapped} images), {graph_fps:.2f} img/s network + "
              f"graph post-processing alone: {per_image['pipeline_fps'] / graph_fps:.0%}")
    return per_image
