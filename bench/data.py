"""Training data pipeline images/s at 550 with 1 and 2 workers, the per-sample cost split, and
prior matching ms/image on the 57,744 YOLACT++ priors.

Run from the repository root::

    python bench/data.py                                  # defaults: 2x2 mosaics ~550 px
    python bench/data.py --tiles 1 --image_size 570       # plain synthetic images, 1-6 objects
    python bench/data.py --workers 1 2 4 --rounds 3 --batches 8

Data. ``src/data/synthetic.py`` draws 1-6 shapes per image and has no option for more, while COCO
averages 7.3 objects per image (up to ~90). So by default each image here is a 2x2 mosaic of
four synthetic images (``--tiles 2``), each generated at ``image_size / 2`` and cut to the
smallest tile's size, so a mosaic is ~0.75-1x ``image_size`` on a side (the 550 resize does
real work) and holds ~4-24 objects plus the tiles' crowds. Every mask is re-encoded as
compressed RLE at mosaic size; objects cut below 16 visible pixels are dropped. The mosaics
go through ``load_coco`` and ``write_mindrecord`` like any COCO-format data set.

Measured:
  * pipeline: ``create_train_dataset`` (the ``yolact_plus_resnet50`` config, augmentation on)
    iterated as the trainer does, for ``--batches`` batches after ``--warmup`` batches, with
    each worker count, interleaved over ``--rounds`` rounds in one child process. Besides
    images/s, the CPU seconds of the whole process tree (workers included) per image: it
    moves least when other processes take the cores.
  * the per-sample cost of one worker, split by calling the pieces of ``TrainSampleMaker``
    directly, in this process; and the whole maker call on the same rows.
  * ``src.box.matching.match`` on random GT boxes (log-uniform sizes 2-60 % of the image),
    median over ``--match_runs`` draws per GT count.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

# Before MindSpore: sets the CPU environment defaults.
from bench.common import (add_timing_arguments, machine_description, make_parser,  # noqa: E402
                          print_child_result, require_positive, run_child, variant, SEED)

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402
import mindspore.dataset as ds  # noqa: E402
from pycocotools import mask as mask_utils  # noqa: E402

from src.box.matching import match  # noqa: E402
from src.box.ops import pairwise_iou, point_form  # noqa: E402
from src.config.schema import replace  # noqa: E402
from src.data.coco import load_coco  # noqa: E402
from src.data.dataset import (RECORD_COLUMNS, TrainSampleMaker, create_train_dataset,  # noqa: E402
                              read_image, target_shapes)
from src.data.mindrecord import decode_masks, decode_row, shard_paths, write_mindrecord  # noqa: E402
from src.data.synthetic import JPEG_PARAMS, MIN_VISIBLE_PX, generate_dataset  # noqa: E402
from src.data.targets import MatchThresholds, build_targets  # noqa: E402
from src.data.transforms import (expand, normalize_image, photometric_distort,  # noqa: E402
                                 random_mirror, random_sample_crop, resize_sample)
from src.model.build import prior_boxes  # noqa: E402

CONFIG_NAME = "yolact_plus_resnet50"
TARGET_PIPELINE_IMAGES_PER_S = 10.0     # with 2 workers
TARGET_MATCH_MS = 10.0                  # with 20 GT
COCO_OBJECTS_PER_IMAGE = 7.3            # train2017: ~860k instances / 118k images
# Options the pipeline child gets from the parent's command line.
CHILD_OPTIONS = ("mindrecord_dir", "size", "batch", "rounds", "warmup", "batches", "workers")


def annotation_mask(ann, height, width):
    """[H, W] uint8 0/1 mask of a COCO annotation (polygons or uncompressed RLE)."""
    segmentation = ann["segmentation"]
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    else:
        rle = mask_utils.frPyObjects(segmentation, height, width)
    return mask_utils.decode(rle)


def write_mosaics(source_ann, source_dir, out_dir, num_images, tiles):
    """``tiles x tiles`` mosaics of consecutive source images; returns the COCO json path.

    Each tile is cut to the smallest tile height and width of its mosaic (top-left part).
    """
    with open(source_ann, encoding="utf-8") as handle:
        source = json.load(handle)
    by_image = {image["id"]: [] for image in source["images"]}
    for ann in source["annotations"]:
        by_image[ann["image_id"]].append(ann)
    images_dir = os.path.join(out_dir, "train")
    os.makedirs(images_dir, exist_ok=True)
    images, annotations = [], []
    per_mosaic = tiles * tiles
    for index in range(num_images):
        parts = source["images"][index * per_mosaic:(index + 1) * per_mosaic]
        tile_h, tile_w = min(p["height"] for p in parts), min(p["width"] for p in parts)
        height, width = tiles * tile_h, tiles * tile_w
        canvas = np.zeros((height, width, 3), np.uint8)
        image_id = index + 1
        for tile, part in enumerate(parts):
            top, left = tile // tiles * tile_h, tile % tiles * tile_w
            pixels = cv2.imread(os.path.join(source_dir, part["file_name"]))
            canvas[top:top + tile_h, left:left + tile_w] = pixels[:tile_h, :tile_w]
            for ann in by_image[part["id"]]:
                cut = annotation_mask(ann, part["height"], part["width"])[:tile_h, :tile_w]
                if cut.sum() < MIN_VISIBLE_PX:
                    continue
                mask = np.zeros((height, width), np.uint8)
                mask[top:top + tile_h, left:left + tile_w] = cut
                rle = mask_utils.encode(np.asfortranarray(mask))
                annotations.append({
                    "id": len(annotations) + 1, "image_id": image_id,
                    "category_id": ann["category_id"], "iscrowd": ann["iscrowd"],
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "area": float(mask_utils.area(rle)),
                    "segmentation": {"size": [height, width],
                                     "counts": rle["counts"].decode("ascii")}})
        file_name = f"{image_id:06d}.jpg"
        if not cv2.imwrite(os.path.join(images_dir, file_name), canvas, JPEG_PARAMS):
            raise OSError(f"could not write {file_name} in {images_dir}")
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
    ann_path = os.path.join(out_dir, "instances_train.json")
    with open(ann_path, "w", encoding="utf-8") as handle:
        json.dump({"images": images, "annotations": annotations,
                   "categories": source["categories"]}, handle)
    return ann_path, images_dir


def write_records(root, num_images, image_size, tiles):
    """Synthetic training images as MindRecord in ``root/mindrecord``; returns (dir, stats)."""
    source = generate_dataset(os.path.join(root, "synthetic"), num_train=num_images * tiles ** 2,
                              num_val=0, image_size=max(32, image_size // tiles), seed=SEED)
    ann_path, image_dir = source["train_annotations"], source["train_images"]
    if tiles > 1:
        ann_path, image_dir = write_mosaics(ann_path, image_dir, os.path.join(root, "mosaics"),
                                            num_images, tiles)
    dataset = load_coco(ann_path, image_dir)
    output_dir = os.path.join(root, "mindrecord")
    write_mindrecord(dataset.images, output_dir, "train", 1, categories=dataset.categories,
                     log=lambda line: None)
    records = dataset.images
    solid = [int((~r.is_crowd).sum()) for r in records]
    stats = {"images": len(records), "solid": solid,
             "crowds": sum(int(r.is_crowd.sum()) for r in records),
             "heights": [r.height for r in records], "widths": [r.width for r in records]}
    return output_dir, stats


def cpu_seconds():
    """(user + system CPU seconds of this process and all its live descendants, of this
    process alone). This process runs the reader, the batching and, with one worker, the
    sample maker (a thread); with more, the makers run in worker processes."""
    me = psutil.Process()
    own = sum(me.cpu_times()[:2])
    total = own
    for process in me.children(recursive=True):
        try:
            total += sum(process.cpu_times()[:2])
        except psutil.NoSuchProcess:
            continue
    return total, own


def time_pipeline(config, mindrecord_dir, batch, priors, workers, warmup, batches):
    """One pipeline run: wall s, tree and main-process CPU s of ``batches`` batches after
    ``warmup``, and the seconds until the warm-up batches were out (start-up included)."""
    dataset = create_train_dataset(replace(config, **{"data.num_parallel_workers": workers}),
                                   mindrecord_dir, batch, priors, seed=SEED,
                                   num_iterations=warmup + batches)
    start = time.perf_counter()
    iterator = dataset.create_tuple_iterator(num_epochs=1)
    count = 0
    for _ in iterator:
        count += 1
        if count == warmup:
            wall0, cpu0 = time.perf_counter(), cpu_seconds()
    wall1, cpu1 = time.perf_counter(), cpu_seconds()
    if count != warmup + batches:
        raise RuntimeError(f"pipeline gave {count} batches, expected {warmup + batches}")
    del iterator, dataset
    return {"wall": wall1 - wall0, "cpu": cpu1[0] - cpu0[0], "main_cpu": cpu1[1] - cpu0[1],
            "startup": wall0 - start}


def measure_pipelines(args):
    """Child process: every worker count in each of ``args.rounds`` rounds."""
    config = variant(CONFIG_NAME, args.size)
    priors = prior_boxes(config)
    runs = {str(w): [] for w in args.workers}
    for _ in range(args.rounds):
        for workers in args.workers:
            runs[str(workers)].append(time_pipeline(config, args.mindrecord_dir, args.batch, priors,
                                                    workers, args.warmup, args.batches))
    return {"runs": runs}


class Stopwatch:
    """Accumulates wall milliseconds per named piece, one list entry per sample."""

    def __init__(self):
        self.ms = {}

    def run(self, name, function, *args):
        start = time.perf_counter()
        result = function(*args)
        self.ms.setdefault(name, []).append(1e3 * (time.perf_counter() - start))
        return result


def augment_in_pieces(watch, image, masks, row, max_size, rng):
    """``transforms.train_transform`` step by step (same calls, same order, same draws)."""
    image = watch.run("photometric distort", photometric_distort, image, rng)
    boxes, labels, is_crowd = row.boxes_abs, row.labels, row.is_crowd
    image, masks, boxes = watch.run("expand", expand, image, masks, boxes, rng)
    image, masks, boxes, labels, is_crowd = watch.run(
        "random crop", random_sample_crop, image, masks, boxes, labels, is_crowd, rng)
    image, masks, boxes = watch.run("mirror", random_mirror, image, masks, boxes, rng)
    image, masks, boxes, labels, is_crowd = watch.run(
        "resize to S (image + masks)", resize_sample, image, masks, boxes, labels, is_crowd,
        max_size)
    image = watch.run("normalise + RGB + CHW", normalize_image, image)
    return image, masks, boxes / np.float32(max_size), labels, is_crowd


SPLIT_GROUPS = (
    ("read row (decode_row)", ("read row (decode_row)",)),
    ("decode JPEG", ("decode JPEG",)),
    ("decode masks (RLE)", ("decode masks (RLE)",)),
    ("augmentation", ("photometric distort", "expand", "random crop", "mirror",
                      "resize to S (image + masks)", "normalise + RGB + CHW")),
    ("targets (build_targets)", ("targets (build_targets)",)),
)


def sample_cost_split(config, mindrecord_dir, priors, num_images):
    """Per-sample ms of each piece of ``TrainSampleMaker`` (first epoch's draws), in this
    process, plus the whole maker call and ``match`` alone on the same samples."""
    reader = ds.MindDataset(shard_paths(mindrecord_dir, "train"), columns_list=list(RECORD_COLUMNS),
                            shuffle=False)
    rows = list(reader.create_tuple_iterator(num_epochs=1, output_numpy=True))[:num_images]
    loss = config.loss
    shapes = target_shapes(config)
    thresholds = MatchThresholds(loss.positive_iou, loss.negative_iou, loss.crowd_iou)
    maker = TrainSampleMaker(priors, config.max_size, shapes, thresholds, SEED, len(rows))
    watch = Stopwatch()
    objects, output_bytes = [], 0
    for position, columns in enumerate(rows):
        row = watch.run("read row (decode_row)", decode_row, dict(zip(RECORD_COLUMNS, columns)))
        image = watch.run("decode JPEG", read_image, row.image_bytes, row.ignore_exif_orientation,
                          row.file_name)
        masks = watch.run("decode masks (RLE)", decode_masks, row.mask_rles, row.height, row.width)
        rng = np.random.default_rng([SEED, 0, row.image_id])
        image, masks, boxes, labels, is_crowd = augment_in_pieces(
            watch, image, masks, row, config.max_size, rng)
        watch.run("targets (build_targets)", build_targets, masks, boxes, labels, is_crowd,
                  priors, shapes, thresholds, rng, row.image_id)
        solid = ~is_crowd
        watch.run("  of which match()", match, boxes[solid], labels[solid], boxes[is_crowd],
                  priors, loss.positive_iou, loss.negative_iou, loss.crowd_iou)
        objects.append(int(solid.sum()))
        outputs = watch.run("whole TrainSampleMaker call", maker, *columns, np.int64(position))
        output_bytes = sum(np.asarray(o).nbytes for o in outputs)
    return {"ms": watch.ms, "objects_after_augment": objects, "sample_bytes": output_bytes,
            "cv2_threads": cv2.getNumThreads()}


def random_gt_boxes(rng, count):
    """[count, 4] float32 (x1, y1, x2, y2) relative: uniform centres, sides log-uniform in
    2-60 % of the image, clipped to the image."""
    centres = rng.uniform(0.0, 1.0, (count, 2))
    sides = np.exp(rng.uniform(np.log(0.02), np.log(0.6), (count, 2)))
    boxes = np.concatenate([centres - sides / 2, centres + sides / 2], axis=1)
    return np.clip(boxes, 0.0, 1.0).astype(np.float32)


def matching_times(priors, gt_counts, runs, num_classes):
    """{label: [ms per run]} for ``match`` with each GT count (one row also with 2 crowds),
    and the pairwise IoU alone at 20 GT."""
    rng = np.random.default_rng(SEED)
    prior_points = point_form(priors)
    cases = [(f"{g} GT", g, 0) for g in gt_counts] + [("20 GT + 2 crowds", 20, 2)]
    times = {label: [] for label, _, _ in cases}
    times["  IoU matrix alone, 20 GT"] = []
    for _ in range(runs):
        for label, count, crowds in cases:
            gt = random_gt_boxes(rng, count)
            labels = rng.integers(0, num_classes - 1, count)
            crowd = random_gt_boxes(rng, crowds)
            start = time.perf_counter()
            match(gt, labels, crowd, priors)
            times[label].append(1e3 * (time.perf_counter() - start))
        gt = random_gt_boxes(rng, 20)
        start = time.perf_counter()
        pairwise_iou(gt, prior_points)
        times["  IoU matrix alone, 20 GT"].append(1e3 * (time.perf_counter() - start))
    return times


def print_data_stats(args, stats):
    solid = stats["solid"]
    print(f"\nData: {stats['images']} images ({args.tiles}x{args.tiles} mosaics of "
          f"src.data.synthetic images)" if args.tiles > 1 else
          f"\nData: {stats['images']} src.data.synthetic images (image_size {args.image_size})")
    print(f"image H x W: {min(stats['heights'])}-{max(stats['heights'])} x "
          f"{min(stats['widths'])}-{max(stats['widths'])} px (mean "
          f"{statistics.mean(stats['heights']):.0f} x {statistics.mean(stats['widths']):.0f}); "
          f"non-crowd objects per image: mean {statistics.mean(solid):.1f}, "
          f"min {min(solid)}, max {max(solid)} (COCO train2017: ~{COCO_OBJECTS_PER_IMAGE}); "
          f"crowd annotations: {stats['crowds']}")


def print_pipeline(args, result):
    runs = result["runs"]
    images = args.batches * args.batch
    print(f"\n## Pipeline: create_train_dataset({CONFIG_NAME}, max_size {args.size}, batch "
          f"{args.batch}), {args.batches} batches after {args.warmup} warm-up, {args.rounds} "
          f"interleaved rounds")
    print("| workers | images/s (median) | best | x first row (paired) | CPU s / image (all) | "
          "CPU s / image (main process) | cores busy | start-up + warm-up s |")
    print("|---|---|---|---|---|---|---|---|")
    first = str(args.workers[0])
    for workers, timings in runs.items():
        rates = [images / t["wall"] for t in timings]
        paired = statistics.median(images / t["wall"] / (images / b["wall"])
                                   for t, b in zip(timings, runs[first]))
        cpu = statistics.median(t["cpu"] / images for t in timings)
        main_cpu = statistics.median(t["main_cpu"] / images for t in timings)
        busy = statistics.median(t["cpu"] / t["wall"] for t in timings)
        startup = statistics.median(t["startup"] for t in timings)
        print(f"| {workers} | {statistics.median(rates):.2f} | {max(rates):.2f} | {paired:.2f} | "
              f"{cpu:.3f} | {main_cpu:.3f} | {busy:.2f} | {startup:.1f} |")
    print(f"target: >= {TARGET_PIPELINE_IMAGES_PER_S:.0f} images/s with 2 workers. CPU s / image: "
          "user + system of the pipeline's processes (all: this process and its workers); "
          "1 / (all) is the rate per fully available core. cores busy: CPU s / wall s of the "
          "timed batches (what the pipeline got of the shared cores).")


def print_split(split):
    ms = split["ms"]
    total = statistics.mean(ms["whole TrainSampleMaker call"])
    print(f"\n## Per-sample cost, one process ({len(ms['decode JPEG'])} samples, cv2 threads "
          f"{split['cv2_threads']}, non-crowd objects after augmentation: mean "
          f"{statistics.mean(split['objects_after_augment']):.1f}, max "
          f"{max(split['objects_after_augment'])})")
    print("| piece | mean ms | median ms | max ms | share of the maker call |")
    print("|---|---|---|---|---|")

    def row(label, values):
        print(f"| {label} | {statistics.mean(values):.1f} | {statistics.median(values):.1f} | "
              f"{max(values):.1f} | {100 * statistics.mean(values) / total:.0f} % |")

    pieces = 0.0
    for group, names in SPLIT_GROUPS:
        values = [sum(parts) for parts in zip(*(ms[n] for n in names))]
        pieces += statistics.mean(values)
        row(group, values)
        if len(names) > 1:
            for name in names:
                row("  " + name, ms[name])
        if group.startswith("targets"):
            row("  of which match()", ms["  of which match()"])
    row("whole TrainSampleMaker call", ms["whole TrainSampleMaker call"])
    print(f"sum of the pieces {pieces:.1f} ms; the maker call alone gives "
          f"{1e3 / total:.1f} samples/s on one core. One sample's output arrays: "
          f"{split['sample_bytes'] / 2 ** 20:.1f} MB (x batch through the pipeline).")


def print_matching(times, runs, num_priors):
    print(f"\n## match() on {num_priors:,} priors (random GT, median of {runs} draws)")
    print("| case | median ms | min ms | max ms |")
    print("|---|---|---|---|")
    for label, values in times.items():
        print(f"| {label} | {statistics.median(values):.2f} | {min(values):.2f} | "
              f"{max(values):.2f} |")
    print(f"target: <= {TARGET_MATCH_MS:.0f} ms/image with 20 GT.")


def parse_args(argv=None):
    parser = make_parser(__doc__)
    add_timing_arguments(parser, rounds=3, rounds_help="interleaved pipeline rounds",
                         warmup_help="untimed batches per pipeline",
                         size_help="network input side (max_size)",
                         batch=8, batch_help="images per batch")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                        help="map worker counts to measure (the first is the ratio's base)")
    parser.add_argument("--batches", type=int, default=6, help="timed batches per pipeline")
    parser.add_argument("--num_images", type=int, default=64, help="images in the data set")
    parser.add_argument("--image_size", type=int, default=640,
                        help="nominal image side (mosaic side before the cut to whole tiles)")
    parser.add_argument("--tiles", type=int, default=2,
                        help="mosaic tiles per side (1: plain synthetic images)")
    parser.add_argument("--split_images", type=int, default=32,
                        help="samples for the per-sample cost split")
    parser.add_argument("--match_runs", type=int, default=25, help="draws per matching case")
    parser.add_argument("--mindrecord_dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    require_positive(parser, args, "workers", "rounds", "warmup", "batches")
    require_positive(parser, args, "tiles")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        print_child_result(measure_pipelines(args))
        return
    config = variant(CONFIG_NAME, args.size)
    priors = prior_boxes(config)
    with tempfile.TemporaryDirectory(prefix="bench_data_") as root:
        started = time.perf_counter()
        args.mindrecord_dir, stats = write_records(root, args.num_images, args.image_size,
                                                   args.tiles)
        prepare_s = time.perf_counter() - started
        pipeline = run_child(__file__, "pipeline", args, CHILD_OPTIONS)
        split = sample_cost_split(config, args.mindrecord_dir, priors, args.split_images)
    matching = matching_times(priors, (5, 20, 50), args.match_runs, config.num_classes)
    print(machine_description())
    print(f"data set written in {prepare_s:.0f} s")
    print_data_stats(args, stats)
    print_pipeline(args, pipeline)
    print_split(split)
    print_matching(matching, args.match_runs, len(priors))


if __name__ == "__main__":
    main()
