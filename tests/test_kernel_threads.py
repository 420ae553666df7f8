"""How the C++ CPU kernels' threads run, measured in fresh processes: a process's threads other
than the main one are timed over a quiet half second after a parallel kernel. With
OMP_WAIT_POLICY=active a team's idle threads spin through it, so that time shows how many
there are; with passive waiting (``src.runtime.set_cpu_env_defaults``'s default) they sleep.

- OMP_WAIT_POLICY=passive reaches the kernels' OpenMP runtime when ``src`` is imported first;
  one that imported MindSpore first is warned once with the fix; a value the user set is kept.
- The team is this rank's share of the usable CPUs (``src.runtime.kernel_threads``), not
  OMP_NUM_THREADS, which ``import mindspore`` sets to 1 for every process it starts.
- The results are the same bits on one thread and on all (how the work is cut does not
  follow the team's size).
"""
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import needs_compiler

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs one BLAS conv large enough to start an OpenMP team, waits half a second and prints
# the CPU seconds the process's threads other than the main one spent meanwhile.
IDLE_THREADS = """
import os, time, warnings
warnings.simplefilter("always")
{first_import}
import numpy as np
import mindspore as ms
from mindspore import nn
from src.kernels.selection import resolve_kernels
from src.kernels.conv_gemm import GemmConv2d
ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
assert resolve_kernels("cpu", "CPU")
conv = GemmConv2d.from_conv(nn.Conv2d(32, 32, 3, pad_mode="pad", padding=1, has_bias=False))
conv(ms.Tensor(np.ones((1, 32, 64, 64), np.float32))).asnumpy()

def other_threads_cpu_s():
    total = 0
    for task in os.listdir("/proc/self/task"):
        if int(task) != os.getpid():
            fields = open(f"/proc/self/task/{{task}}/stat").read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")

before = other_threads_cpu_s()
time.sleep(0.5)
print("policy", os.environ.get("OMP_WAIT_POLICY"), "idle_cpu_s", other_threads_cpu_s() - before)
"""


def run(first_import, **env):
    base = {key: value for key, value in os.environ.items()
            if key not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "LOCAL_WORKER_NUM")}
    result = subprocess.run([sys.executable, "-c", IDLE_THREADS.format(first_import=first_import)],
                            cwd=REPO, env={**base, **env}, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    policy, idle = result.stdout.split()[1], float(result.stdout.split()[3])
    late = [line for line in result.stderr.splitlines()
            if "RuntimeWarning: OMP_WAIT_POLICY=passive came too late" in line]
    return policy, idle, late


pytestmark = [needs_compiler, pytest.mark.skipif(
    not os.path.isdir("/proc/self/task") or len(os.sched_getaffinity(0)) < 2,
    reason="needs Linux /proc and two usable CPUs (an OpenMP team)")]


def test_importing_src_first_makes_idle_kernel_threads_sleep():
    policy, idle, late = run("import src")
    assert policy == "passive" and not late
    assert idle < 0.1, idle


def test_a_policy_the_user_set_is_kept_and_takes_effect():
    policy, idle, late = run("import src", OMP_WAIT_POLICY="active")
    assert policy == "active" and not late
    assert idle > 0.3, idle   # spinning through the half second


def test_mindspore_imported_first_is_warned_once_with_the_fix():
    _, _, late = run("import mindspore\nimport src")
    assert len(late) == 1, late
    assert "import src before mindspore, or set OMP_WAIT_POLICY=passive" in late[0]


def test_the_team_ignores_the_omp_num_threads_mindspore_gives_its_children():
    _, idle, _ = run("import src", OMP_WAIT_POLICY="active", OMP_NUM_THREADS="1")
    assert idle > 0.3, idle   # the team's second thread, spinning


def test_the_team_is_this_ranks_share_of_the_usable_cpus():
    _, idle, _ = run("import os\nos.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\n"
                     "import src", OMP_WAIT_POLICY="active")
    assert idle < 0.1, idle   # one usable CPU: no second thread
    ranks = str(len(os.sched_getaffinity(0)))
    _, idle, _ = run("import src", OMP_WAIT_POLICY="active", LOCAL_WORKER_NUM=ranks)
    assert idle < 0.1, idle   # as many ranks as CPUs: one thread each


# Forward and gradients of the BLAS convs (pointwise, grid, strided) and of a product large
# enough to be cut in pieces, saved to the .npz named by argv[1].
SAME_BITS = """
import sys
import numpy as np
import src
import mindspore as ms
from mindspore import nn
from src.kernels.conv_gemm import GemmConv2d, matmul_op
from src.kernels.selection import resolve_kernels
from tests.conftest import loss_and_grads
ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
assert resolve_kernels("cpu", "CPU")
rng = np.random.default_rng(0)
results = {}
for name, (c_in, c_out, kernel, stride, side) in {
        "pointwise": (48, 64, 1, 1, 40), "grid": (32, 40, 3, 1, 37),
        "strided": (24, 27, 3, 2, 41)}.items():
    conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, pad_mode="pad" if kernel > 1 else "valid",
                     padding=kernel // 2, has_bias=False)
    conv.weight.set_data(ms.Tensor(rng.normal(size=conv.weight.shape), ms.float32))
    gemm = GemmConv2d.from_conv(conv)
    x = ms.Tensor(rng.normal(size=(2, c_in, side, side)), ms.float32)
    y = gemm(x)
    cotangent = ms.Tensor(rng.normal(size=y.shape), ms.float32)
    _, grad_x, grad_params = loss_and_grads(gemm, x, cotangent)
    results.update({name: y.asnumpy(), name + "_dx": grad_x, name + "_dw": grad_params["weight"]})
a, b = (ms.Tensor(rng.normal(size=shape), ms.float32) for shape in ((300, 64), (64, 200)))
results["product"] = matmul_op()(a, b).asnumpy()
np.savez(sys.argv[1], **results)
"""


def test_results_are_the_same_bits_on_any_number_of_threads(tmp_path):
    outputs = []
    for ranks in ("1", str(len(os.sched_getaffinity(0)))):   # all CPUs, then one thread
        path = tmp_path / f"ranks{ranks}.npz"
        base = {key: value for key, value in os.environ.items() if key != "LOCAL_WORKER_NUM"}
        result = subprocess.run([sys.executable, "-c", SAME_BITS, str(path)], cwd=REPO,
                                env={**base, "LOCAL_WORKER_NUM": ranks}, capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        outputs.append(np.load(path))
    assert sorted(outputs[0].files) == sorted(outputs[1].files)
    for name in outputs[0].files:
        assert np.abs(outputs[0][name]).max() > 0.1, name
        assert np.array_equal(outputs[0][name], outputs[1][name]), name
