"""COCO result writing and pycocotools evaluation on a tiny hand-made ground truth.

Ground truth: 3 images, categories 3, 7, 11, 15 (non-contiguous; 15 has no object), polygon,
compressed-RLE and uncompressed-RLE masks, one crowd. Results made from the ground truth itself,
as the detector would output them (int boxes, bool masks), must score AP 1.
"""
import json
import os

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from src.evaluation.coco_eval import CocoEvaluator, detections_to_coco, format_results_table

CATEGORY_IDS = (3, 7, 11, 15)   # label i -> CATEGORY_IDS[i]


def _polygon(x1, y1, x2, y2):
    return [[x1, y1, x2, y1, x2, y2, x1, y2]]


def _ellipse_mask(height, width, cx, cy, rx, ry):
    ys, xs = np.mgrid[0:height, 0:width]
    return ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1.0


def _gt_dataset():
    images = [{"id": 1, "width": 200, "height": 160, "file_name": "a.jpg"},
              {"id": 2, "width": 120, "height": 100, "file_name": "b.jpg"},
              {"id": 5, "width": 80, "height": 80, "file_name": "c.jpg"}]
    # Compressed RLE (counts as str, as in COCO json) for a medium ellipse in image 2.
    ellipse = _ellipse_mask(100, 120, 60, 50, 30, 22)
    ellipse_rle = mask_utils.encode(np.asfortranarray(ellipse.astype(np.uint8)))
    ellipse_rle["counts"] = ellipse_rle["counts"].decode("ascii")
    # Uncompressed RLE (column-major run lengths) for a crowd block in image 1.
    crowd = np.zeros((160, 200), np.uint8)
    crowd[120:156, 160:196] = 1
    flat = crowd.flatten(order="F")   # starts with a 0-run, as uncompressed RLE requires
    bounds = np.concatenate(([0], np.flatnonzero(flat[1:] != flat[:-1]) + 1, [flat.size]))
    crowd_counts = np.diff(bounds).tolist()
    anns = [
        {"image_id": 1, "category_id": 3, "segmentation": _polygon(10, 10, 40, 30), "iscrowd": 0},     # small
        {"image_id": 1, "category_id": 7, "segmentation": _polygon(20, 40, 150, 150), "iscrowd": 0},   # large
        {"image_id": 1, "category_id": 3, "segmentation": {"size": [160, 200], "counts": crowd_counts},
         "iscrowd": 1},
        {"image_id": 2, "category_id": 7, "segmentation": ellipse_rle, "iscrowd": 0},                  # medium
        {"image_id": 2, "category_id": 11, "segmentation": [[5, 5, 25, 5, 15, 30]], "iscrowd": 0},     # small
        {"image_id": 5, "category_id": 3, "segmentation": _polygon(30, 30, 72, 70), "iscrowd": 0},     # medium
        {"image_id": 5, "category_id": 11, "segmentation": _polygon(2, 50, 20, 62), "iscrowd": 0},     # small
    ]
    sizes = {img["id"]: (img["height"], img["width"]) for img in images}
    for index, ann in enumerate(anns, start=1):
        height, width = sizes[ann["image_id"]]
        seg = ann["segmentation"]
        if isinstance(seg, list):
            rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
        elif isinstance(seg["counts"], list):
            rle = mask_utils.frPyObjects(seg, height, width)
        else:
            rle = seg
        ann["id"] = index
        ann["area"] = float(mask_utils.area(rle))
        ann["bbox"] = [float(v) for v in mask_utils.toBbox(rle)]   # integer-valued: pixel extents
    assert all(float(v).is_integer() for ann in anns for v in ann["bbox"])
    categories = [{"id": cid, "name": f"cat{cid}"} for cid in CATEGORY_IDS]
    return {"images": images, "annotations": anns, "categories": categories}


@pytest.fixture(scope="module")
def coco_gt():
    coco = COCO()
    coco.dataset = _gt_dataset()
    coco.createIndex()
    return coco


def _empty_result(height, width):
    return {"boxes": np.zeros((0, 4), np.int64), "classes": np.zeros(0, np.int64),
            "box_scores": np.zeros(0, np.float32), "mask_scores": np.zeros(0, np.float32),
            "masks": np.zeros((0, height, width), bool)}


def _results_from_gt(coco, image_id, score_start=0.9):
    """The image's non-crowd ground truth as detector output: int boxes, bool masks."""
    img = coco.imgs[image_id]
    anns = [a for a in coco.imgToAnns[image_id] if not a["iscrowd"]]
    if not anns:
        return _empty_result(img["height"], img["width"])
    boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)], np.int64)
    scores = score_start - 0.1 * np.arange(len(anns), dtype=np.float32)
    return {"boxes": boxes,
            "classes": np.array([CATEGORY_IDS.index(a["category_id"]) for a in anns], np.int64),
            "box_scores": scores, "mask_scores": scores * 0.9,
            "masks": np.stack([coco.annToMask(a).astype(bool) for a in anns])}


def _evaluate(coco_gt, results_by_image):
    evaluator = CocoEvaluator(CATEGORY_IDS)
    for image_id, result in results_by_image.items():
        evaluator.add(image_id, result)
    return evaluator, evaluator.evaluate(coco_gt)


def test_ground_truth_as_results_scores_ap_one(coco_gt):
    results = {i: _results_from_gt(coco_gt, i) for i in (1, 2, 5)}
    _, metrics = _evaluate(coco_gt, results)
    # COCOeval's precision is tp / (tp + fp + eps): a single true positive scores 1 - 1.1e-16,
    # as APm's categories do here (one medium object each); everything else is exactly 1.
    for iou_type in ("bbox", "segm"):
        for name in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
            assert metrics[iou_type][name] == pytest.approx(1.0, abs=1e-15), (iou_type, name)
        assert metrics[iou_type]["AP"] == 1.0


def test_detection_on_crowd_is_ignored(coco_gt):
    results = {i: _results_from_gt(coco_gt, i) for i in (1, 2, 5)}
    crowd = coco_gt.anns[3]
    r = results[1]
    crowd_mask = coco_gt.annToMask(crowd).astype(bool)[None]
    results[1] = {"boxes": np.concatenate([r["boxes"], [[160, 120, 196, 156]]]),
                  "classes": np.concatenate([r["classes"], [0]]),
                  "box_scores": np.concatenate([r["box_scores"], [0.05]]),
                  "mask_scores": np.concatenate([r["mask_scores"], [0.05]]),
                  "masks": np.concatenate([r["masks"], crowd_mask])}
    _, metrics = _evaluate(coco_gt, results)
    assert metrics["bbox"]["AP"] == 1.0 and metrics["segm"]["AP"] == 1.0


def test_one_wrong_class_lowers_ap_by_hand_computed_amount(coco_gt):
    results = {i: _results_from_gt(coco_gt, i) for i in (1, 2, 5)}
    # Image 1's small category-3 object, reported as category 11 with the lowest score of all.
    results[1]["classes"][0] = CATEGORY_IDS.index(11)
    results[1]["box_scores"][0] = results[1]["mask_scores"][0] = 0.01
    _, metrics = _evaluate(coco_gt, results)
    # Category 3: 1 of 2 objects found -> precision 1 on recall thresholds 0.00..0.50 (51 of 101).
    # Category 11: both objects found before the false positive -> 1. Category 7: 1.
    # Category 15 has no ground truth and is left out of the mean.
    expected = (51 / 101 + 1 + 1) / 3
    for iou_type in ("bbox", "segm"):
        for name in ("AP", "AP50", "AP75"):
            assert metrics[iou_type][name] == pytest.approx(expected, abs=1e-12)


def test_only_added_images_are_evaluated(coco_gt):
    _, metrics = _evaluate(coco_gt, {i: _results_from_gt(coco_gt, i) for i in (1, 2)})
    assert metrics["bbox"]["AP"] == 1.0 and metrics["segm"]["AP"] == 1.0
    # Added with no detection, image 5 counts its two objects as missed: category 3 and 11
    # each find 1 of 2 (51 / 101), category 7 finds both.
    results = {i: _results_from_gt(coco_gt, i) for i in (1, 2)}
    results[5] = _empty_result(80, 80)
    _, metrics = _evaluate(coco_gt, results)
    expected = (2 * 51 / 101 + 1) / 3
    assert metrics["bbox"]["AP"] == pytest.approx(expected, abs=1e-12)
    assert metrics["segm"]["AP"] == pytest.approx(expected, abs=1e-12)


def test_empty_results_give_zero_ap_with_warning(coco_gt):
    evaluator = CocoEvaluator(CATEGORY_IDS)
    for image_id in (1, 2, 5):
        img = coco_gt.imgs[image_id]
        evaluator.add(image_id, _empty_result(img["height"], img["width"]))
    with pytest.warns(UserWarning, match="no detection"):
        metrics = evaluator.evaluate(coco_gt)
    for iou_type in ("bbox", "segm"):
        assert all(v == 0.0 for v in metrics[iou_type].values()), metrics[iou_type]
    with pytest.warns(UserWarning, match="no image"):
        metrics = CocoEvaluator(CATEGORY_IDS).evaluate(coco_gt)
    assert metrics["segm"]["AP"] == 0.0


def test_unknown_or_repeated_image_is_rejected(coco_gt):
    evaluator = CocoEvaluator(CATEGORY_IDS)
    evaluator.add(1, _results_from_gt(coco_gt, 1))
    with pytest.raises(ValueError, match="already added"):
        evaluator.add(1, _results_from_gt(coco_gt, 1))
    evaluator.add(99, _empty_result(10, 10))
    with pytest.raises(ValueError, match="not in the ground truth"):
        evaluator.evaluate(coco_gt)


def test_zero_area_boxes_skipped_and_categories_mapped():
    masks = np.zeros((4, 12, 10), bool)
    masks[2, 2:6, 1:4] = True
    result = {"boxes": np.array([[5, 5, 5, 9], [5, 5, 9, 5], [1, 2, 4, 6], [0, 0, 10, 12]], np.int64),
              "classes": np.array([0, 1, 2, 1]),
              "box_scores": np.array([0.9, 0.8, 0.7, 0.6], np.float32),
              "mask_scores": np.array([0.5, 0.4, 0.3, 0.2], np.float32),
              "masks": masks}
    as_sequence = detections_to_coco(42, result, CATEGORY_IDS)
    as_dict = detections_to_coco(42, result, {0: 3, 1: 7, 2: 11, 3: 15})
    assert as_sequence == as_dict
    bbox, segm = as_sequence
    assert [e["bbox"] for e in bbox] == [[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 10.0, 12.0]]
    assert [e["category_id"] for e in bbox] == [11, 7] and [e["category_id"] for e in segm] == [11, 7]
    assert [e["image_id"] for e in bbox + segm] == [42] * 4
    assert [e["score"] for e in bbox] == pytest.approx([0.7, 0.6])
    assert [e["score"] for e in segm] == pytest.approx([0.3, 0.2])
    assert isinstance(segm[0]["segmentation"]["counts"], str) and "bbox" not in segm[0]
    decoded = mask_utils.decode({"size": segm[0]["segmentation"]["size"],
                                 "counts": segm[0]["segmentation"]["counts"].encode("ascii")})
    assert np.array_equal(decoded.astype(bool), masks[2])
    assert not mask_utils.decode(dict(segm[1]["segmentation"])).any()
    json.dumps(as_sequence)


def test_float_boxes_rounded_to_tenth_as_the_authors():
    result = {"boxes": np.array([[1.26, 2.0, 4.0, 6.04]]), "classes": np.array([3]),
              "box_scores": np.array([0.5]), "mask_scores": np.array([0.5]),
              "masks": np.ones((1, 8, 8), bool)}
    bbox, _ = detections_to_coco(1, result, CATEGORY_IDS)
    assert bbox[0]["bbox"] == [1.3, 2.0, 2.7, 4.0]
    assert bbox[0]["category_id"] == 15


def test_json_files_load_and_score_like_in_memory(coco_gt, tmp_path):
    results = {i: _results_from_gt(coco_gt, i) for i in (1, 2, 5)}
    results[2]["classes"][0] = CATEGORY_IDS.index(3)
    evaluator, metrics = _evaluate(coco_gt, results)
    paths = evaluator.write_json(str(tmp_path / "out" / "run"))
    assert paths == {"bbox": str(tmp_path / "out" / "run_bbox.json"),
                     "segm": str(tmp_path / "out" / "run_segm.json")}
    assert sorted(os.listdir(tmp_path / "out")) == ["run_bbox.json", "run_segm.json"]
    for iou_type, path in paths.items():
        with open(path) as f:
            assert len(json.load(f)) == 6    # the non-crowd objects
        loaded = coco_gt.loadRes(path)
        assert len(loaded.anns) == 6
        from_file = COCOeval(coco_gt, loaded, iou_type)   # the authors' run_coco_eval.py route
        from_file.evaluate()
        from_file.accumulate()
        from_file.summarize()
        assert from_file.stats[0] == metrics[iou_type]["AP"]
    # The in-memory results were not mutated by evaluate (loadRes adds keys to what it gets).
    assert set(evaluator.results["bbox"][0]) == {"image_id", "category_id", "bbox", "score"}
    assert metrics["bbox"]["AP"] < 1.0


def test_results_table_lists_percentages():
    metrics = {"bbox": {"AP": 0.5, "AP50": 0.75, "AP75": 0.5, "APs": -1.0, "APm": 0.25, "APl": 1.0},
               "segm": {"AP": 0.125, "AP50": 0.0, "AP75": 0.0, "APs": 0.0, "APm": 0.0, "APl": 0.0}}
    lines = format_results_table(metrics).splitlines()
    assert lines[0].split() == ["AP", "AP50", "AP75", "APs", "APm", "APl"]
    assert lines[1].split() == ["box", "50.00", "75.00", "50.00", "-", "25.00", "100.00"]
    assert lines[2].split() == ["mask", "12.50", "0.00", "0.00", "0.00", "0.00", "0.00"]
