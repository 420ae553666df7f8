"""Shared test set-up: CPU environment defaults before MindSpore loads, graph mode."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from src.utils.cpu_env import set_cpu_env_defaults  # noqa: E402

set_cpu_env_defaults()
# The compile cache can silently reuse a stale graph when arguments change.
os.environ["MS_COMPILER_CACHE_ENABLE"] = "0"

import mindspore as ms  # noqa: E402

ms.set_context(mode=ms.GRAPH_MODE)
ms.set_device("CPU")

FIXTURES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "..", "shared", "fixtures")
