"""Splits without public annotations (COCO test-dev): every image is detected, and the results
are packed for the COCO evaluation server instead of being scored here.

An annotation file is an image-info file when it holds no annotation at all (no
"annotations" key, or an empty list), as COCO's ``image_info_test-dev2017.json``.

Upload naming (https://cocodataset.org/#upload): a results json named
``[type]_[testset]_[alg]_results.json``, type ``detections`` for boxes and masks alike, zipped
with the json at the zip's root. The server scores one iou type per submission, so the box and
the mask results are two uploads; their alg parts end in ``-bbox`` and ``-segm`` to keep the
two names apart, e.g. ``detections_test-dev2017_yolact-plus-resnet50-segm_results.zip``.
"""
import os
import zipfile

from src.evaluation.coco_eval import IOU_TYPES
from src.utils.files import replaced_atomically

SERVER = "https://cocodataset.org/#upload"


def is_image_info(coco_gt):
    """True when ``coco_gt`` (pycocotools COCO) holds images but no annotation."""
    return not coco_gt.dataset.get("annotations")


def upload_testset(ann_file):
    """The [testset] part of upload names: the annotation file's name without ``.json`` and
    without a leading ``image_info_`` (``image_info_test-dev2017.json`` -> ``test-dev2017``)."""
    stem = os.path.splitext(os.path.basename(ann_file))[0]
    return stem[len("image_info_"):] if stem.startswith("image_info_") else stem


def upload_paths(folder, testset, algorithm):
    """{"bbox": zip path, "segm": zip path} in ``folder``. ``algorithm`` (e.g. the config name)
    has its underscores turned into hyphens: "_" separates the name's fields."""
    alg = algorithm.replace("_", "-")
    return {iou_type: os.path.join(folder, f"detections_{testset}_{alg}-{iou_type}_results.zip")
            for iou_type in IOU_TYPES}


def write_upload_zips(results_json, paths):
    """Zip each results json under its upload name (temp file + rename).

    Args:
        results_json: {"bbox": path, "segm": path} of the written result lists
            (``CocoEvaluator.write_json``).
        paths: {"bbox": zip path, "segm": zip path} of ``upload_paths``.
    Returns: ``paths``.
    """
    for iou_type, target in paths.items():
        member = os.path.splitext(os.path.basename(target))[0] + ".json"
        with replaced_atomically(target, ".zip") as temporary:
            with zipfile.ZipFile(temporary, "w", zipfile.ZIP_DEFLATED) as archive:
                archive.write(results_json[iou_type], arcname=member)
    return paths
