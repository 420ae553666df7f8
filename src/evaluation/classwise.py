"""Box and mask AP per class (``eval.py --classwise``), read from COCOeval's accumulated
precision as mmdetection's ``classwise`` option does.

COCOeval's ``eval["precision"]`` is [T, R, K, A, M]: T = 10 IoU thresholds (0.5:0.95),
R = 101 recall points, K categories (``params.catIds`` order), A area ranges, M maxDets. A
class's AP is the mean of its [T, R] slice at area "all" and the largest maxDets (100) over the
entries > -1; a class without ground truth in the evaluated images has only -1 entries and
its AP is nan (shown as "-"). Every entry of a class with ground truth is set (a missed class
scores zeros), so the mean of the defined per-class values is COCOeval's AP.
"""
import csv
import io
import json
import math

import numpy as np

from src.evaluation.coco_eval import IOU_TYPES
from src.utils.files import write_text_atomic


def classwise_ap(coco_eval):
    """{category id: AP as a fraction, nan without ground truth} of an accumulated COCOeval."""
    params = coco_eval.params
    # [T, R, K, A, M] -> [T, R, K] at area "all" and the largest maxDets (100, as COCO's AP).
    precision = coco_eval.eval["precision"][:, :, :, params.areaRngLbl.index("all"), -1]
    per_class = {}
    for index, category_id in enumerate(params.catIds):
        values = precision[:, :, index]
        values = values[values > -1]
        per_class[int(category_id)] = float(np.mean(values)) if values.size else math.nan
    return per_class


def classwise_rows(coco_evals, coco_gt):
    """One row per category of ``coco_gt``, in category id order.

    Args:
        coco_evals: {"bbox": COCOeval, "segm": COCOeval}, evaluated and accumulated.
        coco_gt: pycocotools COCO of the ground truth (category names).
    Returns:
        list of {"category_id": int, "name": str, "bbox": AP, "segm": AP}, AP as a fraction
        or nan.
    """
    per_type = {iou_type: classwise_ap(coco_evals[iou_type]) for iou_type in IOU_TYPES}
    return [{"category_id": category_id, "name": coco_gt.cats[category_id]["name"],
             **{iou_type: per_type[iou_type].get(category_id, math.nan) for iou_type in IOU_TYPES}}
            for category_id in sorted(coco_gt.getCatIds())]


def _cell(value, width=0):
    return f"{'-':>{width}}" if math.isnan(value) else f"{value * 100:{width}.2f}"


def format_classwise_table(rows):
    """The rows of ``classwise_rows`` as a table in percent, "-" where a class has no ground
    truth."""
    width = max([len("class")] + [len(row["name"]) for row in rows])
    lines = [f"{'class':<{width}}  {'box AP':>7}  {'mask AP':>7}"]
    for row in rows:
        lines.append(f"{row['name']:<{width}}  {_cell(row['bbox'], 7)}  {_cell(row['segm'], 7)}")
    return "\n".join(lines)


def classwise_paths(path_prefix):
    """{"json": "<prefix>_classwise.json", "csv": "<prefix>_classwise.csv"}."""
    return {kind: f"{path_prefix}_classwise.{kind}" for kind in ("json", "csv")}


def write_classwise(rows, path_prefix):
    """Writes ``classwise_paths(path_prefix)`` (temp file + rename): JSON with AP as fractions
    (null without ground truth) and CSV ``category_id,name,bbox_AP,segm_AP`` in percent with
    two decimals ("-" without ground truth).

    Returns: {"json": path, "csv": path}.
    """
    paths = classwise_paths(path_prefix)
    document = [{"category_id": row["category_id"], "name": row["name"],
                 **{f"{iou_type}_AP": None if math.isnan(row[iou_type]) else row[iou_type]
                    for iou_type in IOU_TYPES}} for row in rows]
    write_text_atomic(paths["json"], json.dumps(document, indent=1) + "\n")
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["category_id", "name"] + [f"{iou_type}_AP" for iou_type in IOU_TYPES])
    for row in rows:
        writer.writerow([row["category_id"], row["name"]] + [_cell(row[iou_type])
                                                             for iou_type in IOU_TYPES])
    write_text_atomic(paths["csv"], table.getvalue())
    return paths
