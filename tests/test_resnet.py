"""ResNet backbone: the authors' parameter totals, DCN placement, output sizes, and a tiny
network against an independent torch.nn.functional forward with the same weights."""
import numpy as np
import pytest
import mindspore as ms

from src.model.dcn import ModulatedDeformConv2d
from src.model.resnet import ResNet, StemMaxPool

torch = pytest.importorskip("torch")
F = torch.nn.functional

TINY = {"layers": (1, 2, 1, 1), "base_width": 4, "dcn_layers": (0, 1, 1, 1)}
# The authors' rule on TINY: stage 2 block 1 (the last of two), the single block of stages 3-4.
TINY_DCN_BLOCKS = {"layers.1.1", "layers.2.0", "layers.3.0"}
TINY_INPUT = 64


def trainable_total(cell):
    return sum(int(np.prod(p.shape)) for p in cell.trainable_params())


def dcn_block_names(model):
    return {name[:-len(".conv2")] for name, cell in model.cells_and_names()
            if isinstance(cell, ModulatedDeformConv2d)}


@pytest.mark.parametrize("layers, dcn_layers, dcn_interval, expected", [
    ((3, 4, 6, 3), (0, 0, 0, 0), 1, 23_508_032),
    ((3, 4, 6, 3), (0, 4, 6, 3), 1, 24_382_879),
    ((3, 4, 23, 3), (0, 0, 0, 0), 1, 42_500_160),
    ((3, 4, 23, 3), (0, 4, 23, 3), 3, 43_187_561),
])
def test_parameter_totals_match_authors(layers, dcn_layers, dcn_interval, expected):
    model = ResNet(layers, dcn_layers=dcn_layers, dcn_interval=dcn_interval)
    assert trainable_total(model) == expected


def test_dcn_placement_and_names_resnet101_plus():
    model = ResNet((3, 4, 23, 3), dcn_layers=(0, 4, 23, 3), dcn_interval=3)
    expected = ({"layers.1.0", "layers.1.3", "layers.3.0"}
                | {f"layers.2.{i}" for i in range(0, 23, 3)})
    assert len(expected) == 11
    assert dcn_block_names(model) == expected
    names = {name: tuple(p.shape) for name, p in model.parameters_and_names()}
    assert names["conv1.weight"] == (64, 3, 7, 7)
    assert names["layers.1.0.conv2.weight"] == (128, 128, 3, 3)
    assert names["layers.1.0.conv2.bias"] == (128,)
    assert names["layers.1.0.conv2.conv_offset_mask.weight"] == (27, 128, 3, 3)
    assert names["layers.1.0.downsample.0.weight"] == (512, 256, 1, 1)
    assert names["layers.1.0.downsample.1.moving_variance"] == (512,)
    assert names["layers.2.22.bn3.gamma"] == (1024,)
    assert "layers.1.1.conv2.bias" not in names and "layers.1.1.downsample.0.weight" not in names
    assert model.layers[1][0].conv2.conv_offset_mask.stride == (2, 2)


def test_dcn_placement_resnet50_plus():
    model = ResNet((3, 4, 6, 3), dcn_layers=(0, 4, 6, 3))
    assert dcn_block_names(model) == {f"layers.{s}.{b}" for s, n in ((1, 4), (2, 6), (3, 3))
                                      for b in range(n)}


def randomise(model, seed):
    """He-scaled random weights, small random offsets, random BN affine and statistics."""
    rng = np.random.default_rng(seed)
    for name, param in model.parameters_and_names():
        shape = tuple(param.shape)
        if "conv_offset_mask" in name:
            value = rng.normal(scale=0.3 if name.endswith("weight") else 1.0, size=shape)
        elif name.endswith("weight"):
            value = rng.normal(scale=np.sqrt(2.0 / np.prod(shape[1:])), size=shape)
        elif name.endswith(("beta", "moving_mean", "bias")):
            value = rng.normal(scale=0.3, size=shape)
        else:  # gamma, moving_variance
            value = rng.uniform(0.5, 1.5, size=shape)
        param.set_data(ms.Tensor(value.astype(np.float32)))


def numpy_params(model):
    return {name: p.asnumpy().copy() for name, p in model.parameters_and_names()}


def torch_dcn(x, weight, bias, offset_weight, offset_bias, stride):
    """DCNv2 from grid_sample: our offset layout [9 dx | 9 dy | 9 mask logits], tap 3*ky + kx;
    ``align_corners=True`` puts pixel centres at integers, ``zeros`` padding reads 0 outside."""
    offset_mask = F.conv2d(x, offset_weight, offset_bias, stride=stride, padding=1)
    n, _, h, w = x.shape
    h_out, w_out = offset_mask.shape[2:]
    rows = torch.arange(h_out, dtype=x.dtype).view(1, -1, 1) * stride
    cols = torch.arange(w_out, dtype=x.dtype).view(1, 1, -1) * stride
    out = bias.view(1, -1, 1, 1).expand(n, -1, h_out, w_out).clone()
    for k in range(9):
        ky, kx = divmod(k, 3)
        y = rows - 1 + ky + offset_mask[:, 9 + k]
        x_pos = cols - 1 + kx + offset_mask[:, k]
        grid = torch.stack((2 * x_pos / (w - 1) - 1, 2 * y / (h - 1) - 1), dim=-1)
        sampled = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        sampled = sampled * torch.sigmoid(offset_mask[:, 18 + k]).unsqueeze(1)
        out = out + torch.einsum("oc,nchw->nohw", weight[:, :, ky, kx], sampled)
    return out


def torch_resnet(x, params, layers, dcn_blocks):
    """torchvision ResNet v1.5 forward (eval BN, eps 1e-5) with our parameter names."""
    p = {name: torch.from_numpy(value).double() for name, value in params.items()}

    def bn(t, prefix):
        return F.batch_norm(t, p[prefix + ".moving_mean"], p[prefix + ".moving_variance"],
                            p[prefix + ".gamma"], p[prefix + ".beta"], training=False, eps=1e-5)

    t = F.relu(bn(F.conv2d(x, p["conv1.weight"], stride=2, padding=3), "bn1"))
    t = F.max_pool2d(t, kernel_size=3, stride=2, padding=1)
    outputs = []
    for stage, num_blocks in enumerate(layers):
        for index in range(num_blocks):
            name = f"layers.{stage}.{index}"
            stride = 2 if stage > 0 and index == 0 else 1
            out = F.relu(bn(F.conv2d(t, p[name + ".conv1.weight"]), name + ".bn1"))
            if name in dcn_blocks:
                out = torch_dcn(out, p[name + ".conv2.weight"], p[name + ".conv2.bias"],
                                p[name + ".conv2.conv_offset_mask.weight"],
                                p[name + ".conv2.conv_offset_mask.bias"], stride)
            else:
                out = F.conv2d(out, p[name + ".conv2.weight"], stride=stride, padding=1)
            out = F.relu(bn(out, name + ".bn2"))
            out = bn(F.conv2d(out, p[name + ".conv3.weight"]), name + ".bn3")
            if index == 0:
                shortcut = bn(F.conv2d(t, p[name + ".downsample.0.weight"], stride=stride),
                              name + ".downsample.1")
            else:
                shortcut = t
            t = F.relu(out + shortcut)
        outputs.append(t)
    return [o.numpy() for o in outputs[1:]]


@pytest.fixture(scope="module")
def tiny():
    """Tiny ResNet with random weights and BN statistics, the same weights frozen, the input
    and the torch reference outputs (C3, C4, C5)."""
    model = ResNet(**TINY)
    randomise(model, seed=0)
    frozen = ResNet(**TINY, freeze_bn=True)
    params = numpy_params(model)
    for name, param in frozen.parameters_and_names():
        param.set_data(ms.Tensor(params[name]))
    x = np.random.default_rng(1).normal(size=(1, 3, TINY_INPUT, TINY_INPUT))
    reference = torch_resnet(torch.from_numpy(x), params, TINY["layers"], TINY_DCN_BLOCKS)
    return model, frozen, x, reference


def run(model, x, training):
    model.set_train(training)
    return [o.asnumpy() for o in model(ms.Tensor(np.asarray(x, np.float32)))]


def test_tiny_dcn_placement(tiny):
    assert dcn_block_names(tiny[0]) == TINY_DCN_BLOCKS


def test_tiny_matches_torch_reference(tiny):
    model, _, x, reference = tiny
    outputs = run(model, x, training=False)
    for level, (got, expected) in enumerate(zip(outputs, reference)):
        size = TINY_INPUT // 2 ** (level + 3)
        assert got.shape == expected.shape == (1, 4 * 4 * 2 ** (level + 1), size, size)
        assert np.abs(expected).max() > 0.5  # the signal survived to this level
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4, err_msg=f"C{level + 3}")


def test_frozen_bn_trains_with_moving_statistics(tiny):
    model, frozen, x, reference = tiny
    before = numpy_params(frozen)
    outputs = run(frozen, x, training=True)
    for got, expected in zip(outputs, reference):
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
    after = numpy_params(frozen)
    assert all(np.array_equal(before[name], after[name]) for name in before)
    trainable = {p.name for p in frozen.trainable_params()}
    assert not any(name.endswith(("gamma", "beta")) for name in trainable)
    assert trainable_total(model) - trainable_total(frozen) == sum(
        value.size for name, value in before.items() if name.endswith(("gamma", "beta")))
    # Unfrozen, training mode normalises with batch statistics: a different output.
    weights = numpy_params(model)
    assert np.abs(run(model, x, training=True)[2] - reference[2]).max() > 1e-2
    for name, param in model.parameters_and_names():  # undo the moving-statistics update
        param.set_data(ms.Tensor(weights[name]))
    model.set_train(False)


def test_output_sizes_at_550(tiny):
    model = tiny[0]
    outputs = run(model, np.zeros((1, 3, 550, 550)), training=False)
    assert [o.shape for o in outputs] == [(1, 32, 69, 69), (1, 64, 35, 35), (1, 128, 18, 18)]


@pytest.mark.parametrize("side", [7, 8])
def test_stem_max_pool_equals_pytorch_padding_one(side):
    """Odd and even sides, forward and gradient, on a non-negative input (the stem's ReLU)."""
    rng = np.random.default_rng(side)
    x = np.maximum(rng.normal(size=(2, 3, side, side + 1)), 0).astype(np.float32)
    x[0, 0] = 0.0  # a plane of zeros: every window ties with the border
    cotangent = rng.normal(size=(2, 3, (side + 1) // 2, (side + 2) // 2)).astype(np.float32)
    pool = StemMaxPool()
    got = pool(ms.Tensor(x)).asnumpy()

    def loss_fn(inputs):
        return (pool(inputs) * ms.Tensor(cotangent)).sum()

    grad = ms.grad(loss_fn)(ms.Tensor(x))
    x_torch = torch.tensor(x, requires_grad=True)
    expected = F.max_pool2d(x_torch, 3, stride=2, padding=1)
    (expected * torch.tensor(cotangent)).sum().backward()
    np.testing.assert_array_equal(got, expected.detach().numpy())
    nonzero = x > 0  # at zeros the ReLU before the pool passes no gradient anyway
    np.testing.assert_allclose(grad.asnumpy()[nonzero], x_torch.grad.numpy()[nonzero], atol=1e-6)
