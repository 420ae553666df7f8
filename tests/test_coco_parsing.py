"""COCO-format parsing: label map, per-image records, skipped objects, and one-line errors."""
import copy
import json
import os

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from src.data.coco import CategoryMap, DatasetError, _compressed_rle_runs, load_coco
from src.data.mindrecord import decode_masks

# (id, file_name, width, height) of the tiny dataset.
TINY_IMAGES = ((11, "a.jpg", 48, 32), (12, "b.png", 40, 30), (13, "c.jpg", 24, 20), (14, "d.jpg", 24, 20))
CROWD_BOX = (30, 20, 12, 8)   # x, y, w, h of the crowd rectangle (uncompressed RLE) in a.jpg


def uncompressed_rle(mask):
    """COCO uncompressed RLE of a [H, W] 0/1 mask: column-major runs, starting with zeros."""
    flat = mask.flatten(order="F")
    runs, value, length = [], 0, 0
    for pixel in flat:
        if pixel == value:
            length += 1
        else:
            runs.append(length)
            value, length = pixel, 1
    runs.append(length)
    return {"counts": [int(n) for n in runs], "size": list(mask.shape)}


def crowd_mask():
    x, y, w, h = CROWD_BOX
    mask = np.zeros((32, 48), np.uint8)
    mask[y:y + h, x:x + w] = 1
    return mask


def disc_mask():
    yy, xx = np.mgrid[:30, :40]
    return ((xx - 20) ** 2 + (yy - 14) ** 2 <= 64).astype(np.uint8)


def tiny_coco_document():
    """A COCO-format dict: non-contiguous, unsorted category ids; polygons, both RLE forms, a
    crowd listed first, a degenerate box, a 2-point polygon, an image without annotations."""
    disc = np.asfortranarray(disc_mask())
    disc_rle = mask_utils.encode(disc)
    annotations = [
        {"id": 102, "image_id": 11, "category_id": 7, "iscrowd": 1, "bbox": list(CROWD_BOX),
         "segmentation": uncompressed_rle(crowd_mask()), "area": 96},
        {"id": 101, "image_id": 11, "category_id": 3, "iscrowd": 0, "bbox": [2, 3, 18, 23.5],
         "segmentation": [[2, 3, 20, 3, 20, 15, 2, 15], [5.5, 18, 12.25, 18, 9, 26.5], [1, 1, 2, 2]]},
        {"id": 103, "image_id": 11, "category_id": 90, "iscrowd": 0, "bbox": [25.3, 2.1, 19.4, 14.3],
         "segmentation": [[25.3, 2.1, 44.7, 5.9, 33.2, 16.4]]},
        {"id": 104, "image_id": 12, "category_id": 90, "iscrowd": 0,
         "bbox": [float(v) for v in mask_utils.toBbox(disc_rle)],
         "segmentation": {"size": [30, 40], "counts": disc_rle["counts"].decode("ascii")}},
        {"id": 105, "image_id": 12, "category_id": 3, "iscrowd": 0, "bbox": [1, 1, 0.5, 10],
         "segmentation": [[1, 1, 1.5, 1, 1.5, 11]]},
        {"id": 106, "image_id": 12, "category_id": 7, "iscrowd": 0, "bbox": [3.0, 20.0, 10.0, 7.5],
         "segmentation": [[3, 20, 13, 20, 13, 27.5, 3, 27.5]]},
        {"id": 107, "image_id": 14, "category_id": 3, "iscrowd": 0, "bbox": [1, 1, 10, 0.9],
         "segmentation": [[1, 1, 11, 1, 11, 1.9]]},
        {"id": 108, "image_id": 14, "category_id": 7, "iscrowd": 0, "bbox": [1, 1, 4, 4],
         "segmentation": [[1, 1, 5, 5]]},
    ]
    return {
        "images": [{"id": i, "file_name": f, "width": w, "height": h} for i, f, w, h in TINY_IMAGES],
        "annotations": annotations,
        "categories": [{"id": 90, "name": "zebra"}, {"id": 3, "name": "car"}, {"id": 7, "name": "dog"}],
    }


def write_tiny_coco(root, document=None):
    """Write the images and ``annotations.json`` under ``root``; returns (ann_file, image_dir)."""
    image_dir = os.path.join(root, "images")
    os.makedirs(image_dir, exist_ok=True)
    rng = np.random.default_rng(0)
    for _, name, width, height in TINY_IMAGES:
        path = os.path.join(image_dir, name)
        if not os.path.exists(path):
            assert cv2.imwrite(path, rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
            if name == "a.jpg":
                # NULs after the JPEG end marker (decoders ignore them): bytes fields must keep them.
                with open(path, "ab") as handle:
                    handle.write(b"\0\0")
    ann_file = os.path.join(root, "annotations.json")
    with open(ann_file, "w") as handle:
        json.dump(tiny_coco_document() if document is None else document, handle)
    return ann_file, image_dir


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_coco(str(tmp_path_factory.mktemp("coco")))


def test_labels_are_category_ids_sorted_and_map_back(tiny):
    dataset = load_coco(*tiny)
    assert dataset.categories.category_ids == (3, 7, 90)
    assert dataset.categories.class_names == ("car", "dog", "zebra")
    assert [dataset.categories.label_of(i) for i in (3, 7, 90)] == [0, 1, 2]
    assert [dataset.categories.category_id_of(label) for label in (0, 1, 2)] == [3, 7, 90]
    assert CategoryMap.from_dict(dataset.categories.to_dict()) == dataset.categories


def test_coco_category_ids_give_the_authors_label_map():
    coco_ids = [*range(1, 12), *range(13, 26), 27, 28, *range(31, 45), *range(46, 66), 67, 70,
                *range(72, 83), *range(84, 91)]
    assert len(coco_ids) == 80
    shuffled = list(np.random.default_rng(1).permutation(coco_ids))
    categories = CategoryMap(tuple(sorted(int(i) for i in shuffled)), tuple(f"c{i}" for i in range(80)))
    # Entries of the authors' COCO_LABEL_MAP (1-based), minus one.
    for category_id, authors_label in ((1, 1), (11, 11), (13, 12), (27, 25), (46, 41), (67, 61),
                                       (70, 62), (84, 74), (90, 80)):
        assert categories.label_of(category_id) == authors_label - 1


def test_image_records_boxes_labels_crowds_last_and_masks(tiny):
    ann_file, _ = tiny
    dataset = load_coco(*tiny)
    assert [r.image_id for r in dataset.images] == [11, 12]
    coco = COCO(ann_file)
    expected_order = {11: [101, 103, 102], 12: [104, 106]}
    label_of = {3: 0, 7: 1, 90: 2}
    for record in dataset.images:
        anns = [coco.anns[i] for i in expected_order[record.image_id]]
        boxes = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                           a["bbox"][1] + a["bbox"][3]] for a in anns], np.float32)
        np.testing.assert_array_equal(record.boxes_abs, boxes)
        assert record.boxes_abs.dtype == np.float32 and record.boxes_abs.shape == (len(anns), 4)
        np.testing.assert_array_equal(record.labels, [label_of[a["category_id"]] for a in anns])
        np.testing.assert_array_equal(record.is_crowd, [a["iscrowd"] == 1 for a in anns])
        masks = decode_masks(record.mask_rles, record.height, record.width)
        assert masks.shape == (len(anns), record.height, record.width) and masks.dtype == np.uint8
        for mask, ann in zip(masks, anns):
            np.testing.assert_array_equal(mask, coco.annToMask(ann))
    first = dataset.images[0]
    np.testing.assert_array_equal(first.boxes_abs[2], [30, 20, 42, 28])
    np.testing.assert_array_equal(decode_masks(first.mask_rles, 32, 48)[2], crowd_mask())
    np.testing.assert_array_equal(decode_masks(dataset.images[1].mask_rles, 30, 40)[0], disc_mask())
    assert first.path == os.path.join(tiny[1], "a.jpg") and (first.width, first.height) == (48, 32)


def test_skip_counts_and_empty_images(tiny):
    stats = load_coco(*tiny).stats
    assert (stats.images_in_file, stats.images_kept, stats.images_skipped_empty) == (4, 2, 2)
    assert (stats.annotations_in_file, stats.objects_kept, stats.crowds_kept) == (8, 5, 1)
    assert stats.degenerate_boxes_skipped == 2          # ids 105 (w 0.5) and 107 (h 0.9)
    assert stats.objects_without_polygon_skipped == 1   # id 108: one 2-point polygon
    assert stats.short_polygons_dropped == 2            # the 2-point polygons of 101 and 108
    kept = load_coco(*tiny, keep_empty=True)
    assert [r.image_id for r in kept.images] == [11, 12, 13, 14]
    for record in kept.images[2:]:
        assert record.boxes_abs.shape == (0, 4) and record.labels.shape == (0,) and record.mask_rles == ()
    assert kept.stats.images_skipped_empty == 0


def test_compressed_rle_runs_match_the_mask():
    rng = np.random.default_rng(2)
    for trial in range(40):
        height, width = (int(v) for v in rng.integers(1, 40, 2))
        mask = (rng.random((height, width)) < trial / 40).astype(np.uint8)
        text = mask_utils.encode(np.asfortranarray(mask))["counts"].decode("ascii")
        assert _compressed_rle_runs(text) == uncompressed_rle(mask)["counts"]
    assert _compressed_rle_runs("0z") is None      # 'z' is outside the 64 symbols
    assert _compressed_rle_runs("c24`c") is None     # ends inside a multi-group run


def _drop(key):
    return lambda doc: doc.pop(key)


def _set(section, index, key, value):
    def apply(doc):
        doc[section][index][key] = value
    return apply


def _del(section, index, key):
    return lambda doc: doc[section][index].pop(key)


BAD_DOCUMENTS = {
    "missing categories": (_drop("categories"), ["'categories'", "missing"]),
    "images not a list": (lambda doc: doc.update(images={}), ["'images'", "expected a list"]),
    "image without file_name": (_del("images", 1, "file_name"), ["images[1] (id 12)", "'file_name'"]),
    "image width zero": (_set("images", 0, "width", 0),
                         ["images[0] (id 11)", "'width'", "positive integer"]),
    "duplicate image id": (_set("images", 1, "id", 11), ["images[1]", "'id' 11", "two images"]),
    "category without name": (_del("categories", 2, "name"), ["categories[2] (id 7)", "'name'"]),
    "no categories": (lambda doc: doc.update(categories=[]), ["'categories'", "at least one"]),
    "unknown image id": (_set("annotations", 3, "image_id", 999),
                         ["annotations[3] (id 104)", "'image_id' 999"]),
    "unknown category id": (_set("annotations", 0, "category_id", 5),
                            ["annotations[0] (id 102)", "'category_id' 5", "known: [3, 7, 90]"]),
    "bbox of 3 numbers": (_set("annotations", 1, "bbox", [1, 2, 3]),
                          ["annotations[1] (id 101)", "'bbox'", "4 finite numbers", "[1, 2, 3]"]),
    "bbox with a string": (_set("annotations", 2, "bbox", [1, 2, "3", 4]),
                           ["annotations[2] (id 103)", "'bbox'"]),
    "bbox negative width": (_set("annotations", 2, "bbox", [1, 2, -3, 4]), ["'bbox'", "w, h >= 0"]),
    "iscrowd 2": (_set("annotations", 1, "iscrowd", 2), ["annotations[1] (id 101)", "'iscrowd'", "0 or 1"]),
    "no segmentation": (_del("annotations", 5, "segmentation"),
                        ["annotations[5] (id 106)", "'segmentation'"]),
    "odd polygon": (_set("annotations", 2, "segmentation", [[1, 2, 3, 4, 5, 6, 7]]),
                    ["annotations[2] (id 103)", "'segmentation'", "even count"]),
    "polygon of strings": (_set("annotations", 2, "segmentation", [["a", "b", "c", "d", "e", "f"]]),
                           ["'segmentation'", "finite numbers"]),
    "rle size mismatch": (lambda doc: doc["annotations"][3]["segmentation"].update(size=[40, 30]),
                          ["annotations[3] (id 104)", "'size'", "[30, 40]"]),
    "uncompressed rle wrong total": (lambda doc: doc["annotations"][0]["segmentation"]["counts"].append(5),
                                     ["annotations[0] (id 102)", "'counts'", "1536"]),
    "compressed rle truncated": (lambda doc: doc["annotations"][3]["segmentation"].update(
        counts=doc["annotations"][3]["segmentation"]["counts"][:6]),
        ["annotations[3] (id 104)", "'counts'", "1200"]),
    "compressed rle garbage": (lambda doc: doc["annotations"][3]["segmentation"].update(counts="zz"),
                               ["annotations[3] (id 104)", "compressed RLE", "1200"]),
}


@pytest.mark.parametrize("case", sorted(BAD_DOCUMENTS))
def test_bad_document_gives_one_line_naming_file_and_field(case, tmp_path):
    mutate, expected = BAD_DOCUMENTS[case]
    document = copy.deepcopy(tiny_coco_document())
    mutate(document)
    ann_file, image_dir = write_tiny_coco(str(tmp_path), document)
    with pytest.raises(DatasetError) as caught:
        load_coco(ann_file, image_dir)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(ann_file + ": ")
    for fragment in expected:
        assert fragment in message, (fragment, message)


def test_malformed_json_reports_line_and_column(tmp_path):
    ann_file = str(tmp_path / "broken.json")
    with open(ann_file, "w") as handle:
        handle.write('{"images": [],\n "annotations": [,]}')
    with pytest.raises(DatasetError, match=r"broken\.json: malformed JSON at line 2 column 18"):
        load_coco(ann_file, str(tmp_path))


def test_missing_files_are_named(tmp_path):
    ann_file, image_dir = write_tiny_coco(str(tmp_path))
    with pytest.raises(DatasetError, match="nope.json: cannot read annotation file"):
        load_coco(str(tmp_path / "nope.json"), image_dir)
    with pytest.raises(DatasetError, match="no_dir: image directory not found"):
        load_coco(ann_file, str(tmp_path / "no_dir"))
    os.remove(os.path.join(image_dir, "b.png"))
    with pytest.raises(DatasetError) as caught:
        load_coco(ann_file, image_dir)
    assert str(caught.value) == f"{ann_file}: images[1] (id 12): file_name 'b.png' not found in {image_dir}"
    # An image that is skipped (no annotations) need not exist.
    write_tiny_coco(str(tmp_path))
    os.remove(os.path.join(image_dir, "c.jpg"))
    assert [r.image_id for r in load_coco(ann_file, image_dir).images] == [11, 12]
