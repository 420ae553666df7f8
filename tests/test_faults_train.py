"""Training under faults and bad input: nothing lost, nothing silent.

Every case runs the real ``train.py`` (or the launcher) in a subprocess on the tiny YOLACT++
and six synthetic images, and checks the exit code, the one error line, the files left and,
where training ran, that the newest checkpoint loads and ``--resume auto`` continues at its
iteration. Full and read-only disks are real tmpfs mounts (skipped, with the reason, where
this user cannot mount).
"""
import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml

from src.checkpoint import list_checkpoints
from tests.test_distributed import free_port
from tests.test_train import (SHAPE_CLASSES, read_state, run_train_py, scalar, shapes_config,
                              signal_when_printed, six_images, tiny_yaml)  # noqa: F401

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = shapes_config().name


def train_args(config, mindrecord, output_dir, *extra):
    return ["--config", config, "--mindrecord_dir", mindrecord, "--batch_size", "2",
            "--num_workers", "1", "--output_dir", str(output_dir), "--log_every", "1", *extra]


def error_line(result):
    """The one ``train.py: error:`` line, after checking it is alone and untraced."""
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("train.py: error:")]
    assert len(lines) == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return lines[0]


def digests(folder):
    """{file name: sha256} of every checkpoint in ``folder``."""
    return {os.path.basename(path): hashlib.sha256(open(path, "rb").read()).hexdigest()
            for path in list_checkpoints(str(folder), NAME)}


def assert_resumes_at_newest(tiny_yaml, six_images, output_dir, tmp_path):
    """The newest checkpoint loads, and --resume auto continues one step after it."""
    newest = list_checkpoints(str(output_dir), NAME)[-1]
    iteration = int(scalar(read_state(newest)["iteration"]))
    assert scalar(read_state(newest)["global_step"]) == iteration
    result = run_train_py(train_args(tiny_yaml, six_images, output_dir, "--resume", "auto",
                                     "--stop_iter", str(iteration + 1)))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resumed from {newest} at iteration {iteration}" in result.stderr + result.stdout


@contextlib.contextmanager
def tmpfs(path, size, read_only=False):
    """A real tmpfs of ``size`` at ``path`` (needs root; the test skips otherwise)."""
    os.makedirs(path, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}); needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_new_run_in_a_used_folder_is_refused_then_moves_the_old_run_aside(
        tiny_yaml, six_images, tmp_path):
    output_dir = tmp_path / "O"
    first = run_train_py(train_args(tiny_yaml, six_images, output_dir, "--stop_iter", "6",
                                    "--save_every", "2"))
    assert first.returncode == 0, first.stderr[-3000:]
    before = digests(output_dir)
    assert sorted(before) == [f"{NAME}_{it}.ckpt" for it in (2, 4, 6)]

    again = train_args(tiny_yaml, six_images, output_dir, "--stop_iter", "2", "--save_every",
                       "2", "--keep_last", "1", "--seed", "1")
    line = error_line(run_train_py(again))
    assert f"{output_dir}: holds 3 checkpoint(s) of {NAME} from an earlier run" in line
    assert "--resume auto" in line and "--overwrite" in line
    assert digests(output_dir) == before

    moved = run_train_py(again + ["--overwrite"])
    assert moved.returncode == 0, moved.stderr[-3000:]
    assert sorted(digests(output_dir)) == [f"{NAME}_2.ckpt"]
    [previous] = [entry for entry in os.listdir(output_dir) if entry.startswith("previous-")]
    assert digests(output_dir / previous) == before        # the earlier run, intact
    assert_resumes_at_newest(tiny_yaml, six_images, output_dir, tmp_path)


def test_an_unwritable_output_folder_is_found_before_training(tiny_yaml, six_images, tmp_path):
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as mount:
        line = error_line(run_train_py(train_args(tiny_yaml, six_images, mount / "run",
                                                  "--stop_iter", "2")))
    assert f"{mount / 'run'}: cannot create the output folder (Read-only file system)" in line


def test_a_disk_without_room_for_a_checkpoint_is_found_before_training(tiny_yaml, six_images,
                                                                       tmp_path):
    with tmpfs(tmp_path / "small", "64k") as mount:
        result = run_train_py(train_args(tiny_yaml, six_images, mount, "--stop_iter", "2"))
        line = error_line(result)
        assert re.search(rf"{mount}: [\d.]+ MB free, a checkpoint needs [\d.]+ MB", line), line
        assert os.listdir(mount) == []
    assert "iter 1/" not in result.stderr              # nothing ran


def test_a_disk_that_fills_during_training_keeps_the_last_good_checkpoint(
        tiny_yaml, six_images, tmp_path):
    """Room for one checkpoint and a half: the first save fits, the second runs out of space.
    Training stops with one line naming the checkpoint that is kept, leaving no temp file."""
    probe = tmp_path / "probe"
    ok = run_train_py(train_args(tiny_yaml, six_images, probe, "--stop_iter", "1"))
    assert ok.returncode == 0, ok.stderr[-3000:]
    size = os.path.getsize(list_checkpoints(str(probe), NAME)[0])
    with tmpfs(tmp_path / "disk", str(int(size * 1.6))) as mount:
        line = error_line(run_train_py(train_args(
            tiny_yaml, six_images, mount, "--stop_iter", "6", "--save_every", "1",
            "--keep_last", "0")))
        kept = os.path.join(str(mount), f"{NAME}_1.ckpt")
        assert "training stopped at iteration 2" in line and "No space left on device" in line
        assert f"the last checkpoint is {kept}" in line
        # No temporaries: the checkpoint and the run's records only.
        assert sorted(os.listdir(mount)) == sorted([os.path.basename(kept), "config.yaml",
                                                    "metrics.jsonl"])
        assert scalar(read_state(kept)["iteration"]) == 1


def write_split_with_a_truncated_image(root, num_images, position):
    """``num_images`` synthetic images as a train split whose row ``position`` holds a
    truncated JPEG, written with MindSpore's own writer: what a data set converted before
    conversion decoded every image looks like. Returns (folder, that image's name)."""
    from mindspore.mindrecord import FileWriter

    from src.data.coco import load_coco
    from src.data.mindrecord import SCHEMA_NAME, mindrecord_schema, record_to_row
    from src.data.synthetic import generate_dataset

    paths = generate_dataset(str(root / "images"), num_train=num_images, num_val=0,
                             image_size=96, seed=0)
    dataset = load_coco(paths["train_annotations"], paths["train_images"])
    split = root / "mindrecord" / "train"
    split.mkdir(parents=True)
    writer = FileWriter(str(split / "train.mindrecord"), shard_num=1, overwrite=True)
    writer.add_schema(mindrecord_schema(), SCHEMA_NAME)
    rows = []
    for index, record in enumerate(dataset.images):
        with open(os.path.join(paths["train_images"], record.file_name), "rb") as handle:
            data = handle.read()
        rows.append(record_to_row(record, data[:200] if index == position else data))
    writer.write_raw_data(rows)
    writer.commit()
    info = {"schema": SCHEMA_NAME, "schema_version": 1, "split": "train",
            "num_images": len(rows), "shard_files": ["train.mindrecord"],
            **dataset.categories.to_dict()}
    (split / "dataset_info.json").write_text(json.dumps(info))
    return str(root / "mindrecord"), dataset.images[position].file_name


def test_a_bad_image_in_the_data_saves_before_stopping(tiny_yaml, tmp_path):
    """The bad image comes in the last batch of the first epoch (iteration 20): the steps
    before it are saved (the pipeline reads ahead, so the error surfaces some steps early),
    training stops with one line naming the image, and the checkpoint is whole."""
    from src.data.dataset import epoch_schedule

    order, _ = epoch_schedule(40, 2, seed=0)
    data, name = write_split_with_a_truncated_image(tmp_path, 40, int(order(0)[39]))
    output_dir = tmp_path / "run"
    line = error_line(run_train_py(train_args(tiny_yaml, data, output_dir, "--stop_iter", "30",
                                              "--save_every", "100")))
    stopped = int(re.search(r"training stopped at iteration (\d+): ", line).group(1))
    assert 1 <= stopped < 20, line
    assert f"{name}: image bytes in the MindRecord cannot be decoded" in line
    newest = os.path.join(str(output_dir), f"{NAME}_{stopped}.ckpt")
    assert f"the last checkpoint is {newest}; continue with --resume auto" in line
    assert list_checkpoints(str(output_dir), NAME) == [newest]
    assert scalar(read_state(newest)["iteration"]) == scalar(read_state(newest)["global_step"])


def test_a_data_set_of_other_classes_is_refused(six_images, tmp_path):
    config = tmp_path / "other.yaml"
    other = shapes_config()
    config.write_text(yaml.safe_dump({
        "__BASE__": "yolact_plus_resnet50", "name": other.name,
        "data": {"class_names": list(reversed(SHAPE_CLASSES)), "max_size": 256}}))
    line = error_line(run_train_py(train_args(str(config), six_images, tmp_path / "run")))
    assert f"{six_images}: its train split has the classes [circle, square, triangle" in line
    assert "data.class_names [ring, star, ellipse" in line
    assert not (tmp_path / "run").exists()


def test_leftovers_of_a_killed_save_are_removed_at_the_next_start(tiny_yaml, six_images,
                                                                  tmp_path):
    """kill -9 during a save leaves our temporary file and MindSpore's; the next run in the
    folder removes them (no process can clean up after SIGKILL)."""
    output_dir = tmp_path / "run"
    first = run_train_py(train_args(tiny_yaml, six_images, output_dir, "--stop_iter", "2"))
    assert first.returncode == 0, first.stderr[-3000:]
    for name in (".tmp_abc123.ckpt", ".tmp_abc123.tmp"):
        (output_dir / name).write_bytes(b"\0" * 4096)
    assert_resumes_at_newest(tiny_yaml, six_images, output_dir, tmp_path)
    # The resume stopped at 3, not 2: its settings differ, so config.yaml was moved aside.
    assert sorted(os.listdir(output_dir)) == sorted([
        f"{NAME}_2.ckpt", f"{NAME}_3.ckpt", "config.yaml", "config.before_2.yaml",
        "metrics.jsonl"])


def test_ctrl_c_during_the_first_compile_leaves_nothing(tiny_yaml, six_images, tmp_path):
    """SIGINT while the first step compiles: exit 130, no checkpoint, and no
    rank_0/om/analyze_fail.ir in the working directory."""
    process = subprocess.Popen(
        [sys.executable, os.path.join(REPO, "train.py"),
         *train_args(tiny_yaml, six_images, tmp_path / "run", "--stop_iter", "3")],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # The run's first line is logged just before the first step compiles.
    output = signal_when_printed(process, f"{NAME}: 6 images",
                                 lambda: process.send_signal(signal.SIGINT))
    assert process.returncode == 130, output[-3000:]
    assert "iter 1/" not in output, "the signal came after the first step; compile took < 0 s?"
    assert sorted(os.listdir(tmp_path)) == ["run"], os.listdir(tmp_path)
    assert list_checkpoints(str(tmp_path / "run"), NAME) == []


@pytest.mark.parametrize("sent, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_stopping_a_multi_process_run_saves_and_reports_it(sent, code, tiny_yaml, six_images,
                                                          tmp_path):
    """Ctrl+C (SIGINT to the launcher's process group, as a terminal sends it) or SIGTERM on
    run_distribute_train.sh with 2 msrun workers: rank 0 saves, every process ends, the
    script exits non-zero, and --resume auto continues at the saved iteration."""
    from tests.test_distributed import MSRUN, VENV_BIN

    if MSRUN is None:
        pytest.skip(f"msrun not found in {VENV_BIN} or PATH (it comes with MindSpore >= 2.3)")
    output_dir = tmp_path / "run"
    launcher = [
        "bash", os.path.join(REPO, "scripts", "run_distribute_train.sh"), tiny_yaml, six_images,
        "CPU", "2", "--batch_size", "2", "--num_workers", "1", "--log_every", "1",
        "--output_dir", str(output_dir)]
    env = dict(os.environ, PYTHON=sys.executable, MASTER_PORT=str(free_port()),
               PATH=os.pathsep.join([VENV_BIN, os.environ.get("PATH", "")]))
    process = subprocess.Popen(launcher + ["--stop_iter", "1000"], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    log = output_dir / "log" / "worker_0.log"
    try:
        deadline = time.time() + 300
        while "iter 2/1000" not in (log.read_text() if log.exists() else ""):
            assert time.time() < deadline and process.poll() is None, log.read_text()[-3000:]
            time.sleep(0.5)
        if sent == signal.SIGINT:
            os.killpg(process.pid, sent)
        else:
            process.send_signal(sent)
        output = process.communicate(timeout=300)[0]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == code, output[-3000:] + log.read_text()[-3000:]
    assert "stopped; resume with --resume auto" in output
    leftovers = subprocess.run(["pgrep", "-f", str(output_dir)], capture_output=True, text=True)
    assert leftovers.stdout == "", "processes of the run are still alive"
    [newest] = list_checkpoints(str(output_dir), NAME)
    iteration = int(scalar(read_state(newest)["iteration"]))
    # Stopped where the signal came, not at the end of the 1000 iterations.
    assert 2 <= iteration < 100 and scalar(read_state(newest)["global_step"]) == iteration
    resumed = subprocess.run(launcher + ["--resume", "auto", "--stop_iter", str(iteration + 1)],
                             cwd=tmp_path, env=dict(env, MASTER_PORT=str(free_port())),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {newest} at iteration {iteration}" in log.read_text()
