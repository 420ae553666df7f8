"""COCO evaluation of detector output: result json (boxes, RLE masks) and pycocotools AP.

A detector result for one image is a dict of numpy arrays, in original-image pixels:
    boxes: [D, 4] int (x1, y1, x2, y2), absolute pixels, clamped to the image.
    classes: [D] int, 0-based foreground label.
    box_scores: [D] float, the class confidence.
    mask_scores: [D] float, the mask score (box score x predicted mask IoU on YOLACT++,
        equal to box_scores on YOLACT).
    masks: [D, H, W] bool full-image binary masks, or their ``MaskWindows``
        (``src.postprocess.masks``; what ``detections_to_image`` gives, encoded without
        building the full-image masks).

As in the authors' COCO-json path, a detection whose integer box has zero area is dropped from
both result lists; bbox coordinates are rounded to 0.1 px (a no-op on the detector's integer
boxes; float boxes are written as the authors' writer would); bbox results carry the box score
and segm results the mask score. Segm entries carry no "bbox" key: with one, pycocotools'
``loadRes`` would take the box area, not the mask area, for the small/medium/large split.
"""
import copy
import json
import os
import warnings

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from src.postprocess.masks import MaskWindows
from src.utils.files import write_text_atomic

# COCOeval.stats[0:6] are these, in this order (IoU 0.5:0.95 / 0.5 / 0.75; area all/S/M/L).
METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")
IOU_TYPES = ("bbox", "segm")


def detections_to_coco(image_id, result, label_to_category_id):
    """One image's detections -> COCO result entries.

    Args:
        image_id: the COCO image id.
        result: the detector's dict for this image (see the module docstring).
        label_to_category_id: sequence or dict, 0-based label -> COCO category id.
    Returns:
        (bbox_entries, segm_entries): two lists of equal length, one entry per detection with a
        non-zero integer box area, in the input order. bbox entries are
        ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``; segm entries hold
        ``"segmentation"``: a compressed RLE dict with ``counts`` as str (JSON-serialisable).
    """
    boxes = np.asarray(result["boxes"]).reshape(-1, 4)
    classes = np.asarray(result["classes"]).reshape(-1)
    box_scores = np.asarray(result["box_scores"], np.float64).reshape(-1)
    mask_scores = np.asarray(result["mask_scores"], np.float64).reshape(-1)
    masks = result["masks"]
    if not isinstance(masks, MaskWindows):
        masks = np.asarray(masks)
        if masks.ndim != 3:
            raise ValueError(f"image {image_id}: masks of shape {masks.shape}; expected [D, H, W]")
        masks = MaskWindows.from_dense(masks)
    num_dets = boxes.shape[0]
    if not len(classes) == len(box_scores) == len(mask_scores) == len(masks) == num_dets:
        raise ValueError(f"image {image_id}: inconsistent result arrays (boxes {boxes.shape}, classes "
                         f"{classes.shape}, box_scores {box_scores.shape}, mask_scores {mask_scores.shape}, "
                         f"{len(masks)} masks); expected D boxes, D labels, D scores and D masks")

    boxes = boxes.astype(np.float64)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = np.flatnonzero(areas > 0)
    if keep.size == 0:
        return [], []

    rles = masks.to_rle()

    bbox_entries, segm_entries = [], []
    for index in keep:
        rle = rles[index]
        x1, y1, x2, y2 = (float(v) for v in boxes[index])
        category_id = int(label_to_category_id[int(classes[index])])
        bbox = [round(v * 10) / 10 for v in (x1, y1, x2 - x1, y2 - y1)]
        bbox_entries.append({"image_id": int(image_id), "category_id": category_id,
                             "bbox": bbox, "score": float(box_scores[index])})
        segmentation = {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
        segm_entries.append({"image_id": int(image_id), "category_id": category_id,
                             "segmentation": segmentation, "score": float(mask_scores[index])})
    return bbox_entries, segm_entries


def results_paths(path_prefix):
    """{"bbox": "<prefix>_bbox.json", "segm": "<prefix>_segm.json"}: where ``write_json`` writes."""
    return {iou_type: f"{path_prefix}_{iou_type}.json" for iou_type in IOU_TYPES}


def _write_json_atomic(data, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_text_atomic(path, json.dumps(data))


def _load_results(coco_gt, entries):
    """COCO object of results; ``loadRes`` cannot take an empty list (it reads entry 0)."""
    if entries:
        # loadRes adds keys (id, area, iscrowd...) to the dicts it is given: keep ours clean.
        return coco_gt.loadRes(copy.deepcopy(entries))
    empty = COCO()
    empty.dataset = {"images": list(coco_gt.dataset["images"]),
                     "categories": copy.deepcopy(coco_gt.dataset["categories"]),
                     "annotations": []}
    empty.createIndex()
    return empty


class CocoEvaluator:
    """Collects COCO results image by image, writes them as json, scores them with COCOeval.

    Only the images passed to ``add`` are evaluated (COCOeval's ``imgIds`` is set to them), so
    a run over the first N images is scored on those N; an added image without detections still
    counts its ground truth as missed.
    """

    def __init__(self, label_to_category_id):
        """label_to_category_id: sequence or dict, 0-based label -> COCO category id."""
        self.label_to_category_id = label_to_category_id
        self.image_ids = []
        self._image_id_set = set()
        self.results = {"bbox": [], "segm": []}
        # {"bbox": COCOeval, "segm": COCOeval} once ``evaluate`` ran: per-class AP reads them.
        self.coco_evals = {}

    def add(self, image_id, result):
        """Adds one image's detector result (module docstring); each image id at most once."""
        self.add_entries(image_id, *detections_to_coco(int(image_id), result,
                                                       self.label_to_category_id))

    def add_entries(self, image_id, bbox_entries, segm_entries):
        """Adds one image's COCO result entries (``detections_to_coco``'s two lists, e.g. made
        by another rank); each image id at most once."""
        image_id = int(image_id)
        if image_id in self._image_id_set:
            raise ValueError(f"image {image_id} was already added; its detections would count twice")
        self.image_ids.append(image_id)
        self._image_id_set.add(image_id)
        self.results["bbox"].extend(bbox_entries)
        self.results["segm"].extend(segm_entries)

    def write_json(self, path_prefix):
        """Writes ``results_paths(path_prefix)`` (temp file + rename).

        Returns: {"bbox": path, "segm": path}.
        """
        paths = results_paths(path_prefix)
        for iou_type, path in paths.items():
            _write_json_atomic(self.results[iou_type], path)
        return paths

    def evaluate(self, coco_gt):
        """Runs COCOeval (bbox and segm) on the added images and prints its summaries.

        Args:
            coco_gt: pycocotools ``COCO`` of the ground truth holding every added image.
        Returns:
            {"bbox": {name: float}, "segm": {name: float}} with the names in ``METRIC_NAMES``,
            as fractions (0..1). A value is -1.0 where COCOeval has no ground truth to score
            (e.g. APl when no evaluated image holds a large object).
        """
        missing = sorted(set(self.image_ids) - set(coco_gt.getImgIds()))
        if missing:
            raise ValueError(f"{len(missing)} evaluated image ids are not in the ground truth, "
                             f"e.g. {missing[:5]}")
        if not self.image_ids:
            warnings.warn("no image was evaluated: every AP is reported as 0")
            return {iou_type: {name: 0.0 for name in METRIC_NAMES} for iou_type in IOU_TYPES}
        if not self.results["bbox"]:
            warnings.warn(f"no detection in {len(self.image_ids)} evaluated images: AP is 0")

        metrics = {}
        for iou_type in IOU_TYPES:
            print(f"\nEvaluating {iou_type}:")
            coco_eval = COCOeval(coco_gt, _load_results(coco_gt, self.results[iou_type]), iou_type)
            coco_eval.params.imgIds = sorted(self.image_ids)
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
            self.coco_evals[iou_type] = coco_eval
            metrics[iou_type] = {name: float(coco_eval.stats[i]) for i, name in enumerate(METRIC_NAMES)}
        return metrics


def format_results_table(metrics):
    """Compact table of ``CocoEvaluator.evaluate``'s numbers in percent: rows box / mask.

    Undefined entries (-1) are shown as "-".
    """
    rows = [("box", metrics["bbox"]), ("mask", metrics["segm"])]
    lines = [" " * 6 + "".join(f"{name:>7}" for name in METRIC_NAMES)]
    for row_name, values in rows:
        cells = "".join(f"{values[name] * 100:7.2f}" if values[name] >= 0 else f"{'-':>7}"
                        for name in METRIC_NAMES)
        lines.append(f"{row_name:<6}{cells}")
    return "\n".join(lines)
