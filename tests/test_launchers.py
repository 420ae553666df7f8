"""The launchers' model-zoo forms, rank tables of several servers, msrun on several machines.

``run_standalone_train.sh DEVICE_ID`` and ``run_distribute_train.sh RANK_TABLE_FILE DEVICE_NUM``
take CONFIG, MINDRECORD_DIR and DEVICE_TARGET from the environment; each missing or wrong
setting is one error line. The Ascend runs go as far as this CPU-only MindSpore allows: the
launcher starts each rank with its device and rank ids, and the rank fails where MindSpore
looks for the device. Two msrun "machines" on this host train the same checkpoint as one
machine with two workers.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from src.checkpoint import list_checkpoints
from tests.test_distributed import MSRUN, VENV_BIN, free_port, tail
from tests.test_train import read_state, shapes_config, six_images, tiny_yaml  # noqa: F401

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(REPO, "scripts")
# What the launchers read from the environment: none of it may leak in from the caller's.
LAUNCHER_VARIABLES = ("CONFIG", "MINDRECORD_DIR", "DEVICE_TARGET", "DEVICE_ID", "SERVER_ID",
                      "RANK_TABLE_FILE", "WORKER_NUM", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT",
                      "CLUSTER_TIME_OUT")
# train.py's one line when this MindSpore (built for CPU only) is asked for an Ascend device.
NO_ASCEND = ("train.py: error: --device_target Ascend: cannot use the device (Unsupported "
             "device target Ascend")
HINT_DATA = ("set MINDRECORD_DIR to the --output_dir of create_mindrecord.py "
             "(the folder holding train/)")


def launcher_env(**changes):
    env = {key: value for key, value in os.environ.items() if key not in LAUNCHER_VARIABLES}
    env.update(PYTHON=sys.executable, **changes)
    return env


def launch(script, args, timeout=60, **env_changes):
    return subprocess.run(["bash", os.path.join(SCRIPTS, script)] + args, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout,
                          env=launcher_env(**env_changes))


def host_addresses():
    result = subprocess.run(["hostname", "-I"], capture_output=True, text=True)
    return result.stdout.split() if result.returncode == 0 else []


def write_rank_table(path, servers):
    """A rank table v1.0 (hccl_tools.py's format) of ``servers``: [(server_id,
    [(device_id, rank_id), ...]), ...]."""
    table = {"version": "1.0", "server_count": str(len(servers)), "status": "completed",
             "server_list": [
                 {"server_id": server, "host_nic_ip": "reserve",
                  "device": [{"device_id": str(device), "device_ip": f"192.98.{device}.{rank}",
                              "rank_id": str(rank)} for device, rank in devices]}
                 for server, devices in servers]}
    path.write_text(json.dumps(table))
    return str(path)


def assert_one_error_line(result, message):
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].endswith(message) and ": error: " in lines[0], lines[0]


ENV_CASES = [
    ({}, "MINDRECORD_DIR is not set; " + HINT_DATA),
    ({"MINDRECORD_DIR": "{missing}"}, "MINDRECORD_DIR {missing} does not exist; " + HINT_DATA),
    ({"MINDRECORD_DIR": "{empty}"},
     "MINDRECORD_DIR {empty} has no train split ({empty}/train/dataset_info.json); " + HINT_DATA),
    ({"MINDRECORD_DIR": "{mindrecord}", "CONFIG": "yolact_plus_resnet5"},
     "CONFIG 'yolact_plus_resnet5' is neither a variant nor a .yaml file; set CONFIG to a YAML "
     "file or one of: yolact_base yolact_resnet50 yolact_im400 yolact_im700 yolact_plus_base "
     "yolact_plus_resnet50 yolact_plus_demo"),
    ({"MINDRECORD_DIR": "{mindrecord}", "CONFIG": "{missing}.yaml"},
     "config file {missing}.yaml does not exist; set CONFIG to a variant name or an existing "
     "YAML file"),
    ({"MINDRECORD_DIR": "{mindrecord}", "DEVICE_TARGET": "TPU"},
     "DEVICE_TARGET 'TPU': set DEVICE_TARGET to Ascend (the default), GPU or CPU"),
]


@pytest.fixture
def places(six_images, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    return {"missing": str(tmp_path / "nothing"), "empty": str(empty), "mindrecord": six_images,
            "output": str(tmp_path / "output")}


@pytest.mark.parametrize("script, args", [
    ("run_standalone_train.sh", ["0"]),
    ("run_distribute_train.sh", ["{table}", "1"]),
])
@pytest.mark.parametrize("env, message", ENV_CASES)
def test_zoo_forms_name_the_setting_to_fix(script, args, env, message, places, tmp_path):
    places["table"] = write_rank_table(tmp_path / "rank_table_1p.json", [("10.99.0.1", [(0, 0)])])
    result = launch(script, [arg.format(**places) for arg in args] + [
        "--output_dir", places["output"]], **{key: value.format(**places)
                                              for key, value in env.items()})
    assert_one_error_line(result, message.format(**places))
    assert not os.path.exists(places["output"])


@pytest.mark.parametrize("args, env, message", [
    (["{table}", "two"], {}, "DEVICE_NUM 'two': expected the number of devices of this server "
                             "in {table}"),
    (["{table}", "2"], {"DEVICE_TARGET": "GPU"},
     "DEVICE_TARGET 'GPU': a rank table starts Ascend devices; unset DEVICE_TARGET, or use the "
     "form CONFIG MINDRECORD_DIR GPU NUM_DEVICES (msrun)"),
    (["{missing}.json", "2"], {}, "RANK_TABLE_FILE {missing}.json does not exist"),
    (["{not_a_table}", "2"], {},
     "RANK_TABLE_FILE {not_a_table}: not a v1.0 rank table (KeyError: 'server_list'); "
     "expected server_list[].server_id and device[].device_id / rank_id"),
    (["{table}", "3"], {}, "RANK_TABLE_FILE {table} lists 2 devices for server 10.99.0.2, "
                           "DEVICE_NUM is 3"),
    (["{table}", "2"], {"SERVER_ID": "10.99.0.3"},
     "SERVER_ID '10.99.0.3' is not a server_id of RANK_TABLE_FILE {table} "
     "(10.99.0.1, 10.99.0.2); set SERVER_ID to one of them"),
    (["{foreign_table}", "2"], {},
     "0 of the servers of RANK_TABLE_FILE {foreign_table} (10.99.0.1, 10.99.0.4) have an "
     "address of this host ({addresses}); set SERVER_ID to the server_id of this server"),
])
def test_zoo_rank_table_form_checks_the_table(args, env, message, places, tmp_path):
    """SERVER_ID picks 10.99.0.2's entry where it is set; nowhere is 10.99.0.* this host."""
    places.update(
        table=write_rank_table(tmp_path / "table.json", [("10.99.0.1", [(0, 0), (1, 1)]),
                                                          ("10.99.0.2", [(0, 2), (1, 3)])]),
        foreign_table=write_rank_table(tmp_path / "foreign.json", [
            ("10.99.0.1", [(0, 0), (1, 1)]), ("10.99.0.4", [(0, 2), (1, 3)])]),
        not_a_table=str(tmp_path / "not_a_table.json"),
        addresses=" ".join(host_addresses()) or "none from hostname -I")
    (tmp_path / "not_a_table.json").write_text('{"version": "1.0"}')
    env = {"SERVER_ID": "10.99.0.2", **env} if "{table}" in args else env
    result = launch("run_distribute_train.sh", [arg.format(**places) for arg in args] + [
        "--output_dir", places["output"]], MINDRECORD_DIR=places["mindrecord"], **env)
    assert_one_error_line(result, message.format(**places))


@pytest.mark.parametrize("num_devices, env, message", [
    ("2", {"WORKER_NUM": "x"}, "WORKER_NUM 'x': set WORKER_NUM to the processes over all "
                               "machines, a multiple of NUM_DEVICES (2 on each)"),
    ("2", {"WORKER_NUM": "3"}, "WORKER_NUM '3': set WORKER_NUM to the processes over all "
                               "machines, a multiple of NUM_DEVICES (2 on each)"),
    ("2", {"WORKER_NUM": "4", "MASTER_ADDR": "10.99.0.1"},
     "NODE_RANK is not set; with WORKER_NUM 4 on 2 machines set NODE_RANK to this machine's "
     "index, 0 to 1"),
    ("2", {"WORKER_NUM": "4", "NODE_RANK": "1"},
     "MASTER_ADDR is not set; with WORKER_NUM 4 on 2 machines set MASTER_ADDR to the address "
     "of the machine that runs msrun's scheduler"),
    ("1", {"WORKER_NUM": "2", "NODE_RANK": "2", "MASTER_ADDR": "10.99.0.1"},
     "NODE_RANK '2': set NODE_RANK to this machine's index, 0 to 1 (WORKER_NUM 2 = 2 "
     "machines x NUM_DEVICES 1)"),
    ("2", {"NODE_RANK": "one"}, "NODE_RANK 'one': set NODE_RANK to this machine's index, 0 to 0 "
                                "(WORKER_NUM 2 = 1 machines x NUM_DEVICES 2)"),
    ("2", {"MASTER_PORT": "80"}, "MASTER_PORT '80': set MASTER_PORT to a free port from 1024 to "
                                 "65535, the same on every machine"),
    ("2", {"CLUSTER_TIME_OUT": "0"}, "CLUSTER_TIME_OUT '0': set CLUSTER_TIME_OUT to the seconds "
                                     "msrun's processes wait for each other (a positive integer)"),
])
def test_msrun_machine_settings_are_checked(num_devices, env, message, places):
    if MSRUN is None:
        pytest.skip(f"msrun not found in {VENV_BIN} or PATH (it comes with MindSpore >= 2.3)")
    result = launch("run_distribute_train.sh", [
        "yolact_plus_demo", places["mindrecord"], "CPU", num_devices, "--output_dir",
        places["output"]], **env)
    assert_one_error_line(result, message)


@pytest.mark.slow
@pytest.mark.parametrize("selected_by", ["address", "SERVER_ID"])
def test_zoo_rank_table_starts_this_servers_devices(selected_by, tiny_yaml, six_images, tmp_path):
    """A table of two servers; this one is found by its address (hostname -I) or named by
    SERVER_ID. Its two devices start with the table's device and global rank ids, one folder
    each, and fail only where MindSpore needs the Ascend device."""
    addresses = host_addresses()
    if selected_by == "address" and not addresses:
        pytest.skip("hostname -I gives no address for this host")
    this_server = addresses[0] if selected_by == "address" else "10.99.0.2"
    table = write_rank_table(tmp_path / "rank_table_4p.json", [
        ("10.99.0.1", [(0, 0), (1, 1)]), (this_server, [(4, 2), (5, 3)])])
    output = tmp_path / "output"
    env = {"SERVER_ID": this_server} if selected_by == "SERVER_ID" else {}
    result = launch("run_distribute_train.sh", [table, "2", "--output_dir", str(output)],
                    timeout=300, CONFIG=tiny_yaml, MINDRECORD_DIR=six_images, **env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert (f"training {tiny_yaml} on 2 of 4 x Ascend (server {this_server}) with {six_images}"
            in result.stdout)
    assert sorted(os.listdir(output)) == ["train_parallel2", "train_parallel3"]
    for rank, device in ((2, 4), (3, 5)):
        folder = output / f"train_parallel{rank}"
        log = (folder / "train.log").read_text()
        assert log.startswith(f"rank {rank} of 4 on Ascend device {device} "
                              f"(RANK_ID={rank} DEVICE_ID={device})\n")
        assert NO_ASCEND in log, log[-2000:]
        recorded = (folder / "env.log").read_text().splitlines()
        assert {"DEVICE_TARGET=Ascend", f"DEVICE_ID={device}", f"RANK_ID={rank}", "RANK_SIZE=4",
                f"CONFIG={tiny_yaml}", f"MINDRECORD_DIR={six_images}",
                f"RANK_TABLE_FILE={table}"} <= set(recorded)
        assert "Traceback" not in log
        assert f"rank {rank} exited with 2; see {folder / 'train.log'}" in result.stderr
    assert "Usage" not in result.stderr


@pytest.mark.slow
def test_zoo_standalone_form_starts_the_device_it_is_given(tiny_yaml, six_images, tmp_path):
    output = tmp_path / "output"
    result = launch("run_standalone_train.sh", ["3", "--output_dir", str(output)], timeout=300,
                    CONFIG=tiny_yaml, MINDRECORD_DIR=six_images)
    log_path = output / "device3" / "train.log"
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"training {tiny_yaml} on Ascend device 3 with {six_images}; log: {log_path}" \
        in result.stdout
    assert NO_ASCEND in log_path.read_text() and "Traceback" not in log_path.read_text()
    recorded = (output / "device3" / "env.log").read_text().splitlines()
    assert {"DEVICE_TARGET=Ascend", "DEVICE_ID=3", "RANK_ID=0", "RANK_SIZE=1"} <= set(recorded)
    assert result.stderr.splitlines()[-1].endswith(
        f"train.py stopped with exit code 2 (2: bad input or diverged, 130: interrupted, resume "
        f"with --resume auto); log: {log_path}")
    assert "Usage" not in result.stderr


@pytest.mark.slow
def test_zoo_standalone_form_trains_on_cpu(tiny_yaml, six_images, tmp_path):
    output = tmp_path / "output"
    result = launch("run_standalone_train.sh", [
        "0", "--batch_size", "2", "--stop_iter", "1", "--num_workers", "1", "--output_dir",
        str(output)], timeout=600, CONFIG=tiny_yaml, MINDRECORD_DIR=six_images,
        DEVICE_TARGET="CPU")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    name = shapes_config().name
    [checkpoint] = list_checkpoints(str(output), name)
    assert checkpoint == str(output / f"{name}_1.ckpt")
    assert f"done; last checkpoint: {checkpoint}" in (output / "device0" / "train.log").read_text()


@pytest.mark.slow
def test_ascend_without_a_rank_table_starts_msrun(tiny_yaml, six_images, tmp_path):
    """MindSpore >= 2.3 needs no rank table on Ascend: msrun starts the ranks (DEVICE_ID =
    local rank), which fail where MindSpore needs the device. They fail before joining the
    cluster, so msrun's scheduler waits CLUSTER_TIME_OUT seconds for them."""
    if MSRUN is None:
        pytest.skip(f"msrun not found in {VENV_BIN} or PATH (it comes with MindSpore >= 2.3)")
    output = tmp_path / "output"
    result = launch("run_distribute_train.sh", [tiny_yaml, six_images, "Ascend", "2",
                                                "--output_dir", str(output)],
                    timeout=300, MASTER_PORT=str(free_port()), CLUSTER_TIME_OUT="20")
    assert result.returncode != 0, result.stdout[-3000:]
    assert (f"training {tiny_yaml} on 2 of 2 x Ascend (machine 0, scheduler 127.0.0.1:"
            in result.stdout)
    assert result.stderr.splitlines()[-1].endswith(
        f"training failed (exit {result.returncode}); see {output}/log/worker_<rank>.log")
    # msrun stops the other worker as soon as one fails: at least one log names the device.
    logs = [(output / "log" / f"worker_{rank}.log") for rank in (0, 1)]
    assert any(NO_ASCEND in log.read_text() for log in logs if log.exists())


@pytest.mark.slow
@pytest.mark.parametrize("script, args", [
    ("eval.py", ["--image", "in.jpg:out.jpg", "--device_target", "GPU"]),
    ("export.py", ["--file_name", "model", "--device_target", "Ascend"]),
])
def test_a_bad_device_id_is_one_error_line(script, args, tmp_path):
    """DEVICE_ID is read on GPU/Ascend before any device is touched (src/runtime.py)."""
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, script), "--config", "yolact_plus_demo", "--ckpt",
         str(tmp_path / "none.ckpt")] + args, cwd=tmp_path, capture_output=True, text=True,
        timeout=300, env=launcher_env(DEVICE_ID="first"))
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith(f"{script}: error:")]
    assert len(errors) == 1 and errors[0].endswith("DEVICE_ID 'first': expected a device number")
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_two_msrun_machines_train_what_one_machine_trains(tiny_yaml, six_images, tmp_path):
    """Two launchers with one CPU worker each (NODE_RANK 0 and 1, WORKER_NUM 2, one
    MASTER_PORT) against one launcher with two workers: 2 steps, the same checkpoint, bit for
    bit. The second "machine" reaches the scheduler as 0.0.0.0: Linux connects that to this
    host, and msrun does not count it as a local address, so it starts no second scheduler
    (as on another machine, where MASTER_ADDR is not local)."""
    if MSRUN is None:
        pytest.skip(f"msrun not found in {VENV_BIN} or PATH (it comes with MindSpore >= 2.3)")
    train_args = ["--batch_size", "2", "--stop_iter", "2", "--num_workers", "1", "--log_every", "1"]
    env = {"PATH": os.pathsep.join([VENV_BIN, os.environ.get("PATH", "")])}
    one_machine = tmp_path / "one_machine"
    single = launch("run_distribute_train.sh", [tiny_yaml, six_images, "CPU", "2"] + train_args
                    + ["--output_dir", str(one_machine)], timeout=600,
                    MASTER_PORT=str(free_port()), **env)
    assert single.returncode == 0, single.stderr[-2000:] + tail(one_machine / "log" / "worker_0.log")

    two_machines = tmp_path / "two_machines"
    port = str(free_port())
    nodes = [subprocess.Popen(
        ["bash", os.path.join(SCRIPTS, "run_distribute_train.sh"), tiny_yaml, six_images, "CPU",
         "1"] + train_args + ["--output_dir", str(two_machines)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=launcher_env(WORKER_NUM="2", NODE_RANK=str(rank), MASTER_ADDR=address,
                         MASTER_PORT=port, **env))
        for rank, address in ((0, "127.0.0.1"), (1, "0.0.0.0"))]
    try:
        outputs = [node.communicate(timeout=600)[0] for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
    logs = "".join(f"--- worker_{rank}.log\n" + tail(two_machines / "log" / f"worker_{rank}.log")
                   for rank in (0, 1))
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(outputs)[-3000:] + logs
    assert "on 1 of 2 x CPU (machine 1, scheduler 0.0.0.0:" in outputs[1]
    # The second machine runs no scheduler; the first one's ranks are 0, the second's 1.
    assert sorted(os.listdir(two_machines / "log")) == ["scheduler.log", "worker_0.log",
                                                        "worker_1.log"]

    name = shapes_config().name
    [expected] = list_checkpoints(str(one_machine), name)
    [actual] = list_checkpoints(str(two_machines), name)
    assert os.path.basename(expected) == os.path.basename(actual) == f"{name}_2.ckpt"
    expected, actual = read_state(expected), read_state(actual)
    assert sorted(expected) == sorted(actual)
    different = [key for key in expected if not np.array_equal(expected[key], actual[key])]
    assert different == [], different[:5]
