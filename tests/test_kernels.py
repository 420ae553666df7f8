"""The C++ CPU kernels: Winograd 3x3 conv against nn.Conv2d (forward and gradients) and a
hand-computed case, the kernel choice (``src.kernels.selection``), the same model on both
paths, and the compiler cache. The DCN kernel is tested with the other DCNs in test_dcn.py.
Tests that build the kernels skip, naming the reason, where no C++ compiler is found."""
import os
import subprocess
import sys

import numpy as np
import pytest
import mindspore as ms
from mindspore import nn

from conftest import loss_and_grads, needs_compiler, tiny_config
from src.config.schema import replace
from src.kernels import build
from src.kernels import selection
from src.kernels.selection import resolve_kernels
from src.kernels.winograd import WinogradConv2d
from src.model.build import build_model
from tests.test_train import six_images  # noqa: F401  (fixture)

# (N, C_in, C_out, H, W): odd and even sides, a 1x1 image, batch 2.
SHAPES = [(2, 3, 5, 7, 8), (1, 4, 6, 6, 5), (1, 5, 3, 1, 1)]


def conv3x3(c_in, c_out):
    return nn.Conv2d(c_in, c_out, 3, pad_mode="pad", padding=1, has_bias=True)


@needs_compiler
@pytest.mark.parametrize("shape", SHAPES)
def test_winograd_equals_conv2d_forward_and_gradients(shape):
    n, c_in, c_out, h, w = shape
    rng = np.random.default_rng(sum(shape))
    conv = conv3x3(c_in, c_out)
    conv.bias.set_data(ms.Tensor(rng.normal(size=c_out), ms.float32))
    winograd = WinogradConv2d.from_conv(conv3x3(c_in, c_out))
    winograd.weight.set_data(conv.weight.value())
    winograd.bias.set_data(conv.bias.value())
    x = ms.Tensor(rng.normal(size=(n, c_in, h, w)), ms.float32)
    cotangent = ms.Tensor(rng.normal(size=(n, c_out, h, w)), ms.float32)
    out_w, out_c = winograd(x).asnumpy(), conv(x).asnumpy()
    _, gx_w, gp_w = loss_and_grads(winograd, x, cotangent)
    _, gx_c, gp_c = loss_and_grads(conv, x, cotangent)
    assert out_w.shape == (n, c_out, h, w)
    np.testing.assert_allclose(out_w, out_c, atol=1e-5, rtol=0)
    np.testing.assert_allclose(gx_w, gx_c, atol=1e-5, rtol=0)
    assert set(gp_w) == {"weight", "bias"}
    for name in gp_w:
        assert np.abs(gp_c[name]).max() > 0.1, name
        np.testing.assert_allclose(gp_w[name], gp_c[name], atol=1e-5, rtol=0, err_msg=name)


@needs_compiler
def test_winograd_hand_computed_ones():
    """Ones in, ones kernel, bias 1: each output counts its in-image neighbours + 1:
    4 + 1 in a corner, 6 + 1 on an edge, 9 + 1 inside. H = 5 ends in a half-empty tile."""
    layer = WinogradConv2d.from_conv(conv3x3(2, 1))
    layer.weight.set_data(ms.Tensor(np.ones((1, 2, 3, 3), np.float32)))
    layer.bias.set_data(ms.Tensor(np.ones(1, np.float32)))
    got = layer(ms.Tensor(np.ones((1, 2, 5, 4), np.float32))).asnumpy()[0, 0]
    rows = np.array([2, 3, 3, 3, 2])[:, None]
    cols = np.array([2, 3, 3, 2])[None, :]
    np.testing.assert_allclose(got, 2 * rows * cols + 1, atol=1e-5, rtol=0)
    assert got[0, 0] == pytest.approx(9.0) and got[2, 1] == pytest.approx(19.0)


def test_winograd_takes_only_the_convs_it_computes():
    assert WinogradConv2d.fits(conv3x3(4, 4))
    assert not WinogradConv2d.fits(nn.Conv2d(4, 4, 3, stride=2, pad_mode="pad", padding=1,
                                             has_bias=True))
    assert not WinogradConv2d.fits(nn.Conv2d(4, 4, 3, pad_mode="pad", padding=1))  # no bias
    assert not WinogradConv2d.fits(nn.Conv2d(4, 4, 1, has_bias=True))
    assert not WinogradConv2d.fits(nn.ReLU())


@needs_compiler
def test_kernel_choice():
    assert tiny_config().model.kernels == "auto"
    assert resolve_kernels("auto", "CPU")  # the tests run on the CPU device
    assert resolve_kernels("cpu", "CPU")
    assert not resolve_kernels("auto", "GPU") and not resolve_kernels("portable", "CPU")
    with pytest.raises(build.KernelBuildError, match="model.kernels=cpu needs --device_target CPU"):
        resolve_kernels("cpu", "Ascend")


@needs_compiler
def test_model_same_on_cpu_kernels_and_portable():
    """Same weights, same eval outputs; the kernels replace exactly the DCN and the 3x3
    stride-1 convs outside the backbone."""
    config = tiny_config(max_size=128, **{"model.use_maskiou": False})
    ms.set_seed(3)
    kernel_model = build_model(config)
    ms.set_seed(3)
    portable_model = build_model(replace(config, **{"model.kernels": "portable"}))
    kinds = {}
    for name, cell in kernel_model.cells_and_names():
        kinds.setdefault(type(cell).__name__, []).append(name)
    # Every 3x3 stride-1 conv outside the backbone: FPN 3, protonet 4, head 4.
    assert len(kinds["WinogradConv2d"]) == 11
    assert not any(name.startswith("backbone.") for name in kinds["WinogradConv2d"])
    assert {cell.impl for _, cell in kernel_model.cells_and_names()
            if type(cell).__name__ == "ModulatedDeformConv2d"} == {"kernel"}
    assert "WinogradConv2d" not in {type(c).__name__ for _, c in portable_model.cells_and_names()}
    # The swap keeps the parameters: the same seed gives the same initial weights and names.
    initial = {name: param.asnumpy() for name, param in portable_model.parameters_and_names()}
    swapped = {param.name: param.asnumpy() for param in kernel_model.get_parameters()}
    assert sorted(swapped) == sorted(initial)
    assert all(np.array_equal(swapped[name], initial[name]) for name in initial)
    rng = np.random.default_rng(4)
    weights = {}
    for name, param in kernel_model.parameters_and_names():
        value = rng.normal(0, 0.1, param.shape).astype(np.float32)
        if "moving_variance" in name:
            value = np.abs(value) + 1
        weights[name] = value
        param.set_data(ms.Tensor(value))
    for name, param in portable_model.parameters_and_names():
        param.set_data(ms.Tensor(weights[name]))
    assert len(weights) == len(list(portable_model.get_parameters()))
    for model in (kernel_model, portable_model):
        model.set_train(False)
    images = ms.Tensor(rng.normal(size=(1, 3, 128, 128)), ms.float32)
    for got, expected in zip(kernel_model(images), portable_model(images)):
        expected = expected.asnumpy()
        scale = max(1.0, np.abs(expected).max())
        np.testing.assert_allclose(got.asnumpy(), expected, atol=2e-5 * scale, rtol=0)


@pytest.mark.parametrize("compiler, message", [
    ("no-such-compiler-xyz", "need a C\\+\\+ compiler"),
    ("false", "compiling .* failed"),        # a compiler that fails, as without OpenMP
])
def test_auto_falls_back_when_the_kernels_do_not_build(compiler, message, tmp_path, monkeypatch):
    """``auto``: a warning and the portable model; ``cpu``: the error, from build_model."""
    monkeypatch.setenv("CXX", compiler)
    monkeypatch.setenv("YOLACT_KERNEL_CACHE", str(tmp_path))
    build.library_path.cache_clear()
    selection._warn_fallback.cache_clear()   # it warns once per reason and process
    try:
        with pytest.warns(UserWarning, match=message):
            assert not resolve_kernels("auto", "CPU")
        with pytest.raises(build.KernelBuildError, match=message):
            build_model(replace(tiny_config(), **{"model.kernels": "cpu"}))
    finally:
        build.library_path.cache_clear()


def test_library_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("YOLACT_KERNEL_CACHE", str(tmp_path))
    first = build.library_path.__wrapped__("winograd")
    mtime = os.path.getmtime(first)
    assert os.path.dirname(first) == str(tmp_path) and first.endswith(".so")
    assert build.library_path.__wrapped__("winograd") == first
    assert os.path.getmtime(first) == mtime  # reused, not rebuilt
    assert [p.name for p in tmp_path.iterdir()] == [os.path.basename(first)]  # no temp left


def test_unwritable_cache_is_a_clear_error(tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("YOLACT_KERNEL_CACHE", str(blocker / "kernels"))
    with pytest.raises(build.KernelBuildError, match="YOLACT_KERNEL_CACHE"):
        build.library_path.__wrapped__("winograd")


def test_missing_compiler_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("YOLACT_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", "no-such-compiler-xyz")
    with pytest.raises(build.KernelBuildError, match="model.kernels=portable"):
        build.library_path.__wrapped__("winograd")


@pytest.mark.parametrize("script, args", [
    ("train.py", ["--mindrecord_dir", "{mindrecord}"]),
    ("eval.py", ["--ckpt", "unused.ckpt", "--image", "in.png:out.png"]),
])
def test_entry_scripts_report_kernels_that_cannot_build_in_one_line(script, args, six_images,
                                                                    tmp_path):
    """model.kernels=cpu without a compiler: exit 2, one error line, no traceback."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    args = [arg.format(mindrecord=six_images) for arg in args]
    env = dict(os.environ, CXX="no-such-compiler-xyz", YOLACT_KERNEL_CACHE=str(tmp_path / "k"))
    result = subprocess.run(
        [sys.executable, os.path.join(repo, script), "--config", "yolact_plus_demo", *args,
         "--opts", "model.kernels=cpu"], cwd=tmp_path, env=env, capture_output=True,
        text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(f"{script}: error: the CPU kernels") and "Traceback" not in \
        result.stderr, result.stderr[-2000:]
    assert "model.kernels=portable" in lines[-1]
