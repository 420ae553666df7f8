"""The BLAS conv and matmul (``src/kernels/conv_gemm.py``) against ``nn.Conv2d`` and numpy,
forward and gradients, in graph mode; the model with ``model.kernels=cpu`` against the
portable model (outputs and gradients); the fallback when the BLAS wheel is missing."""
import sys

import numpy as np
import pytest
import mindspore as ms
from mindspore import nn, ops

from conftest import loss_and_grads, needs_compiler, tiny_config
from src.config.schema import replace
from src.kernels import build, conv_gemm, selection
from src.kernels.conv_gemm import GemmConv2d, matmul_op
from src.kernels.selection import resolve_kernels
from src.model.build import build_model

# Float32 rounding of sums of up to C*K*K = 245 products of unit-size terms, relative to the
# largest value compared.
TOLERANCE = 2e-6

# (N, C_in, C_out, H, W, kernel, stride, padding, bias): every kernel/stride/padding the
# model has (1x1 s1/s2 p0, 3x3 s1/s2 p0/p1, 7x7 s2 p3), odd and even sides, batch 1 to 3,
# images smaller than the kernel's reach, a 1x1 image. Stride 1 beyond a 1x1 runs on the
# grid (conv_gemm.cc): unpadded, padded, 5x5, a padding wider than the kernel (its data
# gradient takes the im2col path), and one large enough to be split into blocks on threads.
CASES = [
    (2, 5, 6, 11, 9, 1, 1, 0, False),
    (2, 6, 7, 9, 10, 1, 2, 0, True),
    (1, 4, 5, 8, 7, 3, 1, 1, True),
    (2, 3, 4, 13, 12, 3, 2, 1, False),
    (3, 2, 8, 15, 11, 3, 2, 0, True),
    (2, 3, 5, 17, 14, 7, 2, 3, False),
    (1, 3, 4, 2, 3, 7, 2, 3, True),
    (2, 5, 3, 1, 1, 3, 1, 1, True),
    (2, 4, 5, 9, 7, 3, 1, 0, False),
    (3, 5, 4, 6, 13, 3, 1, 1, False),
    (1, 3, 4, 2, 3, 3, 1, 1, True),
    (2, 3, 4, 8, 9, 5, 1, 2, True),
    (1, 2, 3, 7, 6, 3, 1, 3, False),
    (2, 16, 24, 37, 41, 3, 1, 1, False),
]


def relative_error(got, expected):
    return np.abs(got - expected).max() / max(np.abs(expected).max(), 1e-30)


def assert_close(got, expected, what):
    assert got.shape == expected.shape, what
    assert relative_error(got, expected) < TOLERANCE, (what, relative_error(got, expected))


@needs_compiler
@pytest.mark.parametrize("case", CASES, ids=lambda c: "n{}c{}o{}_{}x{}_k{}s{}p{}_b{:d}".format(*c))
def test_gemm_conv_equals_conv2d_forward_and_gradients(case):
    n, c_in, c_out, h, w, kernel, stride, padding, bias = case
    rng = np.random.default_rng(sum(case))
    conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, pad_mode="pad" if padding else "valid",
                     padding=padding, has_bias=bias)
    if bias:
        conv.bias.set_data(ms.Tensor(rng.normal(size=c_out), ms.float32))
    gemm = GemmConv2d.from_conv(conv)
    assert gemm.weight is conv.weight
    x = ms.Tensor(rng.normal(size=(n, c_in, h, w)), ms.float32)
    expected = conv(x).asnumpy()
    got = gemm(x).asnumpy()
    assert_close(got, expected, "forward")
    assert np.abs(expected).max() > 0.1
    cotangent = ms.Tensor(rng.normal(size=expected.shape), ms.float32)
    _, gx_gemm, gp_gemm = loss_and_grads(gemm, x, cotangent)
    _, gx_conv, gp_conv = loss_and_grads(conv, x, cotangent)
    assert_close(gx_gemm, gx_conv, "input gradient")
    assert set(gp_gemm) == set(gp_conv) == ({"weight", "bias"} if bias else {"weight"})
    for name in gp_gemm:
        assert np.abs(gp_conv[name]).max() > 0.1, name
        assert_close(gp_gemm[name], gp_conv[name], name + " gradient")


@needs_compiler
def test_gemm_conv_hand_computed_ones():
    """Ones in, a ones 3x3 kernel, stride 2, padding 1 on a 5x4 image: each output counts
    the in-image pixels of its window (4 in the top-left corner, 6 on the top edge, ...)."""
    layer = GemmConv2d.from_conv(nn.Conv2d(2, 1, 3, stride=2, pad_mode="pad", padding=1))
    layer.weight.set_data(ms.Tensor(np.ones((1, 2, 3, 3), np.float32)))
    got = layer(ms.Tensor(np.ones((1, 2, 5, 4), np.float32))).asnumpy()[0, 0]
    rows = np.array([2, 3, 2])[:, None]      # output rows 0, 1, 2 see input rows -1..1, 1..3, 3..5
    cols = np.array([2, 3])[None, :]         # output columns 0, 1 see -1..1, 1..3
    np.testing.assert_array_equal(got, 2 * rows * cols)


def test_gemm_conv_takes_only_the_convs_it_computes():
    assert GemmConv2d.fits(nn.Conv2d(4, 4, 3, stride=2, pad_mode="pad", padding=1))
    assert GemmConv2d.fits(nn.Conv2d(4, 4, 1, pad_mode="valid"))
    assert not GemmConv2d.fits(nn.Conv2d(4, 4, 3, pad_mode="same"))
    assert not GemmConv2d.fits(nn.Conv2d(4, 4, 3, pad_mode="pad", padding=(1, 0, 1, 1)))
    assert not GemmConv2d.fits(nn.Conv2d(4, 4, 3, dilation=2))
    assert not GemmConv2d.fits(nn.Conv2d(4, 4, 3, group=2))
    assert not GemmConv2d.fits(nn.ReLU())


class Product(nn.Cell):
    def __init__(self):
        super().__init__()
        self.matmul = matmul_op()

    def construct(self, a, b):
        return self.matmul(a, b)


@needs_compiler
# Small ones in one piece; on a team, a batch of 16 by whole products (Winograd's) and a single
# product cut in pieces along its rows and along its columns.
@pytest.mark.parametrize("shape_a, shape_b", [((5, 7), (7, 3)), ((4, 3, 6), (4, 6, 2)),
                                              ((16, 40, 64), (16, 64, 30)),
                                              ((300, 64), (64, 200)), ((70, 64), (64, 500))])
def test_blas_matmul_equals_numpy_with_gradients(shape_a, shape_b):
    rng = np.random.default_rng(len(shape_a))
    a = rng.normal(size=shape_a).astype(np.float32)
    b = rng.normal(size=shape_b).astype(np.float32)
    expected = a @ b
    cotangent = rng.normal(size=expected.shape).astype(np.float32)
    product = Product()

    def loss_fn(a, b, ct):
        return (product(a, b) * ct).sum()

    grad_fn = ops.grad(loss_fn, (0, 1))
    got = product(ms.Tensor(a), ms.Tensor(b)).asnumpy()
    grad_a, grad_b = ms.jit(grad_fn)(ms.Tensor(a), ms.Tensor(b), ms.Tensor(cotangent))
    assert_close(got, expected, "product")
    assert_close(grad_a.asnumpy(), cotangent @ np.swapaxes(b, -1, -2), "gradient of a")
    assert_close(grad_b.asnumpy(), np.swapaxes(a, -1, -2) @ cotangent, "gradient of b")


def _model_pair(config, train):
    """(cpu-kernel model, portable model) with the same random weights. BatchNorm is frozen
    (the trainer's setting below 6 images per device): with batch statistics, the gradient
    of a bias in front of a BatchNorm (the DCN's) is zero but for rounding, and comparing
    rounding noise says nothing."""
    ms.set_seed(5)
    kernel_model = build_model(replace(config, **{"model.kernels": "cpu"}), freeze_bn=True)
    ms.set_seed(5)
    portable_model = build_model(replace(config, **{"model.kernels": "portable"}),
                                 freeze_bn=True)
    rng = np.random.default_rng(6)
    for (name, param), (other_name, other) in zip(kernel_model.parameters_and_names(),
                                                  portable_model.parameters_and_names()):
        assert param.name == other.name
        value = rng.normal(0, 0.1, param.shape).astype(np.float32)
        if "moving_variance" in name:
            value = np.abs(value) + 1
        param.set_data(ms.Tensor(value))
        other.set_data(ms.Tensor(value))
    for model in (kernel_model, portable_model):
        model.set_train(train)
    return kernel_model, portable_model


@needs_compiler
def test_every_model_conv_runs_on_the_blas():
    """Every conv of the tiny YOLACT++ (backbone 7x7/3x3/1x1 incl. strided and the DCN offset
    convs, FPN, protonet, heads, semantic head) leaves MindSpore's conv, but the mask
    re-scoring net's."""
    kernel_model, portable_model = _model_pair(tiny_config(), train=False)
    kinds = {}
    for name, cell in kernel_model.cells_and_names():
        kinds.setdefault(type(cell).__name__, []).append(name)
    portable_convs = [name for name, cell in portable_model.cells_and_names()
                      if isinstance(cell, nn.Conv2d)]
    maskiou_convs = [name for name in portable_convs if name.startswith("maskiou_net.")]
    assert len(maskiou_convs) == 6 and sorted(kinds["Conv2d"]) == sorted(maskiou_convs)
    assert (sorted(kinds["GemmConv2d"] + kinds["WinogradConv2d"] + kinds["Conv2d"])
            == sorted(portable_convs))
    assert "backbone.conv1" in kinds["GemmConv2d"]
    assert any(name.endswith("conv_offset_mask") for name in kinds["GemmConv2d"])


class CotangentLoss(nn.Cell):
    """sum over the model's train outputs and ``maskiou_net(masks)`` of output x cotangent
    (the cotangents fixed, one per output in that order)."""

    def __init__(self, model, cotangents):
        super().__init__()
        self.model = model
        self.cotangents = [ms.Tensor(c, ms.float32) for c in cotangents]

    def construct(self, images, masks):
        total = (self.model.maskiou_net(masks) * self.cotangents[-1]).sum()
        outputs = self.model(images)
        for index in range(len(outputs)):
            total = total + (outputs[index] * self.cotangents[index]).sum()
        return total


@pytest.mark.slow
@needs_compiler
def test_model_outputs_and_gradients_match_portable():
    """The tiny YOLACT++ (DCN, maskiou net) in train mode: outputs, and the gradients of
    sum(outputs x fixed random cotangents) for every parameter, equal the portable model's
    within float32 rounding: 1e-5 of each output's largest value, 5e-5 of each gradient's
    (measured: 7e-7 and 6e-6; the gradients go back through every layer's reordered sums)."""
    config = tiny_config()
    kernel_model, portable_model = _model_pair(config, train=True)
    rng = np.random.default_rng(7)
    images = ms.Tensor(rng.normal(size=(2, 3, config.max_size, config.max_size)), ms.float32)
    masks = ms.Tensor(rng.uniform(size=(3, 1, config.max_size // 4, config.max_size // 4)),
                      ms.float32)
    results = []
    for model in (kernel_model, portable_model):
        outputs = tuple(o.asnumpy() for o in model(images)) + (
            model.maskiou_net(masks).asnumpy(),)
        loss_net = CotangentLoss(model, [np.random.default_rng(8).normal(size=o.shape)
                                         for o in outputs])
        grad_fn = ms.value_and_grad(loss_net, None, model.trainable_params())
        loss, grads = ms.jit(grad_fn)(images, masks)
        results.append((outputs, loss.asnumpy(),
                        {p.name: g.asnumpy() for p, g in zip(model.trainable_params(), grads)}))
    (out_k, loss_k, grads_k), (out_p, loss_p, grads_p) = results
    for got, expected in zip(out_k, out_p):
        assert relative_error(got, expected) < 1e-5
    assert abs(loss_k - loss_p) < 1e-4 * abs(loss_p)
    assert sorted(grads_k) == sorted(grads_p)
    for name, expected in grads_p.items():
        assert relative_error(grads_k[name], expected) < 5e-5, name


def test_missing_blas_falls_back_like_a_missing_compiler(monkeypatch):
    """No scipy-openblas32: ``auto`` warns once and gives the portable model, ``cpu`` is the
    one-line error naming the package."""
    monkeypatch.setitem(sys.modules, "scipy_openblas32", None)  # import raises ImportError
    conv_gemm.blas_link_flags.cache_clear()
    selection._warn_fallback.cache_clear()
    try:
        with pytest.warns(UserWarning, match="scipy-openblas32"):
            assert not resolve_kernels("auto", "CPU")
        with pytest.raises(build.KernelBuildError, match="pip install 'scipy-openblas32") as error:
            build_model(replace(tiny_config(), **{"model.kernels": "cpu"}))
        assert "\n" not in str(error.value) and "model.kernels=portable" in str(error.value)
    finally:
        conv_gemm.blas_link_flags.cache_clear()
