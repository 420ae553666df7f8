"""``eval.py --distribute``: images sharded over ranks, rank 0 gathers and evaluates once; the
launcher ``scripts/run_eval.sh`` with a device count; DEVICE_ID checked by eval.py.

The AP comparison runs the tiny YOLACT++ (``save_detecting_checkpoint`` weights) on five
synthetic images, once in one process and once as 2 msrun workers on the CPU. Its ground truth
is made from the model's own top detections, so that the AP is neither 0 nor 1 and every
detection's rank matters: equal AP dicts then mean equal entries, not two zeros.
"""
import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from src.data.classes import SHAPE_CLASSES
from src.data.synthetic import generate_dataset
from src.evaluation.coco_eval import CocoEvaluator
from src.evaluation.evaluate import prepare_coco_evaluation
from src.evaluation.sharding import check_launcher, gather, hand_over, plan_shard
from tests.conftest import read_json, save_detecting_checkpoint, tiny_config, write_json
from tests.test_distributed import MSRUN, VENV_BIN, free_port, tail
from tests.test_eval_cli import run_eval_py
from tests.test_train import write_config_yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_VAL = 5         # shards of 3 and 2 images
TOP_PER_IMAGE = 3   # pseudo ground truth: the model's top detections per image

DRIVER = textwrap.dedent("""\
    import importlib.util, json, sys
    sys.path.insert(0, {repo!r})
    spec = importlib.util.spec_from_file_location("eval_script", {script!r})
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    metrics = script.run(script.parse_args(sys.argv[2:]))
    if metrics is not None:
        with open(sys.argv[1], "w") as stream:
            json.dump(metrics, stream)
    """)


# Sharding and gathering, without a model.

def fake_entries(image_id, count):
    """``count`` bbox and segm entries of one image, told apart by their scores."""
    bbox = [{"image_id": image_id, "category_id": 1, "bbox": [0, 0, 1, 1],
             "score": image_id + k / 10} for k in range(count)]
    segm = [{"image_id": image_id, "category_id": 1, "score": image_id + k / 10,
             "segmentation": {"size": [2, 2], "counts": "04"}} for k in range(count)]
    return bbox, segm


def detected(image_ids, counts):
    evaluator = CocoEvaluator([1])
    for image_id in image_ids:
        evaluator.add_entries(image_id, *fake_entries(image_id, counts[image_id]))
    return evaluator


IMAGE_IDS = (3, 5, 8, 13, 21)
COUNTS = {3: 2, 5: 0, 8: 1, 13: 3, 21: 2}


def test_ranks_take_every_other_image_and_rank_0_merges_them_in_order(tmp_path):
    prefix = str(tmp_path / "run")
    shards = [plan_shard(rank, 2, IMAGE_IDS, prefix) for rank in (0, 1)]
    assert [shard.own_image_ids for shard in shards] == [(3, 8, 21), (5, 13)]
    # Rank 1 detects its images in another order (a MindRecord split's).
    rank1 = detected((13, 5), COUNTS)
    assert hand_over(rank1, shards[1]) == os.path.join(shards[1].folder, "rank_1.json")
    merged = gather(detected((3, 8, 21), COUNTS), shards[0], wait_seconds=1)
    one_device = detected(IMAGE_IDS, COUNTS)
    assert merged.image_ids == list(IMAGE_IDS)
    assert merged.results == one_device.results
    assert not os.path.exists(shards[0].folder)


def test_a_missing_rank_is_named_after_the_wait(tmp_path):
    shard = plan_shard(0, 3, IMAGE_IDS, str(tmp_path / "run"))
    hand_over(detected((5, 21), COUNTS), plan_shard(1, 3, IMAGE_IDS, str(tmp_path / "run")))
    with pytest.raises(ValueError, match=r"^rank 2 of 3 left no results \(.*rank_2.json\) "
                                         r"within 0 s of rank 0's end: it failed or hangs"):
        gather(detected((3, 13), COUNTS), shard, wait_seconds=0.2)


def test_parts_of_another_run_are_refused_or_removed(tmp_path):
    prefix = str(tmp_path / "run")
    rank1 = plan_shard(1, 2, IMAGE_IDS, prefix)
    hand_over(detected((5, 13), COUNTS), rank1)
    # Rank 0 starting a new run removes what an interrupted one left.
    rank0 = plan_shard(0, 2, IMAGE_IDS, prefix)
    assert os.listdir(rank0.folder) == []
    # A part over other images (another run's, written after rank 0 started) is refused.
    hand_over(detected((5, 8), COUNTS), rank1)
    with pytest.raises(ValueError, match=r"rank_1.json: not the results of rank 1 of 2 over "
                                         r"this evaluation's images"):
        gather(detected((3, 8, 21), COUNTS), rank0, wait_seconds=1)


def test_distribute_needs_a_launcher():
    check_launcher({"MS_ROLE": "MS_WORKER"})
    check_launcher({"RANK_TABLE_FILE": "/x/rank_table.json"})
    with pytest.raises(ValueError, match=r"^--distribute: this process was not started by "
                                         r"msrun \(no MS_ROLE\)"):
        check_launcher({"RANK_ID": "0"})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Five synthetic images, the tiny shapes config (YAML) and its detecting checkpoint."""
    root = tmp_path_factory.mktemp("eval_distributed")
    paths = generate_dataset(str(root / "synthetic"), num_train=1, num_val=NUM_VAL,
                             image_size=64, seed=0)
    files = SimpleNamespace(root=root, images=paths["val_images"],
                            annotations=paths["val_annotations"])
    files.config = tiny_config(num_classes=len(SHAPE_CLASSES) + 1,
                               **{"data.class_names": SHAPE_CLASSES})
    files.yaml = write_config_yaml(root / "shapes.yaml", files.config)
    files.ckpt = save_detecting_checkpoint(files.config, str(root / "shapes.ckpt"))
    return files


def test_prepared_shards_cover_the_images_once(data, tmp_path):
    ids = tuple(image["id"] for image in read_json(data.annotations)["images"])
    prepared = [prepare_coco_evaluation(data.annotations, SHAPE_CLASSES, image_dir=data.images,
                                        output_json=str(tmp_path / "run"), distributed=(r, 2))
                for r in (0, 1)]
    assert [e.image_ids for e in prepared] == [ids[0::2], ids[1::2]]
    assert all(e.shard.image_ids == ids for e in prepared)
    assert [sorted(i for i, _ in e.images) for e in prepared] == [list(ids[0::2]),
                                                                 list(ids[1::2])]


def assert_one_error_line(proc, message):
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[-1] == f"eval.py: error: {message}", proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr


def test_distribute_without_msrun_is_one_line(data):
    proc = run_eval_py(data.root, "--config", data.yaml, "--ckpt", data.ckpt, "--ann_file",
                       data.annotations, "--image_dir", data.images, "--distribute")
    assert_one_error_line(proc, "--distribute: this process was not started by msrun (no "
                                "MS_ROLE) or with a rank table (no RANK_TABLE_FILE); run bash "
                                "scripts/run_eval.sh ... DEVICE_TARGET NUM_DEVICES")


def test_device_id_that_is_not_a_number_is_one_line(data, monkeypatch):
    monkeypatch.setenv("DEVICE_ID", "gpu1")
    proc = run_eval_py(data.root, "--config", data.yaml, "--ckpt", data.ckpt, "--device_target",
                       "GPU", "--image", f"{data.root}/in.png:{data.root}/out.png")
    assert_one_error_line(proc, "DEVICE_ID 'gpu1': expected a device number")


# One process against 2 msrun workers (slow: each compiles the inference graph).

@pytest.fixture(scope="module")
def pseudo_ground_truth(data):
    """An annotation file of the model's own top detections: the tiny random model scores
    AP 0 on the real objects."""
    from src.inference import Detector
    import cv2

    document = read_json(data.annotations)
    detector = Detector(data.config, data.ckpt, "CPU")
    annotations = []
    for image in document["images"]:
        result = detector(cv2.imread(os.path.join(data.images, image["file_name"])))
        for index in np.argsort(-result["box_scores"], kind="stable")[:TOP_PER_IMAGE]:
            rle = mask_utils.encode(np.asfortranarray(result["masks"][index].astype(np.uint8)))
            if mask_utils.area(rle) == 0:
                continue
            rle["counts"] = rle["counts"].decode("ascii")
            annotations.append({
                "id": len(annotations) + 1, "image_id": image["id"], "iscrowd": 0,
                "category_id": document["categories"][int(result["classes"][index])]["id"],
                "segmentation": rle, "area": float(mask_utils.area(rle)),
                "bbox": [float(v) for v in mask_utils.toBbox(rle)]})
    assert len({a["image_id"] for a in annotations}) == NUM_VAL
    return write_json(data.root / "pseudo.json", dict(document, annotations=annotations))


def msrun_env():
    # msrun starts the workers as plain "python": the venv's must come first.
    return dict(os.environ, PATH=os.pathsep.join([VENV_BIN, os.environ.get("PATH", "")]),
                MS_COMPILER_CACHE_ENABLE="0")


@pytest.fixture(scope="module")
def runs(data, pseudo_ground_truth):
    """{"one": ..., "two": ...}: metrics and written files of eval.py --classwise in one
    process and as 2 msrun workers."""
    if MSRUN is None:
        pytest.skip(f"msrun not found in {VENV_BIN} or PATH (it comes with MindSpore >= 2.3)")
    driver = data.root / "driver.py"
    driver.write_text(DRIVER.format(repo=REPO, script=os.path.join(REPO, "eval.py")))
    outcome = {}
    for name, launch in (("one", [sys.executable]),
                         ("two", [MSRUN, "--worker_num=2", "--local_worker_num=2",
                                  f"--master_port={free_port()}", "--join=True",
                                  f"--log_dir={data.root / 'log'}"])):
        prefix = str(data.root / name / "results")
        args = ["--config", data.yaml, "--ckpt", data.ckpt, "--ann_file", pseudo_ground_truth,
                "--image_dir", data.images, "--output_json", prefix, "--classwise"]
        if name == "two":
            args.append("--distribute")
        metrics_path = str(data.root / f"{name}_metrics.json")
        proc = subprocess.run(launch + [str(driver), metrics_path] + args, cwd=str(data.root),
                              env=msrun_env(), capture_output=True, text=True, timeout=900)
        logs = "\n".join(f"--- worker_{r}.log\n" + tail(str(data.root / "log" / f"worker_{r}.log"))
                         for r in (0, 1))
        assert proc.returncode == 0, proc.stderr[-3000:] + logs
        outcome[name] = SimpleNamespace(
            metrics=read_json(metrics_path),
            **{kind: read_json(f"{prefix}_{kind}.json") for kind in ("bbox", "segm")},
            classwise=read_json(f"{prefix}_classwise.json"))
    return outcome


@pytest.mark.slow
def test_two_workers_give_the_one_process_ap(runs):
    one, two = runs["one"], runs["two"]
    for kind in ("bbox", "segm"):
        assert 0.01 < one.metrics[kind]["AP"] < 0.99, one.metrics
    assert two.metrics == one.metrics
    assert two.classwise == one.classwise
    # The same entries, image by image in id order: the folder is read in id order too.
    assert two.bbox == one.bbox and two.segm == one.segm


def run_launcher(cwd, *args):
    env = dict(msrun_env(), PYTHON=sys.executable, MASTER_PORT=str(free_port()))
    return subprocess.run(["bash", os.path.join(REPO, "scripts", "run_eval.sh"), *args],
                          cwd=str(cwd), env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_launcher_runs_two_devices_and_prints_the_ap(data, pseudo_ground_truth, runs, tmp_path):
    proc = run_launcher(tmp_path, data.yaml, data.ckpt, pseudo_ground_truth, data.images,
                        "CPU", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"(2 x CPU); logs: {tmp_path}/eval_log/worker_<rank>.log" in proc.stdout
    # The table rank 0 printed: the one-process AP in percent.
    rows = {line.split()[0]: [float(v) for v in line.split()[1:4]]
            for line in proc.stdout.splitlines() if line.startswith(("box ", "mask "))}
    for row, kind in (("box", "bbox"), ("mask", "segm")):
        expected = [runs["one"].metrics[kind][name] * 100 for name in ("AP", "AP50", "AP75")]
        assert rows[row] == pytest.approx(expected, abs=0.006)
    assert read_json(tmp_path / "eval_results_segm.json") == runs["one"].segm


@pytest.mark.slow
def test_launcher_reports_a_failing_rank_in_one_line(data, tmp_path):
    """An image missing from rank 1's share: rank 1 stops at its input check, msrun ends rank
    0, the launcher shows rank 1's error and exits 2."""
    folder = tmp_path / "images"
    folder.mkdir()
    names = sorted(os.listdir(data.images))
    for name in names[:1] + names[2:]:
        os.link(os.path.join(data.images, name), folder / name)
    proc = run_launcher(tmp_path, data.yaml, data.ckpt, data.annotations, str(folder),
                        "CPU", "2")
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith(f"eval.py: error: {folder / names[1]}: image not found"), lines
    assert lines[1].startswith(f"{os.path.join(REPO, 'scripts', 'run_eval.sh')}: logs: "), lines
