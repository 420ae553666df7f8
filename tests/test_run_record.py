"""A run's records and host fit, without training: config.yaml round trips, metrics.jsonl lines,
the output folder moving an earlier run's records aside, and the data worker cap."""
import json
import os

import numpy as np
import pytest

from src.config.load import config_to_yaml, load_config
from src.config.variants import VARIANTS
from src.runtime import RunContext, local_size_from_env, usable_cpus
from src.train.output_folder import OutputFolderError, prepare_output_folder
from src.train.run_record import MetricsLog, write_run_config
from src.train.trainer import fit_workers, pipeline_workers


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_config_yaml_loads_back_every_variant(name, tmp_path):
    config = load_config(name, ["train.lr_steps=[10, 20]", "run.seed=7"])
    path = tmp_path / "config.yaml"
    path.write_text(config_to_yaml(config))
    assert load_config(str(path)) == config


def test_a_changed_config_moves_the_earlier_file_aside(tmp_path):
    config = load_config("yolact_plus_demo")
    assert write_run_config(str(tmp_path), config, 0) is None
    first = (tmp_path / "config.yaml").read_text()
    resumed = load_config("yolact_plus_demo", ["run.resume=auto", "run.overwrite=true"])
    # run.resume and run.overwrite say how a process started, not what the run is.
    assert write_run_config(str(tmp_path), resumed, 500) is None
    assert (tmp_path / "config.yaml").read_text() == first
    for expected in ("config.before_500.yaml", "config.before_500_2.yaml"):
        changed = load_config("yolact_plus_demo", [f"run.stop_iter={len(expected)}"])
        assert write_run_config(str(tmp_path), changed, 500) == str(tmp_path / expected)
    assert load_config(str(tmp_path / "config.before_500.yaml")) == config
    assert load_config(str(tmp_path / "config.yaml")).run.stop_iter == len(
        "config.before_500_2.yaml")


def test_metrics_lines(tmp_path):
    log = MetricsLog(str(tmp_path))
    log.training(10, np.float32([1.5, 2.0, 3.0, 0.25, 0.125]), 6.875, 1e-3, 1024.0, 0.5, 8)
    log.training(11, np.float32([1, 1, 1, 1, 1]), 5.0, 1e-3, 512.0, float("nan"), 8)
    log.evaluation(20, 5, {"bbox": {"AP": 0.5, "APl": -1.0}, "segm": {"AP": 0.25}}, 3.21)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line.pop("time") > 1.7e9 for line in lines] == [True] * 3
    assert lines[0] == {"kind": "train", "iteration": 10, "losses": {
        "box": 1.5, "class": 2.0, "mask": 3.0, "semantic": 0.25, "maskiou": 0.125},
        "total": 6.875, "lr": 1e-3, "loss_scale": 1024.0, "sec_per_step": 0.5,
        "img_per_sec": 16.0}
    assert lines[1]["sec_per_step"] is None and lines[1]["img_per_sec"] is None
    assert lines[2] == {"kind": "eval", "iteration": 20, "images": 5, "seconds": 3.21,
                        "bbox": {"AP": 0.5, "APl": -1.0}, "segm": {"AP": 0.25}}


def touch(path):
    path.write_bytes(b"x")
    return path


def test_overwrite_moves_checkpoints_best_and_records_together(tmp_path):
    for name in ("m_100.ckpt", "m_best.ckpt", "metrics.jsonl", "config.yaml",
                 "config.before_50.yaml", "train.log", "other_100.ckpt"):
        touch(tmp_path / name)
    with pytest.raises(OutputFolderError, match="holds 2 checkpoint"):
        prepare_output_folder(str(tmp_path), "m", "", False, 10)
    moved_to = prepare_output_folder(str(tmp_path), "m", "", True, 10)
    assert sorted(os.listdir(moved_to)) == ["config.before_50.yaml", "config.yaml",
                                            "m_100.ckpt", "m_best.ckpt", "metrics.jsonl"]
    assert sorted(os.listdir(tmp_path)) == sorted(["other_100.ckpt", "train.log",
                                                   os.path.basename(moved_to)])


def test_records_of_a_run_that_saved_nothing_make_room_for_a_new_one(tmp_path):
    touch(tmp_path / "metrics.jsonl")
    touch(tmp_path / "config.yaml")
    moved_to = prepare_output_folder(str(tmp_path), "m", "", False, 10)
    assert sorted(os.listdir(moved_to)) == ["config.yaml", "metrics.jsonl"]
    assert prepare_output_folder(str(tmp_path), "m", "auto", False, 10) is None


def test_a_best_checkpoint_alone_is_an_earlier_run(tmp_path):
    touch(tmp_path / "m_best.ckpt")
    with pytest.raises(OutputFolderError, match="m_best.ckpt"):
        prepare_output_folder(str(tmp_path), "m", "", False, 10)


@pytest.mark.parametrize("requested, cpus, ranks, expected", [
    (4, 2, 1, 2), (4, 2, 2, 1), (4, 1, 2, 1), (2, 64, 8, 2), (8, 64, 8, 8), (3, 7, 2, 3)])
def test_pipeline_workers(requested, cpus, ranks, expected):
    assert pipeline_workers(requested, cpus, ranks) == expected


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_shipped_config_fits_this_host(name):
    config = fit_workers(load_config(name), RunContext("CPU", False))
    assert 1 <= config.data.num_parallel_workers <= min(usable_cpus(), os.cpu_count())


@pytest.mark.parametrize("value, expected", [("", 4), ("2", 2), ("4", 4)])
def test_local_size_from_env(value, expected, monkeypatch):
    monkeypatch.setenv("LOCAL_WORKER_NUM", value)
    assert local_size_from_env(4) == expected


@pytest.mark.parametrize("value", ["0", "5", "two"])
def test_a_bad_local_worker_num_is_named(value, monkeypatch):
    monkeypatch.setenv("LOCAL_WORKER_NUM", value)
    with pytest.raises(ValueError, match=f"LOCAL_WORKER_NUM '{value}': expected the number of "
                                         f"ranks on this host, 1 to 4"):
        local_size_from_env(4)
