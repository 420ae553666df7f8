"""Synthetic COCO data set: determinism, COCO validity, masks vs bbox/area, pixel alignment."""
import json
import os

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from src.data.classes import SHAPE_CLASSES
from src.data.synthetic import (CATEGORY_IDS, DATA_VERSION, MIN_SHAPE_PX, MIN_VISIBLE_FRACTION,
                                MIN_VISIBLE_PX, generate_dataset, image_rng, is_current,
                                mask_to_polygons, render_image, uncompressed_rle)
from tests.conftest import load_tool

main = load_tool("make_synthetic").main

SEED = 1
IMAGE_SIZE = 80
NUM_TRAIN = 16
NUM_VAL = 3


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("synthetic"))
    paths = generate_dataset(out, NUM_TRAIN, NUM_VAL, IMAGE_SIZE, SEED)
    return paths, COCO(paths["train_annotations"])


def _read_bytes(path):
    with open(path, "rb") as handle:
        return handle.read()


def _numpy_bbox(mask):
    """[x, y, w, h] of a non-empty mask, pixel units, computed without pycocotools."""
    ys, xs = np.nonzero(mask)
    return [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]


def _blur(image):
    return cv2.GaussianBlur(image.astype(np.float32), (0, 0), 1.5)


def test_same_seed_identical_and_other_seed_differs(tmp_path):
    runs = [generate_dataset(str(tmp_path / name), 3, 2, 64, seed)
            for name, seed in (("a", 5), ("b", 5), ("c", 6))]
    for split in ("train", "val"):
        key = f"{split}_annotations"
        assert _read_bytes(runs[0][key]) == _read_bytes(runs[1][key])
        assert _read_bytes(runs[0][key]) != _read_bytes(runs[2][key])
        names = sorted(os.listdir(runs[0][f"{split}_images"]))
        assert names == sorted(os.listdir(runs[1][f"{split}_images"]))
        for name in names:
            first, second = (cv2.imread(os.path.join(run[f"{split}_images"], name))
                             for run in runs[:2])
            np.testing.assert_array_equal(first, second)
    first = cv2.imread(os.path.join(runs[0]["train_images"], "000001.jpg"))
    other = cv2.imread(os.path.join(runs[2]["train_images"], "000001.jpg"))
    assert first.shape != other.shape or np.abs(first.astype(int) - other).mean() > 10


def test_more_images_keep_earlier_images_unchanged(tmp_path):
    small = generate_dataset(str(tmp_path / "small"), 2, 1, 64, 3)
    large = generate_dataset(str(tmp_path / "large"), 4, 1, 64, 3)
    for name in ("000001.jpg", "000002.jpg"):
        assert (_read_bytes(os.path.join(small["train_images"], name))
                == _read_bytes(os.path.join(large["train_images"], name)))


def test_files_and_categories(dataset):
    paths, coco = dataset
    assert sorted(paths) == ["train_annotations", "train_images", "val_annotations", "val_images"]
    assert len(coco.dataset["images"]) == NUM_TRAIN
    assert len(COCO(paths["val_annotations"]).dataset["images"]) == NUM_VAL
    categories = sorted(coco.loadCats(coco.getCatIds()), key=lambda c: c["id"])
    assert [c["id"] for c in categories] == [1, 3, 5, 7, 9, 11]
    assert [c["name"] for c in categories] == list(SHAPE_CLASSES)
    assert CATEGORY_IDS == (1, 3, 5, 7, 9, 11)
    assert {a["category_id"] for a in coco.dataset["annotations"]} == set(CATEGORY_IDS)


def test_images_exist_with_declared_size(dataset):
    paths, coco = dataset
    sizes = []
    for record in coco.dataset["images"]:
        image = cv2.imread(os.path.join(paths["train_images"], record["file_name"]))
        assert image is not None
        assert image.shape == (record["height"], record["width"], 3)
        for side in image.shape[:2]:
            assert 0.75 * IMAGE_SIZE - 1 <= side <= 1.25 * IMAGE_SIZE + 1
        sizes.append(image.shape[:2])
    assert any(h != w for h, w in sizes)


def test_masks_nonempty_and_bbox_area_match_decoded_mask(dataset):
    _, coco = dataset
    extents = []
    for ann in coco.dataset["annotations"]:
        mask = coco.annToMask(ann)
        assert mask.sum() >= MIN_VISIBLE_PX
        assert ann["area"] == mask.sum()
        assert ann["bbox"] == _numpy_bbox(mask)
        assert ann["bbox"] == mask_utils.toBbox(mask_utils.encode(np.asfortranarray(mask))).tolist()
        extents.append(max(ann["bbox"][2:]))
    # Shapes start at MIN_SHAPE_PX (bounding-circle diameter): the smallest boxes are no larger.
    assert min(extents) <= MIN_SHAPE_PX
    assert max(extents) >= 0.5 * IMAGE_SIZE


def test_polygon_rle_and_crowd_annotations_present(dataset):
    _, coco = dataset
    kinds = {"polygon": 0, "rle": 0, "crowd": 0}
    for ann in coco.dataset["annotations"]:
        segmentation = ann["segmentation"]
        image = coco.imgs[ann["image_id"]]
        if isinstance(segmentation, list):
            assert ann["iscrowd"] == 0
            assert all(len(part) >= 8 and len(part) % 2 == 0 for part in segmentation)
            kinds["polygon"] += 1
        else:
            assert segmentation["size"] == [image["height"], image["width"]]
            assert isinstance(segmentation["counts"], list)
            assert sum(segmentation["counts"]) == image["height"] * image["width"]
            kinds["crowd" if ann["iscrowd"] else "rle"] += 1
    assert min(kinds.values()) >= 1
    assert kinds["polygon"] > kinds["rle"]


def test_visible_masks_are_disjoint_and_occlusion_happens(dataset):
    _, coco = dataset
    touching = 0
    for image_id in coco.getImgIds():
        masks = [coco.annToMask(a) for a in coco.loadAnns(coco.getAnnIds(imgIds=image_id))]
        if not masks:
            continue
        assert np.sum(masks, axis=0).max() <= 1
        for i, first in enumerate(masks):
            grown = cv2.dilate(first, np.ones((3, 3), np.uint8))
            touching += sum(int(np.any(grown & second)) for second in masks[i + 1:])
    assert touching >= 3


def test_every_shape_shows_enough_of_itself():
    """Clipping and occlusion together hide at most 1 - MIN_VISIBLE_FRACTION of any shape,
    and they do hide part of some: the bound is reached for, not vacuous."""
    fractions = []
    for index in range(40):
        _, shapes = render_image(image_rng(SEED, "train", index), IMAGE_SIZE)
        fractions += [s["visible"].sum() / s["full_area"] for s in shapes if not s["iscrowd"]]
    assert min(fractions) >= MIN_VISIBLE_FRACTION
    assert min(fractions) < MIN_VISIBLE_FRACTION + 0.1
    assert sum(f < 0.95 for f in fractions) >= 10


def test_annotations_are_rendered_shapes_and_pixels_show_their_colour(dataset):
    """Each annotation is exactly one rendered shape's visible mask; the JPEG shows its colour."""
    paths, coco = dataset
    checked = 0
    for index, record in enumerate(coco.dataset["images"]):
        rendered, shapes = render_image(image_rng(SEED, "train", index), IMAGE_SIZE)
        jpeg = cv2.imread(os.path.join(paths["train_images"], record["file_name"])).astype(float)
        # JPEG removes much of the pixel noise; compare the images blurred past it.
        assert np.abs(_blur(jpeg) - _blur(rendered)).mean() < 2.5
        anns = coco.loadAnns(coco.getAnnIds(imgIds=record["id"]))
        kept = [s for s in shapes if s["visible"].sum() >= MIN_VISIBLE_PX]
        assert len(anns) == len(kept)
        for ann, shape in zip(anns, kept):
            mask = coco.annToMask(ann).astype(bool)
            np.testing.assert_array_equal(mask, shape["visible"])
            assert (ann["category_id"], ann["iscrowd"]) == (shape["category_id"], shape["iscrowd"])
            inner = cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
            if ann["iscrowd"] or inner.sum() < 10:
                continue
            grown = cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
            border = grown & ~mask
            colour = np.clip(shape["colour"], 0, 255)
            inside_error = np.abs(jpeg[inner].mean(0) - colour).max()
            assert inside_error < 16.0
            assert np.abs(jpeg[border].mean(0) - colour).max() > 2 * inside_error
            checked += 1
    assert checked >= 20


def test_mask_to_polygons_decodes_pixel_exact():
    height, width = 9, 11
    mask = np.zeros((height, width), bool)
    mask[1, 1] = True                     # single pixel
    mask[3:7, 2] = mask[6, 2:6] = True    # L shape, one pixel wide
    mask[2, 8] = mask[3, 9] = True        # two pixels touching at a corner
    polygons = mask_to_polygons(mask)
    assert len(polygons) == 3             # the corner-touching pair is one 8-connected part
    assert all(len(part) >= 8 for part in polygons)
    decoded = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, height, width)))
    np.testing.assert_array_equal(decoded.astype(bool), mask)
    # A single pixel (row 1, col 1) is traced a quarter pixel inside its edges [1, 2).
    assert [1.25, 1.25] in [part[:2] for part in polygons]
    ring = np.ones((5, 5), bool)
    ring[2, 2] = False
    assert mask_to_polygons(ring) is None


def test_uncompressed_rle_counts():
    # Column-major flattening of [[0, 1, 1], [0, 0, 1]] is 0 0 | 1 0 | 1 1.
    rle = uncompressed_rle(np.array([[0, 1, 1], [0, 0, 1]], bool))
    assert rle == {"counts": [2, 1, 1, 2], "size": [2, 3]}
    assert uncompressed_rle(np.array([[1, 0]], bool))["counts"] == [0, 1, 1]
    mask = np.random.default_rng(0).random((7, 5)) > 0.5
    decoded = mask_utils.decode(mask_utils.frPyObjects(uncompressed_rle(mask), 7, 5))
    np.testing.assert_array_equal(decoded.astype(bool), mask)


def test_cli_refuses_non_empty_or_unwritable_output(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user file")
    args = ["--out", str(out), "--num_train", "1", "--num_val", "1", "--image_size", "48"]
    assert main(args) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0
    assert (out / "keep.txt").exists()
    with open(out / "annotations" / "instances_train.json") as handle:
        assert len(json.load(handle)["images"]) == 1
    assert main(["--out", str(out / "keep.txt" / "sub")]) == 2
    assert "cannot write" in capsys.readouterr().err
    assert main(["--out", str(out / "keep.txt")]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_keep_current_regenerates_only_other_arguments_or_versions(tmp_path, capsys):
    out = tmp_path / "out"
    args = ["--out", str(out), "--num_train", "2", "--num_val", "1", "--image_size", "48",
            "--overwrite", "--keep_current"]
    train_json = out / "annotations" / "instances_train.json"
    assert main(args) == 0
    assert "kept" not in capsys.readouterr().out
    assert main(args) == 0
    assert "kept" in capsys.readouterr().out

    assert main(args[:3] + ["3"] + args[4:]) == 0           # another num_train
    assert "kept" not in capsys.readouterr().out
    assert len(json.loads(train_json.read_text())["images"]) == 3

    dataset = json.loads(train_json.read_text())
    dataset["info"]["version"] = "1.0"                      # written by an older generator
    train_json.write_text(json.dumps(dataset))
    assert not is_current(str(out), 3, 1, 48, seed=0)
    assert main(args[:3] + ["3"] + args[4:]) == 0
    assert json.loads(train_json.read_text())["info"]["version"] == DATA_VERSION
    assert is_current(str(out), 3, 1, 48, seed=0)
    train_json.write_text("not json")
    assert not is_current(str(out), 3, 1, 48, seed=0)
