"""Faults on the data path, made for real: broken image files, many shards, damaged MindRecord
folders, signals while converting, folder permissions.

Bad input ends in exit code 2 and one line ``<script>: error: <file>: <what is wrong>`` with no
traceback; an interrupted conversion ends in 128 + the signal and one line; neither leaves a
file behind.
"""
import json
import os
import shutil
import signal
import stat
import subprocess
import sys

import cv2
import mindspore.dataset as ds
import numpy as np
import pytest

from src.data.coco import DatasetError, load_coco
from src.data.mindrecord import INFO_FILE, read_dataset_info, shard_paths
from tests.test_coco_parsing import write_tiny_coco
from tests.test_create_mindrecord import REPO, read_rows, run_cli, write


def convert(ann_file, image_dir, output_dir, *args):
    """create_mindrecord.py of the train split in a fresh process."""
    return run_cli("--ann_file", ann_file, "--image_dir", image_dir, "--output_dir", output_dir,
                   "--split", "train", *args)


def truncate_to_half(path):
    os.truncate(path, os.path.getsize(path) // 2)


def make_empty(path):
    os.truncate(path, 0)


def write_text(path):
    with open(path, "w") as handle:
        handle.write("<html>404 Not Found</html>\n")


@pytest.mark.parametrize("file_name, damage, problem", [
    ("a.jpg", truncate_to_half,
     "JPEG image file is truncated or corrupt: its data does not decode; expected a complete file"),
    ("b.png", truncate_to_half,
     "PNG image file is truncated or corrupt: its data does not decode; expected a complete file"),
    ("a.jpg", make_empty,
     "image file is empty (0 bytes); expected a JPEG, PNG, BMP, TIFF or WebP file"),
    ("b.png", write_text,
     "not a decodable image file; expected a JPEG, PNG, BMP, TIFF or WebP file"),
])
def test_broken_image_stops_the_conversion_in_one_line(tmp_path, file_name, damage, problem):
    ann_file, image_dir = write_tiny_coco(str(tmp_path))
    path = os.path.join(image_dir, file_name)
    damage(path)
    out = tmp_path / "out"
    result = convert(ann_file, image_dir, str(out))
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == f"create_mindrecord.py: error: {path}: {problem}"
    assert os.listdir(out) == []


@pytest.mark.parametrize("num_shards, first, last", [
    (1, "train.mindrecord", "train.mindrecord"), (2, "train.mindrecord0", "train.mindrecord1"),
    (11, "train.mindrecord00", "train.mindrecord10"), (12, "train.mindrecord00", "train.mindrecord11")])
def test_shards_are_listed_under_the_names_mindspore_writes(tmp_path, num_shards, first, last):
    ann_file, image_dir = write_tiny_coco(str(tmp_path))
    dataset = load_coco(ann_file, image_dir, keep_empty=True)
    write(dataset, tmp_path / "out", num_shards=num_shards)
    paths = shard_paths(str(tmp_path / "out"), "train")
    folder = str(tmp_path / "out" / "train")
    assert len(paths) == num_shards
    assert (os.path.basename(paths[0]), os.path.basename(paths[-1])) == (first, last)
    assert sorted(os.listdir(folder)) == sorted(
        [INFO_FILE] + [os.path.basename(p) + suffix for p in paths for suffix in ("", ".db")])
    assert ds.MindDataset(paths).get_dataset_size() == 4
    assert sorted(read_rows(str(tmp_path / "out"), "train")) == [11, 12, 13, 14]


@pytest.fixture(scope="module")
def two_shards(tmp_path_factory):
    """The tiny data set converted into 2 shards; the output folder (copy it before damaging)."""
    root = tmp_path_factory.mktemp("two_shards")
    ann_file, image_dir = write_tiny_coco(str(root))
    write(load_coco(ann_file, image_dir), root / "out", num_shards=2)
    return str(root / "out")


def damaged_copy(source, target, damage):
    """A copy of the converted folder ``source`` at ``target``, with ``damage(train folder)``
    applied; returns the path of the damaged file and the expected message after it."""
    shutil.copytree(source, target)
    return damage(os.path.join(target, "train"))


def remove_db(folder):
    path = os.path.join(folder, "train.mindrecord1.db")
    os.remove(path)
    return path, ("MindRecord file missing or unreadable (No such file or directory); "
                  "convert the split again with create_mindrecord.py --overwrite")


def truncate_shard(folder):
    path = os.path.join(folder, "train.mindrecord0")
    written = os.path.getsize(path)
    truncate_to_half(path)
    return path, (f"{written // 2} bytes, but {written} were written (truncated or changed "
                  f"since); convert the split again with create_mindrecord.py --overwrite")


@pytest.mark.parametrize("damage", [remove_db, truncate_shard])
def test_damaged_split_is_one_error_naming_the_file(two_shards, tmp_path, damage):
    out = str(tmp_path / "out")
    path, problem = damaged_copy(two_shards, out, damage)
    for read in (read_dataset_info, shard_paths):
        with pytest.raises(DatasetError) as caught:
            read(out, "train")
        assert str(caught.value) == f"{path}: {problem}"


def test_train_py_on_a_damaged_split_exits_2_in_one_line(two_shards, tmp_path):
    out = str(tmp_path / "out")
    path, problem = damaged_copy(two_shards, out, truncate_shard)
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "train.py"), "--config", "yolact_plus_demo",
         "--mindrecord_dir", out, "--output_dir", str(tmp_path / "run"), "--batch_size", "2"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("train.py: error:")] == [
        f"train.py: error: {path}: {problem}"]
    assert not os.path.exists(tmp_path / "run")


def test_split_written_before_sizes_were_recorded_still_loads(two_shards, tmp_path):
    out = str(tmp_path / "out")
    shutil.copytree(two_shards, out)
    info_path = os.path.join(out, "train", INFO_FILE)
    with open(info_path) as handle:
        info = json.load(handle)
    del info["file_sizes"]
    with open(info_path, "w") as handle:
        json.dump(info, handle)
    assert sorted(read_rows(out, "train")) == [11, 12]
    remove_db(os.path.join(out, "train"))
    with pytest.raises(DatasetError, match="missing or unreadable"):
        shard_paths(out, "train")


def write_many_images(root, count, side=800):
    """A COCO-format data set of ``count`` copies of one ``side`` x ``side`` JPEG, one object
    each: it takes seconds to convert. Returns (ann_file, image_dir)."""
    image_dir = os.path.join(root, "images")
    os.makedirs(image_dir)
    y, x = np.mgrid[0:side, 0:side]
    image = np.stack([x % 256, y % 256, (x + y) // 7 % 256], axis=-1).astype(np.uint8)
    # Small files (13 KB), but decoding each still takes about a millisecond.
    encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 20])[1].tobytes()
    names = [f"{index:05d}.jpg" for index in range(count)]
    for name in names:
        with open(os.path.join(image_dir, name), "wb") as handle:
            handle.write(encoded)
    document = {
        "images": [{"id": i, "file_name": name, "width": side, "height": side}
                   for i, name in enumerate(names, start=1)],
        "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [10, 10, 100, 100],
                         "segmentation": [[10, 10, 110, 10, 110, 110, 10, 110]]}
                        for i in range(1, count + 1)],
        "categories": [{"id": 1, "name": "thing"}]}
    ann_file = os.path.join(root, "annotations.json")
    with open(ann_file, "w") as handle:
        json.dump(document, handle)
    return ann_file, image_dir


@pytest.fixture(scope="module")
def many_images(tmp_path_factory):
    """2000 images (progress is logged at 1000) and a split converted from the tiny data set."""
    root = tmp_path_factory.mktemp("many")
    ann_file, image_dir = write_many_images(str(root), 2000)
    tiny_ann_file, tiny_image_dir = write_tiny_coco(str(root / "tiny"))
    write(load_coco(tiny_ann_file, tiny_image_dir), root / "existing", num_shards=2)
    return ann_file, image_dir, str(root / "existing")


@pytest.mark.parametrize("signum, overwrite", [(signal.SIGTERM, False), (signal.SIGINT, True)])
def test_signal_while_writing_leaves_nothing_behind(many_images, tmp_path, signum, overwrite):
    ann_file, image_dir, existing = many_images
    out = str(tmp_path / "out")
    if overwrite:
        shutil.copytree(existing, out)
    process = subprocess.Popen(
        [sys.executable, os.path.join(REPO, "create_mindrecord.py"), "--ann_file", ann_file,
         "--image_dir", image_dir, "--output_dir", out, "--split", "train"]
        + ["--overwrite"] * overwrite,
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in process.stdout:
            if line.startswith("[train] 1000/2000 images"):
                assert any(name.startswith(".train.partial-") for name in os.listdir(out))
                process.send_signal(signum)
                break
        stderr = process.communicate(timeout=120)[1]
    finally:
        process.kill()
    assert process.returncode == 128 + signum, stderr
    assert stderr.strip() == (f"create_mindrecord.py: interrupted by {signal.Signals(signum).name}; "
                              f"no output written")
    assert os.listdir(out) == (["train"] if overwrite else [])
    if overwrite:
        assert sorted(read_rows(out, "train")) == [11, 12]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o755), (0o027, 0o750)])
def test_output_folders_follow_the_umask(tmp_path, umask, mode):
    ann_file, image_dir = write_tiny_coco(str(tmp_path))
    out = tmp_path / "out"
    previous = os.umask(umask)
    try:
        write(load_coco(ann_file, image_dir), out)
    finally:
        os.umask(previous)
    for folder in (out, out / "train"):
        assert stat.S_IMODE(os.stat(folder).st_mode) == mode
