"""The training workflow around the step: validation while training and the best checkpoint,
metrics.jsonl and config.yaml across a resume, and data workers fitted to the CPUs.

The runs are real ``train.py`` processes: the tiny YOLACT++ learns six synthetic images (AdamW,
no augmentation) and is validated on the same six images converted as the val split, so its AP
rises within the 60 iterations the tests can afford.
"""
import contextlib
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from src.config.load import load_config
from src.data.coco import load_coco
from src.data.mindrecord import write_mindrecord
from src.data.synthetic import generate_dataset
from src.evaluation.validation import split_ground_truth
from tests.test_train import read_state, run_train_py, scalar, shapes_config, write_config_yaml

pytestmark = pytest.mark.slow

NAME = shapes_config().name
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


ITERATIONS = 60
EVAL_EVERY = 20
LEARN_FAST = ["--opts", "train.optimizer=adamw", "train.lr=0.002", "train.warmup_iters=0",
              "train.weight_decay=0", "data.augmentation=none"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """(MindRecord folder whose val split holds the train split's images, their annotations)."""
    root = str(tmp_path_factory.mktemp("workflow"))
    paths = generate_dataset(os.path.join(root, "images"), num_train=6, num_val=0,
                             image_size=96, seed=0)
    output_dir = os.path.join(root, "mindrecord")
    dataset = load_coco(paths["train_annotations"], paths["train_images"])
    for split in ("train", "val"):
        write_mindrecord(dataset.images, output_dir, split, 1, categories=dataset.categories,
                         log=lambda line: None)
    return output_dir, paths["train_annotations"]


@pytest.fixture(scope="module")
def config_yaml(tmp_path_factory):
    return write_config_yaml(tmp_path_factory.mktemp("config") / "tiny.yaml", shapes_config())


def train(config_yaml, mindrecord, output_dir, *extra):
    args = ["--config", config_yaml, "--mindrecord_dir", mindrecord, "--batch_size", "2",
            "--log_every", str(EVAL_EVERY), "--save_every", str(EVAL_EVERY), "--keep_last", "0",
            "--output_dir", str(output_dir), *extra, *LEARN_FAST]
    # One CPU for every run: the thread count changes the float sums, and the runs are compared
    # bit for bit.
    result = run_train_py(args, cpus={0})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def read_metrics(output_dir):
    with open(os.path.join(output_dir, "metrics.jsonl"), encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


@pytest.fixture(scope="module")
def validated_run(tmp_path_factory, data, config_yaml):
    """Iterations 1-40 with more workers asked for than the one CPU, then a resume to 60,
    evaluating every 20; and the same 60 iterations in one run without validation."""
    mindrecord, _ = data
    validated = tmp_path_factory.mktemp("validated")
    logs = [train(config_yaml, mindrecord, validated, "--stop_iter", "40",
                  "--eval_every", str(EVAL_EVERY), "--num_workers", str(os.cpu_count() + 1)),
            train(config_yaml, mindrecord, validated, "--resume", "auto",
                  "--stop_iter", str(ITERATIONS), "--eval_every", str(EVAL_EVERY),
                  "--num_workers", "1")]
    plain = tmp_path_factory.mktemp("plain")
    train(config_yaml, mindrecord, plain, "--stop_iter", str(ITERATIONS), "--num_workers", "1")
    return validated, plain, logs


def test_validation_does_not_change_the_trajectory(validated_run):
    validated, plain, _ = validated_run
    for iteration in range(EVAL_EVERY, ITERATIONS + 1, EVAL_EVERY):
        ours = read_state(os.path.join(validated, f"{NAME}_{iteration}.ckpt"))
        reference = read_state(os.path.join(plain, f"{NAME}_{iteration}.ckpt"))
        assert ours.keys() == reference.keys()
        for name in reference:
            np.testing.assert_array_equal(ours[name], reference[name], err_msg=name)


def test_metrics_lines_continue_across_the_resume(validated_run):
    validated, plain, _ = validated_run
    lines = read_metrics(validated)
    assert [(line["kind"], line["iteration"]) for line in lines] == [
        ("train", 20), ("eval", 20), ("train", 40), ("eval", 40), ("train", 60), ("eval", 60)]
    reference = read_metrics(plain)
    assert [line["iteration"] for line in reference] == [20, 40, 60]
    for ours, theirs in zip([line for line in lines if line["kind"] == "train"], reference):
        assert ours["losses"] == theirs["losses"] and ours["total"] == theirs["total"]
        assert ours["lr"] == theirs["lr"] and ours["loss_scale"] == theirs["loss_scale"]
        assert sorted(ours["losses"]) == ["box", "class", "mask", "maskiou", "semantic"]
        assert ours["total"] == pytest.approx(sum(ours["losses"].values()), rel=1e-5)
    for line in lines:
        if line["kind"] == "eval":
            assert line["images"] == 6
            assert set(line["bbox"]) == set(line["segm"]) == {"AP", "AP50", "AP75", "APs",
                                                              "APm", "APl"}


def test_the_best_checkpoint_holds_the_best_mask_ap(validated_run):
    validated, _, logs = validated_run
    evaluations = [line for line in read_metrics(validated) if line["kind"] == "eval"]
    scores = [line["segm"]["AP"] for line in evaluations]
    assert max(scores) > 0.01, scores
    best_iteration = evaluations[scores.index(max(scores))]["iteration"]
    best = read_state(os.path.join(validated, f"{NAME}_best.ckpt"))
    assert scalar(best["best_mask_ap"]) == pytest.approx(max(scores), abs=1e-7)
    assert scalar(best["iteration"]) == best_iteration
    periodic = read_state(os.path.join(validated, f"{NAME}_{best_iteration}.ckpt"))
    for name in periodic:
        np.testing.assert_array_equal(best[name], periodic[name], err_msg=name)
    assert "validation at iteration 20 (6 images" in logs[0]
    assert "best mask AP so far" in logs[0]
    assert f"data.num_parallel_workers {os.cpu_count() + 1} capped to 1: this process may " \
           f"use 1 CPU(s)" in logs[0]


def test_config_yaml_reloads_and_a_changed_one_is_kept(validated_run, config_yaml):
    validated, _, _ = validated_run
    current = load_config(str(validated / "config.yaml"))
    assert current.run.stop_iter == ITERATIONS and current.run.eval_every == EVAL_EVERY
    given = load_config(config_yaml, ["train.batch_size=2", *LEARN_FAST[1:]])
    assert current.run.resume == "" and (current.data, current.train) == (given.data, given.train)
    # The first process stopped at 40; the resume changed that setting, so its file moved.
    earlier = load_config(str(validated / "config.before_40.yaml"))
    assert earlier.run.stop_iter == 40 and earlier.data.num_parallel_workers == os.cpu_count() + 1
    assert sorted(os.listdir(validated)) == sorted(
        ["config.before_40.yaml", "config.yaml", "metrics.jsonl", f"{NAME}_best.ckpt"]
        + [f"{NAME}_{iteration}.ckpt" for iteration in (20, 40, 60)])


def test_the_val_split_scores_like_its_annotation_file(data):
    """The ground truth made from the split gives COCOeval's numbers of the annotation file it
    was converted from (results: the ground truth boxes, shifted, with made-up scores)."""
    mindrecord, annotations = data
    from_split, category_ids = split_ground_truth(mindrecord)
    with contextlib.redirect_stdout(io.StringIO()):
        from_file = COCO(annotations)
    assert tuple(sorted(from_file.getCatIds())) == category_ids
    results = [{"image_id": ann["image_id"], "category_id": ann["category_id"],
                "bbox": [ann["bbox"][0] + 2, ann["bbox"][1], ann["bbox"][2], ann["bbox"][3]],
                "score": 0.1 + 0.8 * (index % 5) / 5}
               for index, ann in enumerate(from_file.dataset["annotations"])]
    stats = []
    for ground_truth in (from_split, from_file):
        with contextlib.redirect_stdout(io.StringIO()):
            coco_eval = COCOeval(ground_truth, ground_truth.loadRes(results), "bbox")
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        stats.append(coco_eval.stats)
    assert stats[0][0] > 0.1
    np.testing.assert_array_equal(stats[0], stats[1])


def test_eval_every_without_a_val_split_stops_before_training(config_yaml, tmp_path):
    from tests.test_train import write_synthetic_mindrecord
    mindrecord = write_synthetic_mindrecord(str(tmp_path), 2, seed=1)
    result = run_train_py(["--config", config_yaml, "--mindrecord_dir", mindrecord,
                           "--batch_size", "2", "--eval_every", "5",
                           "--output_dir", str(tmp_path / "run")])
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("train.py: error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert os.path.join(mindrecord, "val") in lines[0] and "--eval_every 0" in lines[0]
    assert not (tmp_path / "run").exists()


def test_data_parallel_run_validates_on_rank_0(data, config_yaml, tmp_path):
    """Two msrun ranks on this 2-CPU host: each gets one data worker, rank 0 evaluates while
    rank 1 waits at the next step's gradient exchange, and only rank 0 writes."""
    from tests.test_distributed import MSRUN, VENV_BIN, free_port, tail
    if MSRUN is None:
        pytest.skip(f"msrun not found in {VENV_BIN} or PATH (it comes with MindSpore >= 2.3)")
    mindrecord, _ = data
    output_dir, log_dir = tmp_path / "run", tmp_path / "log"
    env = dict(os.environ, PATH=os.pathsep.join([VENV_BIN, os.environ.get("PATH", "")]))
    env.pop("LOCAL_WORKER_NUM", None)
    result = subprocess.run(
        [MSRUN, "--worker_num=2", "--local_worker_num=2", f"--master_port={free_port()}",
         "--join=True", f"--log_dir={log_dir}", os.path.join(REPO, "train.py"), "--distribute",
         "--config", config_yaml, "--mindrecord_dir", mindrecord, "--batch_size", "2",
         "--num_workers", "2", "--stop_iter", "2", "--eval_every", "1", "--log_every", "1",
         "--output_dir", str(output_dir)],
        cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600)
    logs = [tail(os.path.join(log_dir, f"worker_{rank}.log"), 200) for rank in (0, 1)]
    assert result.returncode == 0, result.stderr[-2000:] + "\n".join(logs)
    assert [(line["kind"], line["iteration"]) for line in read_metrics(output_dir)] == [
        ("train", 1), ("eval", 1), ("train", 2), ("eval", 2)]
    assert "data.num_parallel_workers 2 capped to 1: this process may use 2 CPU(s), shared " \
           "by 2 ranks" in logs[0]
    assert "validation at iteration 2" in logs[0] and "validation" not in logs[1]
    assert sorted(os.listdir(output_dir)) == sorted(
        ["config.yaml", "metrics.jsonl", f"{NAME}_best.ckpt", f"{NAME}_2.ckpt"])


def test_the_run_plots(validated_run, tmp_path):
    validated, _, _ = validated_run
    out = tmp_path / "run.png"
    result = subprocess.run([sys.executable, os.path.join(REPO, "tools", "plot_metrics.py"),
                             str(validated), "--out", str(out)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "  Losses: box 3, class 3, mask 3, semantic 3, maskiou 3, total 3" in result.stdout
    assert "  AP (%): box AP 3, mask AP 3" in result.stdout
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
