"""Data-parallel training on 2 CPU processes started by msrun, and the distributed launcher's
argument checks.

The msrun run trains the tiny YOLACT++ for 3 steps at 1 image per process; each rank saves its
own checkpoints (``run.save_all_ranks``). The ranks read different images, so equal
weights after every step mean the gradients were averaged across the processes.
"""
import os
import shutil
import socket
import subprocess
import sys
import textwrap

import mindspore as ms
import numpy as np
import pytest

from src.data.dataset import create_train_dataset
from src.model.build import build_model, prior_boxes
from tests.test_train import (read_state, scalar, shapes_config,
                              write_synthetic_mindrecord)

# Slow: two msrun workers train a tiny model.
pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_BIN = os.path.dirname(sys.executable)
MSRUN = shutil.which("msrun", path=os.pathsep.join([VENV_BIN, os.environ.get("PATH", "")]))
STEPS = 3

DRIVER = """\
import sys
sys.path.insert(0, {repo!r})
from src.runtime import init_context
from src.train.trainer import train
from src.utils.logger import setup_logger
from tests.test_train import shapes_config

context = init_context("CPU", distributed=True)
setup_logger(context.rank)
config = shapes_config(**{{
    "run.mindrecord_dir": {mindrecord!r}, "run.output_dir": {output!r}, "train.batch_size": 2,
    "run.stop_iter": {steps}, "run.save_every": 1, "run.keep_last": 0, "run.log_every": 1,
    "data.num_parallel_workers": 1, "run.save_all_ranks": True}})
train(config, context)
"""


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tail(path, lines=30):
    if not os.path.exists(path):
        return f"({path} missing)"
    with open(path, errors="replace") as handle:
        return "".join(handle.readlines()[-lines:])


@pytest.fixture(scope="module")
def six_images(tmp_path_factory):
    return write_synthetic_mindrecord(str(tmp_path_factory.mktemp("six")), 6, seed=0)


@pytest.fixture(scope="module")
def msrun_run(six_images, tmp_path_factory):
    """(output_dir, checkpoint name) of a 2-process msrun training run."""
    if MSRUN is None:
        pytest.skip(f"msrun not found in {VENV_BIN} or PATH (it comes with MindSpore >= 2.3)")
    root = tmp_path_factory.mktemp("msrun")
    output_dir, log_dir = str(root / "output"), str(root / "log")
    driver = root / "driver.py"
    driver.write_text(DRIVER.format(repo=REPO, mindrecord=six_images, output=output_dir,
                                    steps=STEPS))
    # msrun starts the workers as plain "python": the venv's must come first.
    env = dict(os.environ, PATH=os.pathsep.join([VENV_BIN, os.environ.get("PATH", "")]))
    result = subprocess.run(
        [MSRUN, "--worker_num=2", "--local_worker_num=2", f"--master_port={free_port()}",
         "--join=True", f"--log_dir={log_dir}", str(driver)],
        cwd=str(root), env=env, capture_output=True, text=True, timeout=600)
    logs = "\n".join(f"--- worker_{rank}.log\n" + tail(os.path.join(log_dir, f"worker_{rank}.log"))
                     for rank in (0, 1))
    assert result.returncode == 0, result.stderr[-2000:] + logs
    return output_dir, shapes_config().name


def test_ranks_read_different_images(six_images):
    config = shapes_config(**{"data.num_parallel_workers": 1})
    first_batches = [
        next(create_train_dataset(config, six_images, 1, prior_boxes(config), rank=rank,
                                  group_size=2).create_tuple_iterator(
            num_epochs=1, output_numpy=True))[0] for rank in (0, 1)]
    assert not np.array_equal(*first_batches)


def test_ranks_hold_identical_weights_after_every_step(msrun_run):
    output_dir, name = msrun_run
    for iteration in range(1, STEPS + 1):
        rank0 = read_state(os.path.join(output_dir, f"{name}_{iteration}.ckpt"))
        rank1 = read_state(os.path.join(output_dir, "rank_1", f"{name}_{iteration}.ckpt"))
        assert sorted(rank0) == sorted(rank1)
        different = [key for key in rank0 if not np.array_equal(rank0[key], rank1[key])]
        assert different == [], f"iteration {iteration}: {different[:5]}"
        assert scalar(rank0["iteration"]) == iteration
        assert scalar(rank0["global_step"]) == iteration


def test_weights_move_away_from_the_start(msrun_run):
    """Against the weights train() starts from (seed 0, BN frozen at 1 image per device):
    every trainable parameter changed (weight decay moves all but zero-initialised ones that
    get no gradient: P7's bias, whose 36 priors are never positive at 256), by little (lr 1e-4
    in warmup); a wrong start (another draw) would be off by ~0.1."""
    output_dir, name = msrun_run
    ms.set_seed(0)
    start_model = build_model(shapes_config(), freeze_bn=True)
    trainable = {param.name for param in start_model.trainable_params()}
    start = {key: param.asnumpy() for key, param in start_model.parameters_and_names()}
    after_one = read_state(os.path.join(output_dir, f"{name}_1.ckpt"))
    final = read_state(os.path.join(output_dir, f"{name}_{STEPS}.ckpt"))
    unchanged = [key for key in trainable if np.array_equal(final[key], start[key])]
    assert len(unchanged) < 0.05 * len(trainable), unchanged
    assert all(not np.any(start[key]) for key in unchanged), unchanged
    assert max(np.abs(after_one[key] - start[key]).max() for key in start) < 1e-2
    frozen = [key for key in start if key not in trainable]
    assert all(np.array_equal(final[key], start[key]) for key in frozen)


def run_launcher(args):
    env = dict(os.environ, PYTHON=sys.executable)
    return subprocess.run(["bash", os.path.join(REPO, "scripts", "run_distribute_train.sh")] + args,
                          cwd=REPO, capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.parametrize("args, message", [
    (["yolact_plus_demo", "{mindrecord}", "CPU"], "Usage: bash"),
    (["yolact_plus_demo", "{mindrecord}", "CPU", "two"], "NUM_DEVICES 'two'"),
    (["yolact_plus_demo", "{mindrecord}", "TPU", "2"], "DEVICE_TARGET 'TPU'"),
    (["yolact_plus_demo", "{missing}", "CPU", "2"], "MINDRECORD_DIR {missing} does not exist"),
    (["yolact_plus_demo", "{mindrecord}", "Ascend", "2", "{missing}.json"],
     "RANK_TABLE_FILE {missing}.json does not exist"),
    (["yolact_plus_demo", "{mindrecord}", "Ascend", "2", "{table}"],
     "lists 1 devices, NUM_DEVICES is 2"),
])
def test_distribute_launcher_checks_its_arguments(args, message, six_images, tmp_path):
    table = tmp_path / "rank_table_1p.json"
    table.write_text(textwrap.dedent("""\
        {"version": "1.0", "server_count": "1", "server_list": [{"server_id": "10.0.0.1",
         "device": [{"device_id": "0", "device_ip": "192.98.92.100", "rank_id": "0"}],
         "host_nic_ip": "reserve"}], "status": "completed"}
        """))
    values = {"missing": str(tmp_path / "nothing"), "mindrecord": six_images, "table": str(table)}
    result = run_launcher([arg.format(**values) for arg in args])
    assert result.returncode == 1
    assert message.format(**values) in result.stderr, result.stderr
