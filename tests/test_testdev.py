"""A split without annotations (COCO test-dev's image-info file): every image is detected and
the results are zipped under COCO's upload names instead of being scored.

The image-info file is the synthetic val split's annotation file without its "annotations"
(as ``image_info_test-dev2017.json`` is ``instances_val2017.json``'s images and categories).
The eval.py run uses the tiny model with ``save_detecting_checkpoint`` weights, which detect
in every image.
"""
import json
import os
import zipfile
from types import SimpleNamespace

import pytest

from src.data.classes import SHAPE_CLASSES
from src.data.synthetic import generate_dataset
from src.evaluation.evaluate import load_ground_truth, prepare_coco_evaluation
from src.evaluation.testdev import (is_image_info, upload_paths, upload_testset,
                                    write_upload_zips)
from tests.conftest import read_json, save_detecting_checkpoint, tiny_config, write_json
from tests.test_eval_cli import run_eval_py
from tests.test_train import write_config_yaml

NUM_VAL = 4


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The synthetic val split, its image-info file (no "annotations" key) and an instances
    file whose first image lost its annotations."""
    root = tmp_path_factory.mktemp("testdev")
    paths = generate_dataset(str(root / "synthetic"), num_train=1, num_val=NUM_VAL,
                             image_size=64, seed=0)
    files = SimpleNamespace(root=root, images=paths["val_images"])
    instances = read_json(paths["val_annotations"])
    files.image_ids = sorted(image["id"] for image in instances["images"])
    image_info = {key: value for key, value in instances.items() if key != "annotations"}
    files.image_info = write_json(root / "image_info_test-dev2017.json", image_info)
    files.empty_list = write_json(root / "image_info_empty.json",
                                  dict(image_info, annotations=[]))
    first = files.image_ids[0]
    files.one_unannotated = write_json(root / "instances_partial.json", dict(
        instances, annotations=[a for a in instances["annotations"] if a["image_id"] != first]))
    return files


def test_image_info_file_is_recognised(data):
    for path, expected in ((data.image_info, True), (data.empty_list, True),
                           (data.one_unannotated, False)):
        coco_gt, _ = load_ground_truth(path, len(SHAPE_CLASSES))
        assert is_image_info(coco_gt) is expected, path


def test_every_image_of_an_image_info_file_is_evaluated(data, tmp_path):
    for path in (data.image_info, data.empty_list):
        evaluation = prepare_coco_evaluation(path, SHAPE_CLASSES, image_dir=data.images,
                                             output_json=str(tmp_path / "run"),
                                             algorithm="yolact_plus_resnet50")
        assert evaluation.image_ids == tuple(data.image_ids)
        testset = os.path.splitext(os.path.basename(path))[0][len("image_info_"):]
        assert evaluation.upload == {
            kind: str(tmp_path / f"detections_{testset}_yolact-plus-resnet50-{kind}_results.zip")
            for kind in ("bbox", "segm")}
    # With annotations, an image without any is skipped, as before, and nothing is uploaded.
    evaluation = prepare_coco_evaluation(data.one_unannotated, SHAPE_CLASSES,
                                         image_dir=data.images)
    assert evaluation.image_ids == tuple(data.image_ids[1:])
    assert evaluation.upload is None and evaluation.output_json == ""


def test_default_results_place_is_eval_results(data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evaluation = prepare_coco_evaluation(data.image_info, SHAPE_CLASSES, image_dir=data.images,
                                         algorithm="a_b")
    assert evaluation.output_json == os.path.join("eval_results", "image_info_test-dev2017")
    assert evaluation.upload["segm"] == os.path.join(
        "eval_results", "detections_test-dev2017_a-b-segm_results.zip")
    assert (tmp_path / "eval_results").is_dir()


def test_a_benchmark_of_an_image_info_file_makes_no_results_folder(data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evaluation = prepare_coco_evaluation(data.image_info, SHAPE_CLASSES, image_dir=data.images,
                                         benchmark=True)
    assert evaluation.output_json == "" and len(evaluation.image_ids) == NUM_VAL
    assert os.listdir(tmp_path) == []


def test_upload_names_follow_cocos_pattern():
    assert upload_testset("annotations/image_info_test-dev2017.json") == "test-dev2017"
    assert upload_testset("/data/image_info_test2017.json") == "test2017"
    assert upload_testset("my_split.json") == "my_split"
    assert upload_paths("out", "test-dev2017", "yolact_plus_resnet50") == {
        "bbox": os.path.join("out", "detections_test-dev2017_yolact-plus-resnet50-bbox_results.zip"),
        "segm": os.path.join("out", "detections_test-dev2017_yolact-plus-resnet50-segm_results.zip")}


def test_each_zip_holds_its_json_at_the_root(tmp_path):
    results = {"bbox": write_json(tmp_path / "r_bbox.json", [{"image_id": 1, "score": 0.5}]),
               "segm": write_json(tmp_path / "r_segm.json", [{"image_id": 2, "score": 0.25}])}
    paths = write_upload_zips(results, upload_paths(str(tmp_path), "test-dev2017", "alg"))
    for kind, path in paths.items():
        with zipfile.ZipFile(path) as archive:
            assert archive.namelist() == [f"detections_test-dev2017_alg-{kind}_results.json"]
            assert json.loads(archive.read(archive.namelist()[0])) == read_json(results[kind])
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["r_bbox.json", "r_segm.json"] + [os.path.basename(p) for p in paths.values()])


@pytest.mark.slow
def test_eval_py_writes_the_upload_and_scores_nothing(data):
    """eval.py on the image-info file: exit 0, every image in both result lists, the zips hold
    exactly the written results, no COCOeval printout, the server named."""
    config = tiny_config(num_classes=len(SHAPE_CLASSES) + 1,
                         **{"data.class_names": SHAPE_CLASSES})
    yaml = write_config_yaml(data.root / "shapes.yaml", config)
    ckpt = save_detecting_checkpoint(config, str(data.root / "shapes.ckpt"))
    prefix = str(data.root / "out" / "testdev")
    proc = run_eval_py(data.root, "--config", yaml, "--ckpt", ckpt, "--ann_file", data.image_info,
                       "--image_dir", data.images, "--output_json", prefix)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Average Precision" not in proc.stdout
    assert "upload each zip to the COCO evaluation server (https://cocodataset.org/#upload)" \
        in proc.stdout
    alg = config.name.replace("_", "-")
    for kind in ("bbox", "segm"):
        entries = read_json(f"{prefix}_{kind}.json")
        assert sorted({entry["image_id"] for entry in entries}) == data.image_ids
        assert all(("bbox" in entry) == (kind == "bbox") for entry in entries)
        assert all(("segmentation" in entry) == (kind == "segm") for entry in entries)
        name = f"detections_test-dev2017_{alg}-{kind}_results"
        with zipfile.ZipFile(data.root / "out" / f"{name}.zip") as archive:
            assert archive.namelist() == [f"{name}.json"]
            assert json.loads(archive.read(f"{name}.json")) == entries
