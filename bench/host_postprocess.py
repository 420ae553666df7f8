"""Host work per evaluated image at 100 detections on a 640x480 image, on one core: decode,
preprocess, masks to image, boxes, RLE/JSON; the full-image path before the mask windows vs
the windowed path, in one process.

Run from the repository root::

    python bench/host_postprocess.py                     # 100 detections, 640x480, 550 input
    python bench/host_postprocess.py --detections 20 --rounds 15

Inputs. A JPEG of a 640x480 picture of smooth colour blobs with fine noise (decoded every
round). ``--detections`` soft masks on the 138x138 prototype grid of a 550 input, made like
the network makes them: sigmoid of a linear combination of 32 smooth random prototypes,
each cropped (the graph's crop) to a box of log-uniform area (0.2 % to 60 % of the image)
and aspect ratio (1:2.7 to 2.7:1), boxes and classes drawn at random.

Measured per stage, interleaved over ``--rounds`` rounds (median ms; the ratio is the
median over rounds of after / before in the same round):
  * decode: ``cv2.imdecode``; preprocess: ``eval_transform`` to 550 (both paths share them);
  * masks to image: before, every mask resized to the whole image by ``cv2.resize`` and
    thresholded (the function kept below); after, ``mask_windows``;
  * boxes: ``boxes_to_image`` and the score/class arrays (shared);
  * RLE/JSON: before, ``pycocotools.mask.encode`` of the [D, H, W] masks and the result
    dicts; after, ``detections_to_coco`` on the ``MaskWindows``.
Both paths' RLE strings are checked equal.
"""
import os
import statistics
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

# Before MindSpore: sets the CPU environment defaults.
from bench.common import machine_description, make_parser, require_positive, SEED  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from pycocotools import mask as mask_utils  # noqa: E402

from src.data.transforms import eval_transform  # noqa: E402
from src.evaluation.coco_eval import detections_to_coco  # noqa: E402
from src.postprocess.masks import boxes_to_image, mask_windows  # noqa: E402

PROTOTYPES = 32
CATEGORY_IDS = tuple(range(1, 81))
GOAL_MS = 20.0
HOST_STAGES = ("decode", "preprocess", "masks to image", "boxes", "RLE/JSON")


def full_image_masks(masks, height, width, threshold):
    """The full-image path ``masks_to_image`` had before the windows: [D, S, S] -> every
    mask resized by cv2 INTER_LINEAR to [D, height, width], 512 channels per call, > threshold."""
    out = np.empty((masks.shape[0], height, width), np.float32)
    for start in range(0, masks.shape[0], 512):
        chunk = masks[start:start + 512].transpose(1, 2, 0)
        resized = cv2.resize(chunk, (width, height), interpolation=cv2.INTER_LINEAR)
        out[start:start + chunk.shape[2]] = resized.reshape(height, width, -1).transpose(2, 0, 1)
    return out > threshold


def dense_rle_json(image_id, result):
    """The RLE/JSON step before the windows: one ``mask.encode`` of the [D, H, W] masks, then
    the result dicts as ``detections_to_coco`` writes them."""
    boxes = result["boxes"].astype(np.float64)
    keep = np.flatnonzero((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) > 0)
    rles = mask_utils.encode(np.asfortranarray(
        result["masks"][keep].astype(np.uint8).transpose(1, 2, 0)))
    bbox_entries, segm_entries = [], []
    for rle, index in zip(rles, keep):
        x1, y1, x2, y2 = (float(v) for v in boxes[index])
        category_id = CATEGORY_IDS[int(result["classes"][index])]
        bbox_entries.append({"image_id": image_id, "category_id": category_id,
                             "bbox": [round(v * 10) / 10 for v in (x1, y1, x2 - x1, y2 - y1)],
                             "score": float(result["box_scores"][index])})
        segm_entries.append({"image_id": image_id, "category_id": category_id,
                             "segmentation": {"size": [int(s) for s in rle["size"]],
                                              "counts": rle["counts"].decode("ascii")},
                             "score": float(result["mask_scores"][index])})
    return bbox_entries, segm_entries


def make_inputs(args, rng):
    """(JPEG bytes, raw detections): soft masks [D, S, S], relative boxes [D, 4], classes,
    box and mask scores (see the module docstring)."""
    blobs = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    picture = cv2.resize(blobs, (args.width, args.height), interpolation=cv2.INTER_CUBIC)
    picture = np.clip(picture + rng.normal(0, 6, picture.shape), 0, 255).astype(np.uint8)
    jpeg = cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, 90])[1]

    side = (args.size + 3) // 4                          # the prototype grid, 138 at 550
    count = args.detections
    protos = np.stack([cv2.resize(rng.normal(0, 1, (6, 6)).astype(np.float32), (side, side),
                                  interpolation=cv2.INTER_CUBIC) for _ in range(PROTOTYPES)], -1)
    logits = protos @ rng.normal(0, 1, (PROTOTYPES, count)).astype(np.float32)
    masks = (1 / (1 + np.exp(-logits))).transpose(2, 0, 1).astype(np.float32)
    area = np.exp(rng.uniform(np.log(0.002), np.log(0.6), count))
    aspect = np.exp(rng.uniform(-1, 1, count))
    box_w = np.sqrt(area * aspect).clip(0.02, 1)
    box_h = (area / box_w).clip(0.02, 1)
    x1, y1 = rng.uniform(0, 1 - box_w), rng.uniform(0, 1 - box_h)
    boxes = np.stack((x1, y1, x1 + box_w, y1 + box_h), 1).astype(np.float32)
    # The graph's crop: cells within one cell of the box (padding 1).
    cells = np.arange(side)
    for mask, (bx1, by1, bx2, by2) in zip(masks, boxes * side):
        inside_x = (cells >= bx1 - 1) & (cells < bx2 + 1)
        inside_y = (cells >= by1 - 1) & (cells < by2 + 1)
        mask[~(inside_y[:, None] & inside_x[None, :])] = 0
    detections = {"boxes": boxes, "classes": rng.integers(0, len(CATEGORY_IDS), count),
                  "box_scores": np.sort(rng.uniform(0.05, 1, count))[::-1].astype(np.float32),
                  "mask_scores": rng.uniform(0, 1, count).astype(np.float32), "masks": masks}
    return jpeg, detections


def host_path(jpeg, raw, size, windowed, threshold=0.5):
    """One image's host work; returns ({stage: seconds}, segm entries)."""
    seconds, clock = {}, time.perf_counter()

    def lap(stage):
        nonlocal clock
        now = time.perf_counter()
        seconds[stage], clock = now - clock, now

    image = cv2.imdecode(jpeg, cv2.IMREAD_COLOR)
    lap("decode")
    eval_transform(image, size)
    lap("preprocess")
    height, width = image.shape[:2]
    if windowed:
        masks = mask_windows(raw["masks"], height, width, threshold)
    else:
        masks = full_image_masks(raw["masks"], height, width, threshold)
    lap("masks to image")
    result = {"boxes": boxes_to_image(raw["boxes"], width, height),
              "classes": raw["classes"].astype(np.int64),
              "box_scores": raw["box_scores"].astype(np.float32),
              "mask_scores": raw["mask_scores"].astype(np.float32), "masks": masks}
    lap("boxes")
    if windowed:
        _, segm = detections_to_coco(1, result, CATEGORY_IDS)
    else:
        _, segm = dense_rle_json(1, result)
    lap("RLE/JSON")
    return seconds, segm


def main(argv=None):
    parser = make_parser(__doc__)
    parser.add_argument("--detections", type=int, default=100, help="detections per image")
    parser.add_argument("--height", type=int, default=480, help="image height in pixels")
    parser.add_argument("--width", type=int, default=640, help="image width in pixels")
    parser.add_argument("--size", type=int, default=550, help="network input side")
    parser.add_argument("--rounds", type=int, default=9, help="interleaved timed rounds")
    parser.add_argument("--threads", type=int, default=1, help="OpenCV threads")
    args = parser.parse_args(argv)
    require_positive(parser, args, "detections", "height", "width", "size", "rounds", "threads")
    cv2.setNumThreads(args.threads)
    print(machine_description())
    print(f"{args.detections} detections on a {args.width}x{args.height} image, input "
          f"{args.size}, OpenCV threads {args.threads}, {args.rounds} rounds")

    jpeg, raw = make_inputs(args, np.random.default_rng(SEED))
    # Warm-up, and the check that both paths write the same RLE.
    (_, before), (_, after) = host_path(jpeg, raw, args.size, False), host_path(jpeg, raw, args.size, True)
    assert before == after, "the windowed path's segm entries differ from the full-image path's"
    windows = mask_windows(raw["masks"], args.height, args.width, 0.5)
    window_pixels = int(np.prod(windows.corners[:, 2:] - windows.corners[:, :2], axis=1).sum())
    print(f"windows: {window_pixels / (args.height * args.width):.1f} image areas in all "
          f"(the full-image path computes {args.detections})")

    runs = {False: [], True: []}
    for _ in range(args.rounds):
        for windowed in (False, True):
            runs[windowed].append(host_path(jpeg, raw, args.size, windowed)[0])
    for runs_of in runs.values():
        for seconds in runs_of:
            seconds["host"] = sum(seconds[stage] for stage in HOST_STAGES)

    print("\n| stage | before (ms) | after (ms) | after / before |")
    print("|---|---|---|---|")
    for stage in HOST_STAGES + ("host",):
        before_ms = 1e3 * statistics.median(r[stage] for r in runs[False])
        after_ms = 1e3 * statistics.median(r[stage] for r in runs[True])
        ratio = statistics.median(a[stage] / b[stage] for a, b in zip(runs[True], runs[False]))
        print(f"| {stage} | {before_ms:.1f} | {after_ms:.1f} | {ratio:.3f} |")
    host_ms = 1e3 * statistics.median(r["host"] for r in runs[True])
    print(f"\nhost work per image after: {host_ms:.1f} ms (goal <= {GOAL_MS:.0f} ms: "
          f"{'met' if host_ms <= GOAL_MS else 'not met'}); medians over rounds, the ratio is "
          f"the median of after / before in the same round")


if __name__ == "__main__":
    main()
