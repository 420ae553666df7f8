"""Bad input to the Detector API and to eval.py's COCO evaluation is refused before anything is
detected: wrong image arrays, a MindRecord split or class list that is not the annotation
file's, missing image files, an unwritable results place.

Real files throughout: a tiny synthetic data set (two train and three val images of random
sizes) converted to MindRecord, a checkpoint of the tiny model, eval.py in subprocesses. No
graph is compiled: every error must come first, which is what keeps these tests fast.
"""
import os
import shutil
from types import SimpleNamespace

import numpy as np
import pytest

from src.data.classes import SHAPE_CLASSES
from src.data.coco import DatasetError, load_coco
from src.data.mindrecord import write_mindrecord
from src.data.synthetic import CATEGORY_IDS, generate_dataset
from src.evaluation.evaluate import prepare_coco_evaluation
from src.inference import Detector
from src.inference.annotate import MediaError
from tests.conftest import read_json, save_detecting_checkpoint, tiny_config, write_json
from tests.test_eval_cli import run_eval_py
from tests.test_train import write_config_yaml

NUM_TRAIN, NUM_VAL = 2, 3


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The synthetic set (its two splits converted to MindRecord), the tiny shapes config as
    YAML with its checkpoint, and a config YAML whose class names are in another order."""
    root = tmp_path_factory.mktemp("faults_eval")
    files = SimpleNamespace(root=root)
    paths = generate_dataset(str(root / "synthetic"), num_train=NUM_TRAIN, num_val=NUM_VAL,
                             image_size=64, seed=0)
    files.val_json, files.val_images = paths["val_annotations"], paths["val_images"]
    files.train_json = paths["train_annotations"]
    files.mindrecord = str(root / "mindrecord")
    for split in ("train", "val"):
        parsed = load_coco(paths[f"{split}_annotations"], paths[f"{split}_images"])
        write_mindrecord(parsed.images, files.mindrecord, split, num_shards=1,
                         categories=parsed.categories, log=lambda line: None)
    files.config = tiny_config(num_classes=len(SHAPE_CLASSES) + 1,
                               **{"data.class_names": SHAPE_CLASSES})
    files.yaml = write_config_yaml(root / "shapes.yaml", files.config)
    files.reversed_yaml = write_config_yaml(root / "reversed.yaml", tiny_config(
        num_classes=len(SHAPE_CLASSES) + 1, **{"data.class_names": SHAPE_CLASSES[::-1]}))
    files.ckpt = save_detecting_checkpoint(files.config, str(root / "shapes.ckpt"))
    return files


def image_sizes(ann_file):
    """{image id: (height, width)} of an annotation file."""
    return {image["id"]: (image["height"], image["width"])
            for image in read_json(ann_file)["images"]}


def assert_refused(proc, message):
    """eval.py ended with exit code 2 and its only stderr line starts with ``message``: no
    traceback, and no progress line (nothing was detected)."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"eval.py: error: {message}"), proc.stderr


def evaluate_cli(data, *args, config=None):
    return run_eval_py(data.root, "--config", config or data.yaml, "--ckpt", data.ckpt,
                       "--ann_file", *args)


# 1, 5: the Detector takes [H, W, 3] uint8 BGR and nothing else.

@pytest.fixture(scope="module")
def detector(data):
    return Detector(config=data.config, ckpt=data.ckpt, device_target="CPU")


IMAGE = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
BAD_IMAGES = {
    "float in [0, 1]": (IMAGE / 255.0, r"got dtype float64 \(shape \(40, 50, 3\)\)"),
    "uint16": (IMAGE.astype(np.uint16) * 257, "got dtype uint16"),
    "bool": (IMAGE > 127, "got dtype bool"),
    "empty": (np.zeros((0, 0, 3), np.uint8), r"got shape \(0, 0, 3\)"),
    "grey": (IMAGE[:, :, 0], r"got shape \(40, 50\)"),
    "BGRA": (np.dstack([IMAGE, IMAGE[:, :, :1]]), r"got shape \(40, 50, 4\)"),
    "list": (IMAGE.tolist(), "got list"),
    "file name": ("dog.jpg", "got str"),
}
EXPECTED_IMAGE = r"expected a numpy \[H, W, 3\] uint8 BGR array with H, W >= 1"


@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
def test_detector_refuses_what_is_not_a_uint8_bgr_image(detector, case):
    image, given = BAD_IMAGES[case]
    with pytest.raises(ValueError, match=f"^image 0: {EXPECTED_IMAGE}.*, {given}"):
        detector(image)


def test_detect_batch_names_the_bad_image_and_wants_a_list(data):
    two = Detector(config=data.config, ckpt=data.ckpt, batch_size=2)
    with pytest.raises(ValueError, match=f"^image 1: {EXPECTED_IMAGE}.*, got dtype float32"):
        two.detect_batch([IMAGE, IMAGE.astype(np.float32)])
    with pytest.raises(ValueError, match="^images: expected a list of 1 to 2 .*, got ndarray$"):
        two.detect_batch(np.stack([IMAGE, IMAGE]))
    with pytest.raises(ValueError, match="^images: expected 1 to 2 images, got 3$"):
        two.detect_batch([IMAGE] * 3)


# 2: a MindRecord split must hold the annotation file's images and categories.

def test_split_without_some_annotated_images_is_refused(data):
    missing = sorted(set(image_sizes(data.val_json)) - set(image_sizes(data.train_json)))
    assert missing
    proc = evaluate_cli(data, data.val_json, "--mindrecord_dir", data.mindrecord,
                        "--split", "train")
    assert_refused(proc, f"{data.val_json}: {len(missing)} of the {NUM_VAL} evaluated images "
                         f"are not in split 'train' of {data.mindrecord}, e.g. image id "
                         f"{missing[0]}; expected the split converted from this file")


def test_split_of_other_images_with_the_same_ids_is_refused(data):
    # The train images 1 and 2 share the val images' ids but not their (random) sizes.
    val, train = image_sizes(data.val_json), image_sizes(data.train_json)
    assert val[1] != train[1] and val[2] != train[2]
    proc = evaluate_cli(data, data.val_json, "--mindrecord_dir", data.mindrecord,
                        "--split", "train", "--max_images", str(NUM_TRAIN))
    assert_refused(proc, f"{data.val_json}: image id 1 is {val[1][0]}x{val[1][1]} (height x "
                         f"width) there but {train[1][0]}x{train[1][1]} in split 'train' of "
                         f"{data.mindrecord} (2 of the 2 evaluated images differ)")


def test_annotation_categories_other_than_the_splits_are_refused(data):
    document = read_json(data.val_json)
    document["categories"][4]["name"] = "pentagram"
    renamed = write_json(data.root / "renamed_star.json", document)
    proc = evaluate_cli(data, renamed, "--mindrecord_dir", data.mindrecord, "--split", "val")
    star = CATEGORY_IDS[SHAPE_CLASSES.index("star")]
    assert_refused(proc, f"{renamed}: categories differ from split 'val' of {data.mindrecord} "
                         f"(dataset_info.json): label 4 is category {star} 'pentagram' in the "
                         f"annotation file but category {star} 'star' in the split")


def test_config_class_names_other_than_the_splits_are_refused(data):
    proc = evaluate_cli(data, data.val_json, "--mindrecord_dir", data.mindrecord,
                        "--split", "val", config=data.reversed_yaml)
    info = os.path.join(data.mindrecord, "val", "dataset_info.json")
    assert_refused(proc, f"{info}: class names differ from the config's: label 0 is 'circle' in "
                         f"split 'val' but 'ring' in the config")


def test_split_that_records_no_class_names_is_refused(data):
    copy = data.root / "no_class_names"
    shutil.copytree(os.path.join(data.mindrecord, "val"), copy / "val")
    info = read_json(copy / "val" / "dataset_info.json")
    del info["class_names"]
    write_json(copy / "val" / "dataset_info.json", info)
    with pytest.raises(DatasetError, match=f"^{copy}/val/dataset_info.json: no 'class_names' "
                                           f"field; re-create split 'val'"):
        prepare_coco_evaluation(data.val_json, SHAPE_CLASSES, mindrecord_dir=str(copy))
    with pytest.raises(ValueError, match="give the folder of its images or a MindRecord split"):
        prepare_coco_evaluation(data.val_json, SHAPE_CLASSES)


def test_matching_split_and_folder_give_the_annotated_images(data):
    sizes = image_sizes(data.val_json)
    from_split = prepare_coco_evaluation(data.val_json, SHAPE_CLASSES,
                                         mindrecord_dir=data.mindrecord, split="val")
    from_folder = prepare_coco_evaluation(data.val_json, SHAPE_CLASSES,
                                          image_dir=data.val_images)
    for evaluation in (from_split, from_folder):
        assert evaluation.image_ids == tuple(sorted(sizes))
        read = {image_id: image.shape for image_id, image in evaluation.images}
        assert read == {i: (*size, 3) for i, size in sizes.items()}


# 3: the results json must be writable before anything is detected.

def test_unwritable_output_json_is_refused_first(data):
    # /sys refuses new entries even to root, who ignores permission bits.
    proc = evaluate_cli(data, data.val_json, "--image_dir", data.val_images,
                        "--output_json", "/sys/results")
    assert_refused(proc, "/sys: output folder for --output_json /sys/results is not writable "
                         "(Permission denied)")


def test_output_json_under_a_file_or_onto_a_folder_is_refused(data, tmp_path):
    (tmp_path / "run_segm.json").mkdir()
    (tmp_path / "notes.txt").write_text("a file, not a folder\n")
    with pytest.raises(MediaError, match=f"^{tmp_path}/run_segm.json: is a folder; "):
        prepare_coco_evaluation(data.val_json, SHAPE_CLASSES, image_dir=data.val_images,
                                output_json=str(tmp_path / "run"))
    with pytest.raises(MediaError, match=f"^{tmp_path}/notes.txt: cannot create the output folder"):
        prepare_coco_evaluation(data.val_json, SHAPE_CLASSES, image_dir=data.val_images,
                                output_json=str(tmp_path / "notes.txt" / "run"))
    created = tmp_path / "new" / "deeper"
    prepare_coco_evaluation(data.val_json, SHAPE_CLASSES, image_dir=data.val_images,
                            output_json=str(created / "run"))
    assert created.is_dir() and os.listdir(created) == []


# 4: every evaluated image must be a file before the first is detected.

def test_missing_images_are_counted_before_detecting(data):
    folder = data.root / "two_missing"
    shutil.copytree(data.val_images, folder)
    names = sorted(os.listdir(folder))
    os.remove(folder / names[1])
    os.remove(folder / names[2])
    proc = evaluate_cli(data, data.val_json, "--image_dir", str(folder))
    assert_refused(proc, f"{folder / names[1]}: image not found; 2 of the {NUM_VAL} evaluated "
                         f"images are missing from {folder}")


def test_a_folder_in_place_of_an_image_is_refused(data):
    folder = data.root / "folder_in_place"
    shutil.copytree(data.val_images, folder)
    name = sorted(os.listdir(folder))[0]
    os.remove(folder / name)
    (folder / name).mkdir()
    with pytest.raises(DatasetError, match=f"^{folder / name}: image is not a file; 1 of the "):
        prepare_coco_evaluation(data.val_json, SHAPE_CLASSES, image_dir=str(folder))
