"""DCNv2 layer: the three implementations against an independent numpy DCNv2, against each
other (forward and gradients), and on hand-checkable cases."""
import numpy as np
import pytest
import mindspore as ms

from conftest import loss_and_grads, needs_compiler
from src.model.dcn import ModulatedDeformConv2d, dcnv2_offset_channel_order

N, C_IN, C_OUT, SIZE = 2, 4, 5, 7
# The C++ kernel needs a compiler; the others run everywhere.
TESTED_IMPLS = (pytest.param("kernel", marks=needs_compiler), "fast", "native")
STRIDES = (1, 2)


def conv2d_numpy(x, weight, bias, stride):
    """Plain 3x3 conv, padding 1: x [N, C, H, W], weight [O, C, 3, 3] -> [N, O, Ho, Wo]."""
    n, _, h, w = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    h_out, w_out = (h - 1) // stride + 1, (w - 1) // stride + 1
    out = np.zeros((n, weight.shape[0], h_out, w_out), np.float64)
    for ky in range(3):
        for kx in range(3):
            window = padded[:, :, ky:ky + stride * h_out:stride, kx:kx + stride * w_out:stride]
            out += np.einsum("nchw,oc->nohw", window, weight[:, :, ky, kx])
    return out + bias[None, :, None, None]


def bilinear_zero_outside(image, y, x):
    """image [C, H, W]; y, x [P] float -> [C, P]; every corner outside the image reads 0."""
    _, h, w = image.shape
    y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
    out = np.zeros((image.shape[0], y.size))
    for cy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for cx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            inside = (cy >= 0) & (cy < h) & (cx >= 0) & (cx < w)
            values = image[:, np.clip(cy, 0, h - 1), np.clip(cx, 0, w - 1)]
            out += values * (wy * wx * inside)
    return out


def dcnv2_reference(x, weight, bias, offset_weight, offset_bias, stride):
    """DCNv2 in the authors' layout: offset conv channel 2k = dy of tap k, 2k+1 = dx, 18+k mask.

    Returns (output [N, O, Ho, Wo], fraction of samples with a corner outside the image).
    """
    n, _, h, w = x.shape
    offset_mask = conv2d_numpy(x, offset_weight, offset_bias, stride)
    h_out, w_out = offset_mask.shape[2:]
    rows, cols = np.meshgrid(np.arange(h_out), np.arange(w_out), indexing="ij")
    out = np.zeros((n, weight.shape[0], h_out, w_out))
    touches_outside = []
    for b in range(n):
        for k in range(9):
            ky, kx = divmod(k, 3)
            y = (rows * stride - 1 + ky + offset_mask[b, 2 * k]).ravel()
            x_pos = (cols * stride - 1 + kx + offset_mask[b, 2 * k + 1]).ravel()
            mask = 1 / (1 + np.exp(-offset_mask[b, 18 + k].ravel()))
            sampled = bilinear_zero_outside(x[b], y, x_pos) * mask
            out[b] += (weight[:, :, ky, kx] @ sampled).reshape(-1, h_out, w_out)
            touches_outside.append((np.floor(y) < 0) | (np.floor(y) + 1 > h - 1)
                                   | (np.floor(x_pos) < 0) | (np.floor(x_pos) + 1 > w - 1))
    return out + bias[None, :, None, None], np.mean(np.concatenate(touches_outside))


def random_params(seed):
    """Layer parameters with offsets of a few pixels (fractional, some landing outside)."""
    rng = np.random.default_rng(seed)
    return {
        "x": rng.normal(size=(N, C_IN, SIZE, SIZE)),
        "weight": rng.normal(scale=0.3, size=(C_OUT, C_IN, 3, 3)),
        "bias": rng.normal(size=C_OUT),
        "offset_weight": rng.normal(scale=0.25, size=(27, C_IN, 3, 3)),
        "offset_bias": rng.uniform(-2.5, 2.5, size=27),
    }


def load(layer, weight, bias, offset_weight_ours, offset_bias_ours):
    for param, value in ((layer.weight, weight), (layer.bias, bias),
                         (layer.conv_offset_mask.weight, offset_weight_ours),
                         (layer.conv_offset_mask.bias, offset_bias_ours)):
        param.set_data(ms.Tensor(np.asarray(value, np.float32)))


def load_dcnv2(layer, params):
    """Load parameters given in the authors' layout, converted with our permutation."""
    perm = dcnv2_offset_channel_order()
    load(layer, params["weight"], params["bias"], params["offset_weight"][perm],
         params["offset_bias"][perm])


def run(layer, x):
    return layer(ms.Tensor(np.asarray(x, np.float32))).asnumpy()


@pytest.fixture(scope="module")
def layers():
    """``layers(impl, stride)``: one layer per (impl, stride), built on first use and shared
    by every test (each test loads its weights)."""
    built = {}

    def layer(impl, stride):
        if (impl, stride) not in built:
            built[impl, stride] = ModulatedDeformConv2d(C_IN, C_OUT, stride=stride, impl=impl)
        return built[impl, stride]

    return layer


def test_offset_channel_order():
    perm = dcnv2_offset_channel_order()
    assert sorted(perm.tolist()) == list(range(27))
    # Tap 4 (centre): our dx at 4 comes from DCNv2's channel 9, our dy at 13 from channel 8.
    assert perm[4] == 9 and perm[13] == 8 and perm[22] == 22
    assert perm[0] == 1 and perm[9] == 0 and perm[8] == 17 and perm[17] == 16


def test_parameter_names_and_init():
    layer = ModulatedDeformConv2d(3, 6, stride=2)
    shapes = {name: tuple(p.shape) for name, p in layer.parameters_and_names()}
    assert shapes == {"weight": (6, 3, 3, 3), "bias": (6,),
                      "conv_offset_mask.weight": (27, 3, 3, 3), "conv_offset_mask.bias": (27,)}
    for name, param in layer.parameters_and_names():
        if name != "weight":
            assert not param.asnumpy().any(), name
    assert layer.conv_offset_mask.stride == (2, 2)


@pytest.mark.parametrize("stride", STRIDES)
@pytest.mark.parametrize("impl", TESTED_IMPLS)
def test_matches_dcnv2_reference(layers, impl, stride):
    params = random_params(seed=stride)
    expected, outside = dcnv2_reference(params["x"], params["weight"], params["bias"],
                                        params["offset_weight"], params["offset_bias"], stride)
    assert 0.05 < outside < 0.8  # the case exercises the zero-outside rule
    layer = layers(impl, stride)
    load_dcnv2(layer, params)
    got = run(layer, params["x"])
    assert got.shape == (N, C_OUT, (SIZE - 1) // stride + 1, (SIZE - 1) // stride + 1)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("stride", STRIDES)
@pytest.mark.parametrize("impl", TESTED_IMPLS[:2])
def test_equals_native_forward_and_gradients(layers, impl, stride):
    params = random_params(seed=10 + stride)
    x = ms.Tensor(params["x"].astype(np.float32))
    h_out = (SIZE - 1) // stride + 1
    cotangent = ms.Tensor(np.random.default_rng(20 + stride)
                          .normal(size=(N, C_OUT, h_out, h_out)).astype(np.float32))
    results = {}
    for name in (impl, "native"):
        layer = layers(name, stride)
        load_dcnv2(layer, params)
        results[name] = (run(layer, params["x"]),) + loss_and_grads(layer, x, cotangent)
    (out_f, loss_f, gx_f, gp_f), (out_n, loss_n, gx_n, gp_n) = results[impl], results["native"]
    np.testing.assert_allclose(out_f, out_n, atol=1e-5, rtol=0)
    np.testing.assert_allclose(loss_f, loss_n, atol=1e-4, rtol=1e-6)
    assert np.abs(gx_n).max() > 0.1
    np.testing.assert_allclose(gx_f, gx_n, atol=1e-5, rtol=0)
    assert set(gp_f) == {"weight", "bias", "conv_offset_mask.weight", "conv_offset_mask.bias"}
    for name, grad in gp_n.items():
        assert np.abs(grad).max() > 0.01, name  # every parameter (offsets too) gets a gradient
        scale = max(1.0, np.abs(grad).max())
        np.testing.assert_allclose(gp_f[name], grad, atol=1e-5 * scale, rtol=0, err_msg=name)


@pytest.mark.parametrize("stride", STRIDES)
@pytest.mark.parametrize("impl", TESTED_IMPLS)
def test_zero_offsets_saturated_mask_is_plain_conv(layers, impl, stride):
    rng = np.random.default_rng(30 + stride)
    x = rng.normal(size=(N, C_IN, SIZE, SIZE))
    weight = rng.normal(size=(C_OUT, C_IN, 3, 3))
    bias = rng.normal(size=C_OUT)
    offset_bias = np.concatenate([np.zeros(18), np.full(9, 30.0)])  # mask = sigmoid(30) ~ 1
    layer = layers(impl, stride)
    load(layer, weight, bias, np.zeros((27, C_IN, 3, 3)), offset_bias)
    np.testing.assert_allclose(run(layer, x), conv2d_numpy(x, weight, bias, stride),
                               atol=1e-4, rtol=0)


@pytest.mark.parametrize("impl", TESTED_IMPLS)
def test_hand_checked_half_pixel_shift(layers, impl):
    """Ones in, ones weight, mask 0.5, every tap shifted down by half a pixel (dy = 0.5).

    A pixel sums 3 rows x 3 columns of samples times C_IN = 4 channels times 0.5. A sample
    row at y = -0.5 or y = H - 0.5 puts half its weight on the zero outside and reads 0.5;
    one at y = H + 0.5 reads 0. Rows of samples per output row, summed:
    top (-0.5, 0.5, 1.5) -> 2.5; interior -> 3; second to last (.., H - 0.5) -> 2.5;
    last (H - 1.5, H - 0.5, H + 0.5) -> 1.5. Left/right columns lose a column of samples.
    So the interior is 3 * 3 * 4 * 0.5 = 18 and the bottom row 1.5 * 3 * 4 * 0.5 = 9.
    """
    offset_bias = np.zeros(27)
    offset_bias[9:18] = 0.5  # our layout: dy of every tap
    layer = layers(impl, 1)
    load(layer, np.ones((C_OUT, C_IN, 3, 3)), np.zeros(C_OUT), np.zeros((27, C_IN, 3, 3)),
         offset_bias)
    got = run(layer, np.ones((N, C_IN, SIZE, SIZE)))
    row_sum = np.array([2.5] + [3.0] * (SIZE - 3) + [2.5, 1.5])
    col_count = np.array([2.0] + [3.0] * (SIZE - 2) + [2.0])
    expected = row_sum[:, None] * col_count[None, :] * C_IN * 0.5
    assert expected[SIZE // 2, SIZE // 2] == 18.0 and expected[-1, 3] == 9.0
    np.testing.assert_allclose(got, np.broadcast_to(expected, got.shape), atol=1e-5, rtol=0)
