"""The C++ CPU kernels: Winograd 3x3 conv against nn.Conv2d (forward and gradients) and a
hand-computed case, the kernel choice of build_model, the same model on both paths, and
the compiler cache. The DCN kernel is tested with the other DCNs in test_dcn.py."""
import os

import numpy as np
import pytest
import mindspore as ms
from mindspore import nn

from conftest import loss_and_grads, tiny_config
from src.config.schema import replace
from src.kernels import build
from src.kernels.winograd import WinogradConv2d
from src.model.build import build_model, uses_cpu_kernels

# (N, C_in, C_out, H, W): odd and even sides, a 1x1 image, batch 2.
SHAPES = [(2, 3, 5, 7, 8), (1, 4, 6, 6, 5), (1, 5, 3, 1, 1)]


@pytest.mark.parametrize("shape", SHAPES)
def test_winograd_equals_conv2d_forward_and_gradients(shape):
    n, c_in, c_out, h, w = shape
    rng = np.random.default_rng(sum(shape))
    winograd = WinogradConv2d(c_in, c_out)
    winograd.bias.set_data(ms.Tensor(rng.normal(size=c_out), ms.float32))
    conv = nn.Conv2d(c_in, c_out, 3, pad_mode="pad", padding=1, has_bias=True)
    conv.weight.set_data(winograd.weight.value())
    conv.bias.set_data(winograd.bias.value())
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


def test_winograd_hand_computed_ones():
    """Ones in, ones kernel, bias 1: each output counts its in-image neighbours + 1:
    4 + 1 in a corner, 6 + 1 on an edge, 9 + 1 inside. H = 5 ends in a half-empty tile."""
    layer = WinogradConv2d(2, 1)
    layer.weight.set_data(ms.Tensor(np.ones((1, 2, 3, 3), np.float32)))
    layer.bias.set_data(ms.Tensor(np.ones(1, np.float32)))
    got = layer(ms.Tensor(np.ones((1, 2, 5, 4), np.float32))).asnumpy()[0, 0]
    rows = np.array([2, 3, 3, 3, 2])[:, None]
    cols = np.array([2, 3, 3, 2])[None, :]
    np.testing.assert_allclose(got, 2 * rows * cols + 1, atol=1e-5, rtol=0)
    assert got[0, 0] == pytest.approx(9.0) and got[2, 1] == pytest.approx(19.0)


def test_kernel_choice():
    config = tiny_config()
    assert config.model.kernels == "auto"
    assert uses_cpu_kernels(config)  # the tests run on the CPU device
    assert not uses_cpu_kernels(replace(config, **{"model.kernels": "portable"}))
    with pytest.raises(ValueError, match="model.kernels must be one of"):
        uses_cpu_kernels(replace(config, **{"model.kernels": "gpu"}))


def test_model_same_on_cpu_kernels_and_portable():
    """Same weights, same eval outputs; the kernels replace exactly the DCN and the 3x3
    stride-1 convs outside the backbone."""
    config = tiny_config(max_size=128, **{"model.use_maskiou": False})
    ms.set_seed(3)
    kernel_model = build_model(config)
    portable_model = build_model(replace(config, **{"model.kernels": "portable"}))
    kinds = {type(cell).__name__ for _, cell in kernel_model.cells_and_names()}
    assert "WinogradConv2d" in kinds
    assert "WinogradConv2d" not in {type(c).__name__ for _, c in portable_model.cells_and_names()}
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


def test_auto_without_a_compiler_warns_and_stays_portable(monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-xyz")
    config = tiny_config()
    with pytest.warns(UserWarning, match="install g\\+\\+"):
        assert not uses_cpu_kernels(config)
    assert uses_cpu_kernels(replace(config, **{"model.kernels": "cpu"}))  # fails at build


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
