"""MindRecord conversion: round trip through MindDataset, shards, info file, atomic output, CLI."""
import io
import json
import os
import subprocess
import sys

import cv2
import mindspore.dataset as ds
import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from src.data.coco import DatasetError, load_coco
from src.data.mindrecord import (INFO_FILE, decode_image, decode_masks, decode_row, mindrecord_schema,
                                 read_dataset_info, shard_paths, write_mindrecord)
from tests.test_coco_parsing import tiny_coco_document, write_tiny_coco

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_rows(output_dir, split):
    """{image_id: DecodedRow} of every row of a converted split."""
    dataset = ds.MindDataset(shard_paths(output_dir, split), shuffle=False)
    rows = [decode_row(row) for row in dataset.create_dict_iterator(output_numpy=True, num_epochs=1)]
    return {row.image_id: row for row in rows}


def write(dataset, output_dir, split="train", num_shards=1, overwrite=False, **kwargs):
    return write_mindrecord(dataset.images, str(output_dir), split, num_shards, overwrite,
                            categories=dataset.categories, log=lambda line: None, **kwargs)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The tiny dataset written as 3 shards; (ann_file, image_dir, output_dir, rows)."""
    root = tmp_path_factory.mktemp("convert")
    ann_file, image_dir = write_tiny_coco(str(root))
    output_dir = str(root / "out")
    write(load_coco(ann_file, image_dir), output_dir, num_shards=3, source={"note": "tiny"})
    return ann_file, image_dir, output_dir, read_rows(output_dir, "train")


def test_round_trip_matches_files_and_pycocotools(converted):
    ann_file, image_dir, _, rows = converted
    assert sorted(rows) == [11, 12]
    coco = COCO(ann_file)
    expected_order = {11: [101, 103, 102], 12: [104, 106]}
    label_of = {3: 0, 7: 1, 90: 2}
    for image_id, ann_ids in expected_order.items():
        row = rows[image_id]
        info = coco.imgs[image_id]
        with open(os.path.join(image_dir, info["file_name"]), "rb") as handle:
            assert row.image_bytes == handle.read()
        assert (row.file_name, row.width, row.height) == (info["file_name"], info["width"], info["height"])
        anns = [coco.anns[i] for i in ann_ids]
        np.testing.assert_array_equal(row.boxes_abs, np.array(
            [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
             for a in anns], np.float32))
        np.testing.assert_array_equal(row.labels, [label_of[a["category_id"]] for a in anns])
        np.testing.assert_array_equal(row.is_crowd, [bool(a["iscrowd"]) for a in anns])
        masks = decode_masks(row.mask_rles, row.height, row.width)
        assert masks.shape == (len(anns), info["height"], info["width"]) and masks.dtype == np.uint8
        np.testing.assert_array_equal(masks, np.stack([coco.annToMask(a) for a in anns]))
        assert not row.ignore_exif_orientation
        decoded = decode_image(row.image_bytes, row.ignore_exif_orientation)
        np.testing.assert_array_equal(decoded, cv2.imread(os.path.join(image_dir, info["file_name"])))


def test_shards_and_info_file(converted):
    _, _, output_dir, _ = converted
    assert sorted(os.listdir(output_dir)) == ["train"]        # no temporary folder left
    files = sorted(os.listdir(os.path.join(output_dir, "train")))
    shards = [f"train.mindrecord{i}" for i in range(3)]
    assert files == sorted([INFO_FILE] + shards + [s + ".db" for s in shards])
    info = read_dataset_info(output_dir, "train")
    assert info["shard_files"] == shards and info["num_images"] == 2
    assert info["category_ids"] == [3, 7, 90] and info["class_names"] == ["car", "dog", "zebra"]
    assert info["source"] == {"note": "tiny"}
    assert ds.MindDataset(shard_paths(output_dir, "train")).get_dataset_size() == 2
    assert set(mindrecord_schema()) == set(ds.MindDataset(shard_paths(output_dir, "train")).get_col_names())


def test_keep_empty_writes_images_without_objects(tmp_path):
    ann_file, image_dir = write_tiny_coco(str(tmp_path))
    write(load_coco(ann_file, image_dir, keep_empty=True), tmp_path / "out", split="val")
    rows = read_rows(str(tmp_path / "out"), "val")
    assert sorted(rows) == [11, 12, 13, 14]
    assert shard_paths(str(tmp_path / "out"), "val") == [str(tmp_path / "out" / "val" / "val.mindrecord")]
    for image_id in (13, 14):
        row = rows[image_id]
        assert row.boxes_abs.shape == (0, 4) and row.labels.shape == (0,) and row.is_crowd.shape == (0,)
        assert decode_masks(row.mask_rles, row.height, row.width).shape == (0, 20, 24)
    assert len(rows[11].labels) == 3 and len(rows[12].labels) == 2


def test_existing_output_refused_unless_overwrite(tmp_path):
    ann_file, image_dir = write_tiny_coco(str(tmp_path))
    out = tmp_path / "out"
    write(load_coco(ann_file, image_dir), out)
    with pytest.raises(DatasetError, match=r"out/train: output already exists; pass --overwrite"):
        write(load_coco(ann_file, image_dir, keep_empty=True), out)
    assert sorted(read_rows(str(out), "train")) == [11, 12]
    write(load_coco(ann_file, image_dir, keep_empty=True), out, overwrite=True)
    assert sorted(read_rows(str(out), "train")) == [11, 12, 13, 14]
    assert sorted(os.listdir(out)) == ["train"]


def test_image_missing_during_write_leaves_no_output(tmp_path):
    ann_file, image_dir = write_tiny_coco(str(tmp_path))
    dataset = load_coco(ann_file, image_dir)
    os.remove(os.path.join(image_dir, "b.png"))
    out = tmp_path / "out"
    with pytest.raises(DatasetError) as caught:
        write(dataset, out, num_shards=2)
    assert str(caught.value) == (f"{os.path.join(image_dir, 'b.png')}: cannot read image file "
                                 f"(No such file or directory)")
    assert os.listdir(out) == []


class InterruptedRecords:
    """A record sequence whose third item raises KeyboardInterrupt, like Ctrl-C mid-write."""

    def __init__(self, records):
        self.records = records

    def __len__(self):
        return 3

    def __iter__(self):
        yield from self.records[:2]
        raise KeyboardInterrupt


def test_interrupt_keeps_previous_output_and_leaves_nothing_else(tmp_path):
    ann_file, image_dir = write_tiny_coco(str(tmp_path))
    dataset = load_coco(ann_file, image_dir)
    out = tmp_path / "out"
    write(dataset, out)
    with pytest.raises(KeyboardInterrupt):
        write_mindrecord(InterruptedRecords(dataset.images), str(out), "train", 2, True,
                         categories=dataset.categories, log=lambda line: None)
    assert sorted(os.listdir(out)) == ["train"]
    assert sorted(read_rows(str(out), "train")) == [11, 12]


def test_image_size_must_match_annotation(tmp_path):
    document = tiny_coco_document()
    document["images"][1]["width"] = 41                       # b.png is 40 wide
    document["annotations"][3]["segmentation"] = [[20, 6, 28, 14, 20, 22, 12, 14]]
    ann_file, image_dir = write_tiny_coco(str(tmp_path), document)
    with pytest.raises(DatasetError) as caught:
        write(load_coco(ann_file, image_dir), tmp_path / "out")
    assert str(caught.value) == (f"{os.path.join(image_dir, 'b.png')}: image is width 40, height 30 as "
                                 f"OpenCV loads it, but the annotation file gives 'width' 41, 'height' 30")
    assert os.listdir(tmp_path / "out") == []


def test_exif_orientation_reading_follows_the_annotation_size(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6                          # stored 24 wide x 20 high, displayed rotated by 90
    buffer = io.BytesIO()
    stored = np.zeros((20, 24, 3), np.uint8)
    stored[:, :12] = 255                      # left half white: after rotation, the top half
    Image.fromarray(stored).save(buffer, "JPEG", exif=exif.tobytes(), quality=100)
    document = tiny_coco_document()
    document["annotations"] = document["annotations"][:6] + [
        {"id": 109, "image_id": 14, "category_id": 3, "bbox": [1, 1, 5, 5],
         "segmentation": [[1, 1, 6, 1, 6, 6]]}]
    for (width, height), ignored, white in (((20, 24), False, (slice(0, 12), slice(None))),
                                            ((24, 20), True, (slice(None), slice(0, 12)))):
        document["images"][3].update(width=width, height=height)
        ann_file, image_dir = write_tiny_coco(str(tmp_path), document)
        with open(os.path.join(image_dir, "d.jpg"), "wb") as handle:
            handle.write(buffer.getvalue())
        write(load_coco(ann_file, image_dir), tmp_path / "out", overwrite=True)
        row = read_rows(str(tmp_path / "out"), "train")[14]
        assert (row.width, row.height, row.ignore_exif_orientation) == (width, height, ignored)
        image = decode_image(row.image_bytes, row.ignore_exif_orientation)
        assert image.shape == (height, width, 3)
        assert image[white].min() > 200 and image.mean() == pytest.approx(127.5, abs=3)
    document["images"][3].update(width=30, height=20)
    write_tiny_coco(str(tmp_path), document)
    with pytest.raises(DatasetError, match=r"d\.jpg: image is width 20, height 24 or width 24, height 20 "
                                           r"as OpenCV loads it, but the annotation file gives 'width' 30"):
        write(load_coco(ann_file, image_dir), tmp_path / "out", overwrite=True)


def test_unwritable_output_and_bad_arguments(tmp_path):
    ann_file, image_dir = write_tiny_coco(str(tmp_path))
    dataset = load_coco(ann_file, image_dir)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(DatasetError, match=r"a_file/out: output directory cannot be created or written "
                                           r"\(Not a directory\)"):
        write(dataset, blocker / "out")
    with pytest.raises(DatasetError, match=r"num_shards: expected 1\.\.1000, got 0"):
        write(dataset, tmp_path / "out", num_shards=0)
    with pytest.raises(DatasetError, match="no images to write"):
        write_mindrecord((), str(tmp_path / "out"), "train", 1, categories=dataset.categories)
    assert not os.path.exists(tmp_path / "out")


def test_progress_lines_give_count_rate_and_eta(tmp_path):
    ann_file, image_dir = write_tiny_coco(str(tmp_path))
    dataset = load_coco(ann_file, image_dir, keep_empty=True)
    lines = []
    write_mindrecord(dataset.images, str(tmp_path / "out"), "val", 1, categories=dataset.categories,
                     log=lines.append, log_every=3, log_seconds=1e9)
    assert len(lines) == 2
    assert lines[0].startswith("[val] 3/4 images (75.0%), ")
    assert lines[1].startswith("[val] 4/4 images (100.0%), ")
    assert " img/s, elapsed 0:00:0" in lines[0] and lines[1].endswith("ETA 0:00:00")


def run_cli(*args):
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2")
    return subprocess.run([sys.executable, os.path.join(REPO, "create_mindrecord.py"), *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_cli_converts_and_reports_errors_in_one_line(tmp_path):
    ann_file, image_dir = write_tiny_coco(str(tmp_path))
    out = str(tmp_path / "out")
    done = run_cli("--ann_file", ann_file, "--image_dir", image_dir, "--output_dir", out,
                   "--split", "val", "--num_shards", "2")
    assert done.returncode == 0, done.stderr
    assert "2/4 images kept" in done.stdout
    assert f"wrote 2 images to {os.path.join(out, 'val')}" in done.stdout
    assert len(shard_paths(out, "val")) == 2 and sorted(read_rows(out, "val")) == [11, 12]
    assert read_dataset_info(out, "val")["source"]["stats"]["degenerate_boxes_skipped"] == 2

    document = tiny_coco_document()
    document["annotations"][4]["category_id"] = 4
    bad_ann_file = str(tmp_path / "bad.json")
    with open(bad_ann_file, "w") as handle:
        json.dump(document, handle)
    failed = run_cli("--ann_file", bad_ann_file, "--image_dir", image_dir, "--output_dir", out,
                     "--split", "train")
    assert failed.returncode == 2
    assert failed.stderr.strip() == (f"create_mindrecord.py: error: {bad_ann_file}: annotations[4] (id 105): "
                                     f"'category_id' 4 is not a category id (known: [3, 7, 90])")
    assert sorted(os.listdir(out)) == ["val"]
