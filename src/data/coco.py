"""COCO-format annotation parsing: validated image records with contiguous 0-based labels.

COCO's category ids are not contiguous (1..90 with gaps on COCO itself); labels are the
positions of the ids sorted ascending, which on COCO is the authors' ``COCO_LABEL_MAP`` minus
one. Every segmentation (polygons, uncompressed or compressed RLE) is converted here, with the
same pycocotools calls as ``COCO.annToRLE``, into one compressed RLE string per object, so a
decoded mask equals ``COCO.annToMask`` bit for bit and malformed masks fail before any writing.
"""
import json
import math
import os
from dataclasses import dataclass
from typing import NamedTuple, Tuple

import numpy as np
from pycocotools import mask as mask_utils


class DatasetError(ValueError):
    """Unusable dataset input; the one-line message names the file, the field and what was expected."""


@dataclass(frozen=True)
class CategoryMap:
    """Label ``i`` (0-based foreground class) is category ``category_ids[i]``, ``class_names[i]``."""
    category_ids: Tuple[int, ...]
    class_names: Tuple[str, ...]

    def label_of(self, category_id):
        return self.category_ids.index(category_id)

    def category_id_of(self, label):
        return self.category_ids[label]

    def to_dict(self):
        return {"category_ids": list(self.category_ids), "class_names": list(self.class_names)}

    @classmethod
    def from_dict(cls, data):
        return cls(tuple(int(i) for i in data["category_ids"]), tuple(str(n) for n in data["class_names"]))


@dataclass(frozen=True, eq=False)
class ImageRecord:
    """One image and its objects; non-crowd objects first (file order), then crowds (file order).

    boxes_abs: [G, 4] float32 (x1, y1, x2, y2), absolute pixels of the original image.
    labels: [G] int32, 0-based foreground class (crowds keep their class; ``is_crowd`` marks them).
    is_crowd: [G] bool.
    mask_rles: G compressed COCO RLE strings (pycocotools ``counts``) of size (height, width).
    """
    image_id: int
    file_name: str
    path: str
    width: int
    height: int
    boxes_abs: np.ndarray
    labels: np.ndarray
    is_crowd: np.ndarray
    mask_rles: Tuple[bytes, ...]


@dataclass(frozen=True)
class ParseStats:
    """What was read and what was left out, for the conversion log and the dataset info file."""
    images_in_file: int
    images_kept: int
    images_skipped_empty: int
    annotations_in_file: int
    objects_kept: int
    crowds_kept: int
    degenerate_boxes_skipped: int
    objects_without_polygon_skipped: int
    short_polygons_dropped: int

    def summary(self):
        return (f"{self.images_kept}/{self.images_in_file} images kept "
                f"({self.images_skipped_empty} without annotations skipped), "
                f"{self.objects_kept} objects ({self.crowds_kept} crowds); skipped "
                f"{self.degenerate_boxes_skipped} boxes under 1 px, "
                f"{self.objects_without_polygon_skipped} objects without a 3-point polygon; "
                f"dropped {self.short_polygons_dropped} polygons of < 3 points")


class _Object(NamedTuple):
    box_abs: Tuple[float, float, float, float]
    label: int
    is_crowd: bool
    rle: bytes


@dataclass(frozen=True)
class CocoDataset:
    categories: CategoryMap
    images: Tuple[ImageRecord, ...]
    stats: ParseStats


def load_coco(ann_file, image_dir, keep_empty=False):
    """Parse and validate a COCO-format instances file against an image folder.

    Images left without objects (none annotated, or all skipped) are dropped unless
    ``keep_empty``. Boxes with width or height under 1 px are skipped, and so are objects whose
    polygons all have fewer than 3 points (they have no area; pycocotools fails on them).
    Raises DatasetError for anything malformed.
    """
    if not os.path.isdir(image_dir):
        raise DatasetError(f"{image_dir}: image directory not found")
    document = _read_json(ann_file)
    where = _Where(ann_file)
    for key in ("images", "annotations", "categories"):
        if key not in document:
            raise DatasetError(f"{ann_file}: missing required top-level key '{key}'")
        if not isinstance(document[key], list):
            raise DatasetError(f"{ann_file}: '{key}' expected a list, got {type(document[key]).__name__}")
    categories = _parse_categories(document["categories"], where)
    images = _parse_images(document["images"], where)
    counts = {"degenerate": 0, "no_polygon": 0, "short_polygons": 0}
    objects = {image_id: [] for image_id in images}
    for index, ann in enumerate(document["annotations"]):
        parsed = _parse_annotation(ann, index, images, categories, where, counts)
        if parsed is not None:
            objects[ann["image_id"]].append(parsed)

    records = []
    for image_id, image in images.items():
        # Stable sort: crowds go last, as the authors order them, each group in file order.
        found = sorted(objects[image_id], key=lambda obj: obj.is_crowd)
        if not found and not keep_empty:
            continue
        path = os.path.join(image_dir, image["file_name"])
        if not os.path.isfile(path):
            raise DatasetError(f"{ann_file}: images[{image['index']}] (id {image_id}): file_name "
                               f"'{image['file_name']}' not found in {image_dir}")
        records.append(ImageRecord(
            image_id=image_id, file_name=image["file_name"], path=path,
            width=image["width"], height=image["height"],
            boxes_abs=np.array([obj.box_abs for obj in found], np.float32).reshape(-1, 4),
            labels=np.array([obj.label for obj in found], np.int32),
            is_crowd=np.array([obj.is_crowd for obj in found], bool),
            mask_rles=tuple(obj.rle for obj in found)))
    stats = ParseStats(
        images_in_file=len(images), images_kept=len(records),
        images_skipped_empty=len(images) - len(records),
        annotations_in_file=len(document["annotations"]),
        objects_kept=sum(len(r.labels) for r in records),
        crowds_kept=sum(int(r.is_crowd.sum()) for r in records),
        degenerate_boxes_skipped=counts["degenerate"],
        objects_without_polygon_skipped=counts["no_polygon"],
        short_polygons_dropped=counts["short_polygons"])
    return CocoDataset(categories, tuple(records), stats)


class _Where:
    """Builds the 'file: section[index] (id n): field' prefix of error messages."""

    def __init__(self, ann_file):
        self.ann_file = ann_file

    def error(self, section, index, item, message):
        ident = f" (id {_short(item['id'])})" if isinstance(item, dict) and "id" in item else ""
        return DatasetError(f"{self.ann_file}: {section}[{index}]{ident}: {message}")


def _short(value, limit=60):
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _read_json(ann_file):
    try:
        with open(ann_file, "rb") as handle:
            document = json.loads(handle.read())
    except OSError as error:
        raise DatasetError(f"{ann_file}: cannot read annotation file ({error.strerror})") from None
    except json.JSONDecodeError as error:
        raise DatasetError(f"{ann_file}: malformed JSON at line {error.lineno} column "
                           f"{error.colno}: {error.msg}") from None
    except UnicodeDecodeError as error:
        raise DatasetError(f"{ann_file}: not UTF-8 JSON text ({error.reason})") from None
    if not isinstance(document, dict):
        raise DatasetError(f"{ann_file}: top level: expected a JSON object with 'images', "
                           f"'annotations' and 'categories', got {type(document).__name__}")
    return document


def _require(item, keys, section, index, where):
    if not isinstance(item, dict):
        raise where.error(section, index, item, f"expected an object, got {_short(item)}")
    for key in keys:
        if key not in item:
            raise where.error(section, index, item, f"missing required key '{key}'")


def _parse_categories(entries, where):
    if not entries:
        raise DatasetError(f"{where.ann_file}: 'categories' expected at least one category, got []")
    names = {}
    for index, cat in enumerate(entries):
        _require(cat, ("id", "name"), "categories", index, where)
        if not _is_int(cat["id"]):
            raise where.error("categories", index, cat,
                              f"'id' expected an integer, got {_short(cat['id'])}")
        if not isinstance(cat["name"], str):
            raise where.error("categories", index, cat,
                              f"'name' expected a string, got {_short(cat['name'])}")
        if cat["id"] in names:
            raise where.error("categories", index, cat, f"'id' {cat['id']} is used by two categories")
        names[cat["id"]] = cat["name"]
    ids = tuple(sorted(names))
    return CategoryMap(ids, tuple(names[i] for i in ids))


def _parse_images(entries, where):
    images = {}
    for index, image in enumerate(entries):
        _require(image, ("id", "file_name", "width", "height"), "images", index, where)
        if not _is_int(image["id"]):
            raise where.error("images", index, image,
                              f"'id' expected an integer, got {_short(image['id'])}")
        if image["id"] in images:
            raise where.error("images", index, image, f"'id' {image['id']} is used by two images")
        if not isinstance(image["file_name"], str) or not image["file_name"]:
            raise where.error("images", index, image,
                              f"'file_name' expected a non-empty string, got {_short(image['file_name'])}")
        for key in ("width", "height"):
            if not _is_int(image[key]) or image[key] < 1:
                raise where.error("images", index, image,
                                  f"'{key}' expected a positive integer, got {_short(image[key])}")
        images[image["id"]] = {"index": index, "file_name": image["file_name"],
                               "width": image["width"], "height": image["height"]}
    return images


def _parse_annotation(ann, index, images, categories, where, counts):
    """The ``_Object`` of one annotation, or None when it is skipped."""
    _require(ann, ("image_id", "category_id", "bbox", "segmentation"), "annotations", index, where)
    if not _is_int(ann["image_id"]) or ann["image_id"] not in images:
        raise where.error("annotations", index, ann,
                          f"'image_id' {_short(ann['image_id'])} does not match any image id")
    if not _is_int(ann["category_id"]) or ann["category_id"] not in categories.category_ids:
        raise where.error("annotations", index, ann,
                          f"'category_id' {_short(ann['category_id'])} is not a category id "
                          f"(known: {_short(list(categories.category_ids))})")
    is_crowd = ann.get("iscrowd", 0)
    if is_crowd not in (0, 1) or not isinstance(is_crowd, (int, bool)):
        raise where.error("annotations", index, ann, f"'iscrowd' expected 0 or 1, got {_short(is_crowd)}")
    bbox = ann["bbox"]
    numbers_ok = (isinstance(bbox, list) and len(bbox) == 4
                  and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                          for v in bbox))
    if not numbers_ok or bbox[2] < 0 or bbox[3] < 0:
        raise where.error("annotations", index, ann,
                          f"'bbox' expected 4 finite numbers [x, y, w, h] with w, h >= 0, "
                          f"got {_short(bbox)}")
    if bbox[2] < 1 or bbox[3] < 1:
        counts["degenerate"] += 1
        return None
    image = images[ann["image_id"]]
    rle = _segmentation_to_rle(ann["segmentation"], image["height"], image["width"],
                               lambda message: where.error("annotations", index, ann, message), counts)
    if rle is None:
        counts["no_polygon"] += 1
        return None
    x, y, w, h = (float(v) for v in bbox)
    return _Object((x, y, x + w, y + h), categories.label_of(ann["category_id"]), bool(is_crowd), rle)


def _segmentation_to_rle(segmentation, height, width, error, counts):
    """Compressed RLE ``counts`` bytes of a polygon list or an RLE dict, as ``COCO.annToRLE``.

    Polygons of fewer than 3 points are dropped (they cover no pixel); None when none is left.
    """
    if isinstance(segmentation, list):
        polygons = []
        for polygon in segmentation:
            try:
                coords = np.asarray(polygon, dtype=np.float64)
            except (TypeError, ValueError):
                coords = None
            if coords is None or coords.ndim != 1 or not np.all(np.isfinite(coords)):
                raise error(f"'segmentation' polygon expected a list of finite numbers, "
                            f"got {_short(polygon)}")
            if coords.size % 2:
                raise error(f"'segmentation' polygon expected an even count of x, y numbers, "
                            f"got {coords.size}")
            if coords.size < 6:
                counts["short_polygons"] += 1
                continue
            polygons.append(polygon)
        if not polygons:
            return None
        return mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))["counts"]
    if not isinstance(segmentation, dict) or "counts" not in segmentation or "size" not in segmentation:
        raise error(f"'segmentation' expected a polygon list or an RLE object with 'counts' and "
                    f"'size', got {_short(segmentation)}")
    if segmentation["size"] != [height, width]:
        raise error(f"'segmentation' RLE 'size' expected [height, width] = [{height}, {width}], "
                    f"got {_short(segmentation['size'])}")
    run_lengths = segmentation["counts"]
    if isinstance(run_lengths, list):
        if not all(_is_int(n) and n >= 0 for n in run_lengths) or sum(run_lengths) != height * width:
            raise error(f"'segmentation' uncompressed RLE 'counts' expected non-negative integers "
                        f"summing to height*width = {height * width}")
        rle = mask_utils.frPyObjects(segmentation, height, width)
    elif isinstance(run_lengths, str):
        runs = _compressed_rle_runs(run_lengths)
        if runs is None or min(runs, default=0) < 0 or sum(runs) != height * width:
            raise error(f"'segmentation' compressed RLE 'counts' does not decode to non-negative runs "
                        f"summing to height*width = {height * width}")
        rle = {"size": [height, width], "counts": run_lengths.encode("ascii")}
    else:
        raise error(f"'segmentation' RLE 'counts' expected a list of integers or a string, "
                    f"got {_short(run_lengths)}")
    return rle["counts"]


def _compressed_rle_runs(text):
    """Run lengths of a pycocotools compressed RLE string, or None when it is not one.

    Format (pycocotools maskApi.c): each run is 5-bit groups, least significant first, as
    characters chr(48 + group); bit 0x20 means another group follows, bit 0x10 of the last
    group is the sign. From the fourth run on, the value is a difference to the run two back.
    pycocotools itself does not check the total and decodes a short string into garbage.
    """
    runs = []
    value, shift = 0, 0
    for char in text:
        group = ord(char) - 48
        if not 0 <= group < 64:
            return None
        value |= (group & 0x1F) << shift
        shift += 5
        if group & 0x20:
            continue
        if group & 0x10:
            value -= 1 << shift
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
        value, shift = 0, 0
    return runs if shift == 0 else None
