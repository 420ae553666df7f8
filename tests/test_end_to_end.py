"""The user's path, every step a subprocess of the real CLI: synthetic COCO set ->
create_mindrecord.py (train, val) -> train.py (3 iterations) -> eval.py --ckpt -> export.py
MINDIR -> eval.py --mindir, both evaluations on the val MindRecord split.

The model is ``tests.conftest.tiny_config`` with the synthetic set's six classes (category ids
1, 3, ..., 11, non-contiguous). Each CLI run compiles its own graph (train step, inference
net, export + verify, MINDIR load): the chain runs once per module and the tests read its
outputs.
"""
import json
import os
import re
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from src.data.classes import SHAPE_CLASSES
from src.data.synthetic import CATEGORY_IDS, generate_dataset
from src.checkpoint import list_checkpoints
from tests.conftest import tiny_config
from tests.test_eval_cli import decode_rle, run_eval_py
from tests.test_export import run_export
from tests.test_train import read_state, run_train_py, scalar, write_config_yaml

# Slow: trains, evaluates and exports a tiny model in subprocesses.
pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_TRAIN, NUM_VAL = 6, 3
MAX_ITER = 3
# Pixels a re-encoded soft mask may flip at the 0.5 threshold when the MINDIR's floats differ
# from the checkpoint graph's by rounding noise (<= 1e-5, export.py's verify tolerance).
MAX_MASK_PIXELS_DIFFERENT = 3
# "box   " / "mask  " then AP, AP50, AP75, APs, APm, APl in percent ("-": no ground truth).
TABLE_ROW = re.compile(r"^(box|mask) +((?:\s+(?:\d+\.\d\d|-)){6})$", re.MULTILINE)


def run_create_mindrecord(cwd, *args):
    return subprocess.run([sys.executable, os.path.join(REPO, "create_mindrecord.py"), *args],
                          cwd=cwd, capture_output=True, text=True, timeout=300)


def printed_ap_rows(stdout):
    """{"box": [6 cells], "mask": [6 cells]} of the table eval.py prints (cells as printed)."""
    rows = {name: cells.split() for name, cells in TABLE_ROW.findall(stdout)}
    assert sorted(rows) == ["box", "mask"], stdout[-3000:]
    return rows


def load_results(prefix):
    with open(f"{prefix}_bbox.json") as bbox, open(f"{prefix}_segm.json") as segm:
        return json.load(bbox), json.load(segm)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    root = tmp_path_factory.mktemp("end_to_end")
    run = SimpleNamespace(root=root)
    paths = generate_dataset(str(root / "synthetic"), num_train=NUM_TRAIN, num_val=NUM_VAL,
                             image_size=96, seed=0)
    run.val_annotations = paths["val_annotations"]
    run.mindrecord = str(root / "mindrecord")
    run.converted = {split: run_create_mindrecord(
        root, "--ann_file", paths[f"{split}_annotations"], "--image_dir", paths[f"{split}_images"],
        "--output_dir", run.mindrecord, "--split", split, "--num_shards", "1")
        for split in ("train", "val")}
    for split, proc in run.converted.items():
        assert proc.returncode == 0, f"create_mindrecord.py {split}: {proc.stderr[-2000:]}"

    run.config = tiny_config(num_classes=len(SHAPE_CLASSES) + 1,
                             **{"data.class_names": SHAPE_CLASSES})
    run.yaml = write_config_yaml(root / "tiny_shapes.yaml", run.config)
    run.output_dir = str(root / "train_out")
    run.trained = run_train_py(["--config", run.yaml, "--mindrecord_dir", run.mindrecord,
                                "--batch_size", "2", "--stop_iter", str(MAX_ITER),
                                "--save_every", str(MAX_ITER), "--log_every", "1",
                                "--num_workers", "1", "--output_dir", run.output_dir],
                               timeout=600)
    assert run.trained.returncode == 0, run.trained.stderr[-3000:]
    run.checkpoints = list_checkpoints(run.output_dir, run.config.name)
    assert run.checkpoints, os.listdir(run.output_dir)
    run.ckpt = run.checkpoints[-1]

    evaluation = ["--config", run.yaml, "--ann_file", run.val_annotations,
                  "--mindrecord_dir", run.mindrecord, "--split", "val"]
    run.ckpt_prefix = str(root / "from_ckpt")
    run.ckpt_eval = run_eval_py(root, "--ckpt", run.ckpt, *evaluation,
                                "--output_json", run.ckpt_prefix)
    assert run.ckpt_eval.returncode == 0, run.ckpt_eval.stderr[-3000:]

    run.mindir = str(root / "tiny_shapes.mindir")
    run.exported = run_export(root, "--config", run.yaml, "--ckpt", run.ckpt,
                              "--file_format", "MINDIR", "--file_name", str(root / "tiny_shapes"))
    assert run.exported.returncode == 0, run.exported.stderr[-3000:]

    run.mindir_prefix = str(root / "from_mindir")
    run.mindir_eval = run_eval_py(root, "--mindir", run.mindir, *evaluation,
                                  "--output_json", run.mindir_prefix)
    assert run.mindir_eval.returncode == 0, run.mindir_eval.stderr[-3000:]
    return run


def test_mindrecord_holds_both_splits(chain):
    for split, count in (("train", NUM_TRAIN), ("val", NUM_VAL)):
        with open(os.path.join(chain.mindrecord, split, "dataset_info.json")) as handle:
            info = json.load(handle)
        # Synthetic images hold 1-6 shapes: none is dropped as empty.
        assert info["num_images"] == count, info
        assert chain.converted[split].stdout.strip().endswith(
            f"wrote {count} images to {os.path.join(chain.mindrecord, split)}")


def test_training_saved_the_checkpoint_of_its_last_iteration(chain):
    assert chain.checkpoints == [os.path.join(chain.output_dir,
                                              f"{chain.config.name}_{MAX_ITER}.ckpt")]
    state = read_state(chain.ckpt)
    assert scalar(state["iteration"]) == MAX_ITER and scalar(state["global_step"]) == MAX_ITER
    assert all(np.isfinite(value).all() for value in state.values())
    assert f"done; last checkpoint: {chain.ckpt}" in chain.trained.stdout


def test_export_wrote_the_mindir(chain):
    assert chain.exported.stdout.strip().splitlines()[-1] == f"exported {chain.mindir}"
    assert os.path.isfile(chain.mindir)


def test_both_evaluations_print_box_and_mask_ap(chain):
    for proc, prefix in ((chain.ckpt_eval, chain.ckpt_prefix),
                         (chain.mindir_eval, chain.mindir_prefix)):
        rows = printed_ap_rows(proc.stdout)
        for cells in rows.values():
            assert all(cell == "-" or 0.0 <= float(cell) <= 100.0 for cell in cells), rows
        # AP over IoU 0.5:0.95 never exceeds AP at IoU 0.5.
        for cells in rows.values():
            assert float(cells[0]) <= float(cells[1])
        for kind in ("bbox", "segm"):
            assert f"wrote {kind} results to {prefix}_{kind}.json" in proc.stdout


def test_checkpoint_and_mindir_evaluations_agree(chain):
    assert printed_ap_rows(chain.ckpt_eval.stdout) == printed_ap_rows(chain.mindir_eval.stdout)

    ckpt_bbox, ckpt_segm = load_results(chain.ckpt_prefix)
    mindir_bbox, mindir_segm = load_results(chain.mindir_prefix)
    # An untrained head gives every class ~1/7 > the 0.05 score threshold: many detections.
    assert len(ckpt_bbox) == len(ckpt_segm) == len(mindir_bbox) == len(mindir_segm) > NUM_VAL
    with open(chain.val_annotations) as handle:
        val_sizes = {image["id"]: [image["height"], image["width"]]
                     for image in json.load(handle)["images"]}
    assert {entry["image_id"] for entry in ckpt_bbox} == set(val_sizes)

    # Labels 0..5 map to 1, 3, ..., 11: an off-by-one or contiguous map gives even ids.
    assert {entry["category_id"] for entry in ckpt_bbox + ckpt_segm} == set(CATEGORY_IDS)

    def identity(entry):
        return entry["image_id"], entry["category_id"]

    for mine, theirs in zip(mindir_bbox, ckpt_bbox):
        assert identity(mine) == identity(theirs)
        np.testing.assert_allclose(mine["bbox"], theirs["bbox"], rtol=0, atol=1e-4)
        np.testing.assert_allclose(mine["score"], theirs["score"], rtol=0, atol=1e-4)
    for mine, theirs, box in zip(mindir_segm, ckpt_segm, ckpt_bbox):
        assert identity(mine) == identity(theirs) == identity(box)
        np.testing.assert_allclose(mine["score"], theirs["score"], rtol=0, atol=1e-4)
        # Full-size masks of the original image, not the network's 256 x 256 input.
        assert mine["segmentation"]["size"] == theirs["segmentation"]["size"] \
            == val_sizes[mine["image_id"]]
        different = decode_rle(mine["segmentation"]) != decode_rle(theirs["segmentation"])
        assert np.count_nonzero(different) <= MAX_MASK_PIXELS_DIFFERENT
