"""The oneDNN ISA cap every way in: the Python API in a fresh process with the variable unset
runs its convolutions capped at AVX2, and MindSpore running before ``src`` is imported is
warned about once. Only an AVX-512 host can tell (elsewhere AVX2 is the ceiling anyway)."""
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def host_has_avx512():
    with open("/proc/cpuinfo", encoding="utf-8") as handle:
        return " avx512f" in handle.read()


pytestmark = pytest.mark.skipif(not (sys.platform == "linux" and host_has_avx512()),
                                reason="needs an AVX-512 host: elsewhere oneDNN's ISA is AVX2 "
                                       "or lower whatever the cap")

API_RUN = """
import numpy as np
from src.inference import Detector
from tests.conftest import tiny_config
detector = Detector(tiny_config(), device_target="CPU")
result = detector(np.full((60, 80, 3), 128, np.uint8))
print("detections", len(result["classes"]))
"""

LATE_IMPORT = """
import warnings
warnings.simplefilter("always")
import numpy as np
import mindspore as ms
from mindspore import Tensor, nn
ms.set_context(mode=ms.PYNATIVE_MODE)
nn.Conv2d(3, 8, 3)(Tensor(np.zeros((1, 3, 16, 16), np.float32)))
import src
from src.config.load import load_config
from src.model.build import build_model
from src.runtime import set_cpu_env_defaults
set_cpu_env_defaults()
build_model(load_config("yolact_plus_demo"))
"""


def run(code, **env):
    base = {key: value for key, value in os.environ.items() if key != "ONEDNN_MAX_CPU_ISA"}
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**base, **env},
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_the_api_caps_the_isa_in_a_fresh_process():
    result = run(API_RUN, ONEDNN_VERBOSE="1")
    assert result.returncode == 0, result.stderr[-2000:]
    isa_lines = [line for line in result.stdout.splitlines() if ",info,cpu,isa:" in line]
    assert isa_lines == ["onednn_verbose,v1,info,cpu,isa:Intel AVX2"], isa_lines
    convolutions = [line for line in result.stdout.splitlines() if ",exec,cpu,convolution," in line]
    assert convolutions and not [line for line in convolutions if "ref:any" in line]


def test_mindspore_running_before_src_is_warned_once():
    result = run(LATE_IMPORT)
    assert result.returncode == 0, result.stderr[-2000:]
    warnings = [line for line in result.stderr.splitlines()
                if "RuntimeWarning: ONEDNN_MAX_CPU_ISA=AVX2 came too late" in line]
    assert len(warnings) == 1, result.stderr[-2000:]
    assert "set ONEDNN_MAX_CPU_ISA=AVX2 in the environment before starting Python" in warnings[0]


def test_mindspore_imported_before_src_but_not_run_is_in_time():
    result = run("import mindspore\nimport warnings\nwarnings.simplefilter('always')\n"
                 "import src\nfrom src.runtime import effective_onednn_isa\n"
                 "print(hex(effective_onednn_isa()))")
    assert result.returncode == 0 and "came too late" not in result.stderr, result.stderr
    assert result.stdout.split()[-1] == "0x7"   # dnnl_cpu_isa_avx2
