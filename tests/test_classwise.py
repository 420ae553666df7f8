"""AP per class (``--classwise``) on a hand-built ground truth whose per-class AP is known.

Three 200x200 images, one object each, boxes and masks the same rectangles so that box and
mask AP agree:
    cat   (image 1): detected exactly                        -> AP 1.0
    dog   (image 2): detected at IoU 0.72: a match at the IoU thresholds 0.50-0.70 (5 of 10)
                                                             -> AP 0.5
    bird  (image 3): a detection of its class elsewhere      -> AP 0.0
    fish  (no object; one false detection in image 3)       -> no ground truth: nan, "-"
The overall AP is the mean over the classes with ground truth: (1 + 0.5 + 0) / 3 = 0.5.
"""
import csv
import io
import json
import math

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from src.evaluation.classwise import (classwise_rows, format_classwise_table,
                                      write_classwise)
from src.evaluation.coco_eval import CocoEvaluator

CATEGORIES = ((1, "cat"), (2, "dog"), (3, "bird"), (4, "fish"))
SIZE = 200
EXPECTED = {"cat": 1.0, "dog": 0.5, "bird": 0.0, "fish": math.nan}


def rectangle(x1, y1, x2, y2):
    """[SIZE, SIZE] bool mask of the pixels x1 <= x < x2, y1 <= y < y2."""
    mask = np.zeros((SIZE, SIZE), bool)
    mask[y1:y2, x1:x2] = True
    return mask


def ground_truth():
    objects = {1: (1, (0, 0, 100, 100)), 2: (2, (0, 0, 100, 100)), 3: (3, (20, 20, 70, 70))}
    annotations = []
    for image_id, (category_id, (x1, y1, x2, y2)) in objects.items():
        rle = mask_utils.encode(np.asfortranarray(rectangle(x1, y1, x2, y2).astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        annotations.append({"id": image_id, "image_id": image_id, "category_id": category_id,
                            "segmentation": rle, "area": float((x2 - x1) * (y2 - y1)),
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "iscrowd": 0})
    coco = COCO()
    coco.dataset = {"images": [{"id": i, "width": SIZE, "height": SIZE, "file_name": f"{i}.png"}
                               for i in objects],
                    "annotations": annotations,
                    "categories": [{"id": i, "name": name} for i, name in CATEGORIES]}
    coco.createIndex()
    return coco


def result(detections):
    """Detector result dict of [(label, (x1, y1, x2, y2), score)]."""
    return {"boxes": np.array([box for _, box, _ in detections], np.int64).reshape(-1, 4),
            "classes": np.array([label for label, _, _ in detections], np.int64),
            "box_scores": np.array([score for _, _, score in detections], np.float32),
            "mask_scores": np.array([score for _, _, score in detections], np.float32),
            "masks": np.stack([rectangle(*box) for _, box, _ in detections])}


@pytest.fixture(scope="module")
def evaluated():
    coco_gt = ground_truth()
    evaluator = CocoEvaluator([category_id for category_id, _ in CATEGORIES])
    evaluator.add(1, result([(0, (0, 0, 100, 100), 0.9)]))
    evaluator.add(2, result([(1, (0, 0, 100, 72), 0.8)]))            # IoU 7200 / 10000
    evaluator.add(3, result([(2, (120, 120, 170, 170), 0.7), (3, (0, 150, 40, 190), 0.6)]))
    metrics = evaluator.evaluate(coco_gt)
    return coco_gt, evaluator, metrics


def test_per_class_ap_is_the_known_value(evaluated):
    coco_gt, evaluator, _ = evaluated
    rows = classwise_rows(evaluator.coco_evals, coco_gt)
    assert [(row["category_id"], row["name"]) for row in rows] == list(CATEGORIES)
    for row in rows:
        for iou_type in ("bbox", "segm"):
            expected = EXPECTED[row["name"]]
            if math.isnan(expected):
                assert math.isnan(row[iou_type]), row
            else:
                assert row[iou_type] == pytest.approx(expected, abs=1e-12), row


def test_mean_of_the_classes_with_ground_truth_is_cocoevals_ap(evaluated):
    coco_gt, evaluator, metrics = evaluated
    rows = classwise_rows(evaluator.coco_evals, coco_gt)
    for iou_type in ("bbox", "segm"):
        defined = [row[iou_type] for row in rows if not math.isnan(row[iou_type])]
        assert len(defined) == 3
        assert metrics[iou_type]["AP"] == pytest.approx(0.5, abs=1e-12)
        assert np.mean(defined) == pytest.approx(metrics[iou_type]["AP"], abs=1e-12)


def test_table_shows_percent_and_a_dash_without_ground_truth(evaluated):
    coco_gt, evaluator, _ = evaluated
    lines = format_classwise_table(classwise_rows(evaluator.coco_evals, coco_gt)).splitlines()
    assert lines == ["class   box AP  mask AP",
                     "cat     100.00   100.00",
                     "dog      50.00    50.00",
                     "bird      0.00     0.00",
                     "fish         -        -"]


def test_files_hold_fractions_and_percent(evaluated, tmp_path):
    coco_gt, evaluator, _ = evaluated
    paths = write_classwise(classwise_rows(evaluator.coco_evals, coco_gt), str(tmp_path / "val"))
    assert paths == {"json": str(tmp_path / "val_classwise.json"),
                     "csv": str(tmp_path / "val_classwise.csv")}
    with open(paths["json"]) as stream:
        document = json.load(stream)
    assert document[1] == {"category_id": 2, "name": "dog", "bbox_AP": pytest.approx(0.5),
                           "segm_AP": pytest.approx(0.5)}
    assert document[3] == {"category_id": 4, "name": "fish", "bbox_AP": None, "segm_AP": None}
    with open(paths["csv"]) as stream:
        table = list(csv.reader(io.StringIO(stream.read())))
    assert table == [["category_id", "name", "bbox_AP", "segm_AP"],
                     ["1", "cat", "100.00", "100.00"], ["2", "dog", "50.00", "50.00"],
                     ["3", "bird", "0.00", "0.00"], ["4", "fish", "-", "-"]]
