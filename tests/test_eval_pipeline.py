"""The overlapped evaluation loop (src.evaluation.pipeline): COCO entries in image order,
equal to detecting and encoding one image after the other, with a bounded number of
batches in flight; and run_coco_evaluation end to end on it.

The detector is a real ``BatchDetector`` (preprocessing, batching, and the whole host
post-processing: masks to the image, boxes, RLE/JSON) whose network is a fixed function of
its input batch: each image's outputs are drawn from a generator seeded by its preprocessed
pixels, with 0 to 100 detections, so each image's encoding takes a different time and a
result handed to the wrong image would not match.
"""
import json
import os

import cv2
import numpy as np
import pytest

from src.evaluation.coco_eval import detections_to_coco
from src.evaluation.evaluate import prepare_coco_evaluation, run_coco_evaluation
from src.evaluation.pipeline import batches_of, coco_entries_in_order
from src.inference.detector import BatchDetector
from tests.conftest import tiny_config

PROTO_SIDE = 20                      # S of the prototype grid of the drawn outputs
MAX_DETS = 100
CATEGORY_IDS = (3, 7, 11)            # tiny_config's 3 foreground classes


class SeededOutputsDetector(BatchDetector):
    """``InferenceNet``-shaped outputs drawn from each slot's preprocessed pixels; counts
    the network calls."""

    def __init__(self, batch_size, host_threads=-1):
        self.config = tiny_config(max_size=64, **{"eval.host_threads": host_threads})
        self.batch_size = batch_size
        self.calls = 0

    def run_network(self, batch):
        self.calls += 1
        size = (self.batch_size, MAX_DETS)
        boxes, classes = np.zeros(size + (4,), np.float32), np.zeros(size, np.int32)
        box_scores, mask_scores = np.zeros(size, np.float32), np.zeros(size, np.float32)
        masks = np.zeros(size + (PROTO_SIDE, PROTO_SIDE), np.float32)
        valid = np.zeros(size, bool)
        for slot, pixels in enumerate(batch):
            rng = np.random.default_rng(int(np.abs(pixels).sum() * 1000) % 2 ** 32)
            count = int(rng.integers(0, MAX_DETS + 1))
            corners = np.sort(rng.uniform(-0.1, 1.1, (count, 2, 2)), axis=1)     # [n, lo/hi, x/y]
            boxes[slot, :count] = corners.transpose(0, 2, 1).reshape(count, 4)[:, [0, 2, 1, 3]]
            classes[slot, :count] = rng.integers(0, len(CATEGORY_IDS), count)
            box_scores[slot, :count] = np.sort(rng.uniform(0.05, 1, count))[::-1]
            mask_scores[slot, :count] = rng.uniform(0, 1, count)
            cells = np.clip((corners * PROTO_SIDE).astype(int), 0, PROTO_SIDE)
            for index, ((x0, y0), (x1, y1)) in enumerate(cells):
                masks[slot, index, y0:y1, x0:x1] = rng.uniform(0, 1, (y1 - y0, x1 - x0))
            valid[slot, :count] = True
        return boxes, classes, box_scores, mask_scores, masks, valid


def _images(count, seed=0):
    """(image_id, BGR image) of very different sizes, 1x1 to 700x500."""
    rng = np.random.default_rng(seed)
    sizes = [(1, 1), (500, 700), (37, 23), (480, 640)] + [
        tuple(rng.integers(8, 400, 2)) for _ in range(count - 4)]
    return [(100 + index, rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
            for index, (height, width) in enumerate(sizes[:count])]


def _one_after_the_other(detector, images):
    """(image_id, bbox_entries, segm_entries) of ``detect_batch`` (dense masks) + encoding."""
    expected = []
    for batch in batches_of(images, detector.batch_size):
        results = detector.detect_batch([image for _, image in batch])
        for (image_id, _), result in zip(batch, results):
            expected.append((image_id,) + detections_to_coco(image_id, result, CATEGORY_IDS))
    return expected


@pytest.mark.parametrize("batch_size, threads", [(1, 3), (2, 2), (3, 1), (2, 0)])
def test_entries_come_back_in_image_order_equal_to_serial(batch_size, threads):
    images = _images(14, seed=batch_size)
    detector = SeededOutputsDetector(batch_size)
    expected = _one_after_the_other(detector, images)
    assert sum(len(bbox) for _, bbox, _ in expected) > 200    # real work per image
    assert len({len(bbox) for _, bbox, _ in expected}) > 5     # ... of different sizes

    detector.calls = 0
    got, held = [], []
    for entry in coco_entries_in_order(detector, iter(batches_of(images, batch_size)),
                                       CATEGORY_IDS, threads):
        got.append(entry)
        # Batches run by the network but not yet handed back (the loop is suspended here).
        held.append(detector.calls - len(got) // batch_size)
    assert got == expected
    assert [image_id for image_id, _, _ in got] == [image_id for image_id, _ in images]
    assert max(held) <= 2 * threads + 1


def test_a_failing_image_read_stops_the_loop_with_its_error():
    def images():
        yield from _images(5)
        raise ValueError("frame 6: unreadable")

    detector = SeededOutputsDetector(2)
    with pytest.raises(ValueError, match="frame 6: unreadable"):
        list(coco_entries_in_order(detector, iter(batches_of(images(), 2)), CATEGORY_IDS, 2))


@pytest.mark.parametrize("host_threads", [-1, 2])
def test_run_coco_evaluation_writes_results_in_image_order(tmp_path, host_threads):
    images = _images(9, seed=3)
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    coco = {"images": [], "annotations": [],
            "categories": [{"id": c, "name": f"class{i}"} for i, c in enumerate(CATEGORY_IDS)]}
    for image_id, image in images:
        name = f"{image_id}.png"
        cv2.imwrite(str(image_dir / name), image)
        height, width = image.shape[:2]
        coco["images"].append({"id": image_id, "file_name": name, "height": height,
                               "width": width})
        coco["annotations"].append({"id": image_id, "image_id": image_id,
                                    "category_id": CATEGORY_IDS[image_id % 3],
                                    "bbox": [0, 0, width, height], "area": width * height,
                                    "iscrowd": 0, "segmentation": [[0, 0, width, 0, width,
                                                                    height, 0, height]]})
    ann_file = tmp_path / "ann.json"
    ann_file.write_text(json.dumps(coco))
    detector = SeededOutputsDetector(2, host_threads)
    evaluation = prepare_coco_evaluation(str(ann_file), detector.config.data.class_names,
                                         image_dir=str(image_dir),
                                         output_json=str(tmp_path / "out" / "res"))
    metrics = run_coco_evaluation(detector, evaluation)
    assert set(metrics) == {"bbox", "segm"}

    expected = _one_after_the_other(detector, images)
    for kind, column in (("bbox", 1), ("segm", 2)):
        with open(os.path.join(tmp_path, "out", f"res_{kind}.json")) as handle:
            written = json.load(handle)
        assert written == [entry for image in expected for entry in image[column]]


@pytest.mark.slow
def test_benchmark_prints_every_stage_the_host_sum_and_the_throughput(tmp_path, capsys):
    """run_benchmark on the tiny YOLACT++ (a checkpoint with many detections): one
    ``<stage>: <x> ms/img`` line per stage, ``host`` = the host stages' sum, the FPS line and
    the overlapped throughput line (compiles the tiny graphs: slow)."""
    from src.evaluation.evaluate import BENCHMARK_STAGES, HOST_STAGES, run_benchmark
    from src.inference import Detector
    from tests.conftest import save_detecting_checkpoint

    config = tiny_config()
    ckpt = save_detecting_checkpoint(config, str(tmp_path / "tiny.ckpt"))
    images = [(image_id, cv2.resize(image, (90, 70))) for image_id, image in _images(6, seed=4)]
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    coco = {"images": [], "annotations": [],
            "categories": [{"id": c, "name": f"class{i}"} for i, c in enumerate(CATEGORY_IDS)]}
    for image_id, image in images:
        cv2.imwrite(str(image_dir / f"{image_id}.png"), image)
        coco["images"].append({"id": image_id, "file_name": f"{image_id}.png", "height": 70,
                               "width": 90})
        coco["annotations"].append({"id": image_id, "image_id": image_id, "category_id": 3,
                                    "bbox": [10, 10, 20, 20], "area": 400, "iscrowd": 0,
                                    "segmentation": [[10, 10, 30, 10, 30, 30, 10, 30]]})
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    evaluation = prepare_coco_evaluation(str(tmp_path / "ann.json"), config.data.class_names,
                                         image_dir=str(image_dir))
    per_image = run_benchmark(Detector(config, ckpt, "CPU"), evaluation)

    lines = capsys.readouterr().out.splitlines()
    printed = {line.split(": ")[0]: line.split(": ")[1] for line in lines if ": " in line}
    for stage in BENCHMARK_STAGES + ("host",):
        assert printed[stage] == f"{per_image[stage] * 1000:.1f} ms/img"
    # The graph's post-processing is the full graph's time minus the network's: on the tiny
    # model it may be lost in the noise (clamped at 0).
    assert all(per_image[stage] > 0 for stage in HOST_STAGES + ("network",))
    assert per_image["graph post-processing"] >= 0
    assert per_image["host"] == pytest.approx(sum(per_image[s] for s in HOST_STAGES))
    # 6 images, chunks of 1 batch: 1 compiles, then serial, overlapped, serial, ...
    assert printed["FPS"].endswith("batch 1, 3 images timed)")
    # On the CPU the host work runs between network calls (eval.host_threads -1).
    assert "img/s of the evaluation loop (0 host threads, 2 images)" in printed["throughput"]
    assert per_image["pipeline_fps"] > 0
