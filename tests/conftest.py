"""Shared test set-up: CPU environment defaults before MindSpore loads, graph mode."""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import src  # noqa: E402,F401  (the CPU environment defaults, before MindSpore loads)

# The compile cache can silently reuse a stale graph when arguments change.
os.environ["MS_COMPILER_CACHE_ENABLE"] = "0"

import mindspore as ms  # noqa: E402
from mindspore import ops  # noqa: E402

ms.set_context(mode=ms.GRAPH_MODE)
ms.set_device("CPU")

def _needs_compiler():
    import pytest

    from src.kernels.build import find_compiler

    return pytest.mark.skipif(find_compiler() is None,
                              reason="no C++ compiler (g++ or $CXX): the CPU kernels cannot be "
                                     "built here")


# Marks the tests that build the C++ CPU kernels.
needs_compiler = _needs_compiler()

FIXTURES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "..", "shared", "fixtures")


def loss_and_grads(layer, x, cotangent):
    """sum(layer(x) * cotangent) and its gradients wrt x and every parameter, as numpy; the
    gradients by parameter name (relative to ``layer``)."""
    def loss_fn(inputs):
        return (layer(inputs) * cotangent).sum()

    grad_fn = ops.value_and_grad(loss_fn, grad_position=0, weights=layer.trainable_params())

    @ms.jit
    def step(inputs):
        return grad_fn(inputs)

    loss, (grad_x, grad_params) = step(x)
    names = [p.name for p in layer.trainable_params()]
    return loss.asnumpy(), grad_x.asnumpy(), {n: g.asnumpy() for n, g in zip(names, grad_params)}


def load_authors_fixture():
    """The authors' loss fixture (``../shared/fixtures/authors_losses_256.npz``) as a dict.

    Skips when the shared folder is absent (a user's clone); CI always has it.
    """
    import numpy as np
    import pytest

    path = os.environ.get("YOLACT_FIXTURES",
                          os.path.join(FIXTURES_DIR, "authors_losses_256.npz"))
    if not os.path.exists(path):
        pytest.skip(f"authors' fixture not found at {path}")
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def tiny_config(name="yolact_plus_resnet50", max_size=256, num_classes=4, **changes):
    """A small variant of ``name`` for fast tests: one bottleneck per stage, narrow layers,
    ``num_classes - 1`` foreground classes. Same code paths (DCN, maskiou net) as the full
    model. 256 is the smallest common size at which the maskiou net's five stride-2 convs
    still fit the 64x64 prototype grid."""
    from src.config.variants import VARIANTS, for_dataset
    from src.config.schema import replace

    base = for_dataset(VARIANTS[name], [f"class{i}" for i in range(num_classes - 1)],
                       max_size=max_size, name=f"{name}_tiny")
    small = {"model.backbone.layers": (1, 1, 1, 1), "model.backbone.base_width": 8,
             "model.fpn_channels": 16, "model.proto_channels": 16, "model.num_prototypes": 8}
    small.update(changes)
    return replace(base, **small)


def save_detecting_checkpoint(config, path, seed=0):
    """Save a randomly initialised model of ``config`` whose class-1 logit is pushed up, so
    that many priors pass the 0.05 score threshold and post-processing has detections."""
    import numpy as np

    from src.model.build import build_model
    from src.checkpoint import save_checkpoint_atomic

    ms.set_seed(seed)
    model = build_model(config)
    head = model.prediction_head.conf_layer
    bias = np.zeros(head.bias.shape, np.float32)
    bias[1::config.num_classes] = 3.0
    head.bias.set_data(ms.Tensor(bias))
    save_checkpoint_atomic(model, path)
    return path


def load_tool(name):
    """The module of ``tools/<name>.py`` (the command-line tools are scripts, not a package)."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools",
                        name + ".py")
    spec = importlib.util.spec_from_file_location(f"tools_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_json(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def write_json(path, document):
    """Write ``document`` to ``path`` as JSON; returns the path as a string."""
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(document, handle)
    return str(path)
