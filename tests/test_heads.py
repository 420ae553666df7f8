"""FPN, protonet, prediction head, semantic head and maskiou net against an independent
PyTorch-functional forward with the same weights (tiny channel counts)."""
import numpy as np
import pytest

import mindspore as ms

from src.model.fpn import FPN
from src.model.maskiou_net import MaskIoUNet
from src.model.prediction_head import PredictionHead
from src.model.protonet import ProtoNet
from src.model.semantic_head import SemanticHead

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _randomise(cell, seed):
    """Give every parameter random values (biases too) so a dropped bias shows up."""
    rng = np.random.default_rng(seed)
    weights = {}
    for name, param in cell.parameters_and_names():
        value = rng.normal(0, 0.3, param.shape).astype(np.float32)
        param.set_data(ms.Tensor(value))
        weights[name] = torch.from_numpy(value)
    return weights


def _conv(x, weights, prefix, stride=1, padding=0):
    return F.conv2d(x, weights[prefix + ".weight"], weights[prefix + ".bias"], stride, padding)


def _run(cell, *inputs):
    cell.set_train(False)
    outputs = cell(*[tuple(ms.Tensor(a) for a in x) if isinstance(x, tuple) else ms.Tensor(x)
                     for x in inputs])
    if isinstance(outputs, tuple):
        return [o.asnumpy() for o in outputs]
    return outputs.asnumpy()


def test_fpn_matches_reference():
    rng = np.random.default_rng(0)
    c3 = rng.normal(size=(2, 6, 17, 17)).astype(np.float32)
    c4 = rng.normal(size=(2, 10, 9, 9)).astype(np.float32)
    c5 = rng.normal(size=(2, 12, 5, 5)).astype(np.float32)
    fpn = FPN((6, 10, 12), channels=8, num_downsample=2)
    w = _randomise(fpn, 1)
    ours = _run(fpn, c3, c4, c5)

    t3, t4, t5 = (torch.from_numpy(c) for c in (c3, c4, c5))
    m5 = _conv(t5, w, "lat_layers.0")
    m4 = _conv(t4, w, "lat_layers.1") + F.interpolate(m5, size=(9, 9), mode="bilinear",
                                                       align_corners=False)
    m3 = _conv(t3, w, "lat_layers.2") + F.interpolate(m4, size=(17, 17), mode="bilinear",
                                                       align_corners=False)
    p5 = F.relu(_conv(m5, w, "pred_layers.0", padding=1))
    p4 = F.relu(_conv(m4, w, "pred_layers.1", padding=1))
    p3 = F.relu(_conv(m3, w, "pred_layers.2", padding=1))
    p6 = _conv(p5, w, "downsample_layers.0", stride=2, padding=1)
    p7 = _conv(p6, w, "downsample_layers.1", stride=2, padding=1)
    expected = [p3, p4, p5, p6, p7]
    assert [o.shape[2] for o in ours] == [17, 9, 5, 3, 2]
    assert (ours[3] < 0).any(), "P6 has no ReLU"
    for got, want in zip(ours, expected):
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-4)


def test_protonet_matches_reference():
    rng = np.random.default_rng(2)
    p3 = rng.normal(size=(1, 8, 9, 9)).astype(np.float32)
    net = ProtoNet(8, hidden_channels=6, num_prototypes=4)
    w = _randomise(net, 3)
    assert sorted({name.split(".")[1] for name in w}) == ["0", "10", "2", "4", "8"]
    ours = _run(net, p3)

    x = torch.from_numpy(p3)
    for index in ("0", "2", "4"):
        x = F.relu(_conv(x, w, f"proto_net.{index}", padding=1))
    x = F.relu(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))
    x = F.relu(_conv(x, w, "proto_net.8", padding=1))
    x = F.relu(_conv(x, w, "proto_net.10"))
    expected = x.permute(0, 2, 3, 1).numpy()
    assert ours.shape == (1, 18, 18, 4)
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4)


def test_prediction_head_order_and_values():
    rng = np.random.default_rng(4)
    levels = [rng.normal(size=(2, 8, s, s)).astype(np.float32) for s in (5, 3)]
    anchors, classes, prototypes = 3, 4, 5
    head = PredictionHead(8, anchors, classes, prototypes)
    w = _randomise(head, 5)
    loc, conf, coeff = _run(head, tuple(levels))

    refs = {"loc": [], "conf": [], "coeff": []}
    for level in levels:
        x = F.relu(_conv(torch.from_numpy(level), w, "upfeature.0", padding=1))
        for key, layer, width in (("loc", "bbox_layer", 4), ("conf", "conf_layer", classes),
                                  ("coeff", "mask_layer", prototypes)):
            out = _conv(x, w, layer, padding=1).permute(0, 2, 3, 1).reshape(2, -1, width)
            refs[key].append(out)
    num_priors = (25 + 9) * anchors
    assert loc.shape == (2, num_priors, 4) and conf.shape == (2, num_priors, classes)
    np.testing.assert_allclose(loc, torch.cat(refs["loc"], 1).numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(conf, torch.cat(refs["conf"], 1).numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(coeff, torch.tanh(torch.cat(refs["coeff"], 1)).numpy(),
                               rtol=1e-4, atol=1e-4)
    # Prior index (j=1, i=2, anchor=1) of level 0 reads channel block 1 at row 1, column 2.
    raw = _conv(F.relu(_conv(torch.from_numpy(levels[0]), w, "upfeature.0", padding=1)), w,
                "bbox_layer", padding=1).numpy()
    np.testing.assert_allclose(loc[0, (1 * 5 + 2) * anchors + 1], raw[0, 4:8, 1, 2], rtol=1e-4,
                               atol=1e-5)


def test_semantic_head_and_maskiou_net_match_reference():
    rng = np.random.default_rng(6)
    p3 = rng.normal(size=(2, 8, 7, 7)).astype(np.float32)
    head = SemanticHead(8, 3)
    w = _randomise(head, 7)
    np.testing.assert_allclose(_run(head, p3), _conv(torch.from_numpy(p3), w,
                                                     "semantic_seg_conv").numpy(),
                               rtol=1e-4, atol=1e-4)

    masks = rng.uniform(size=(3, 1, 138, 138)).astype(np.float32)
    net = MaskIoUNet(num_fg_classes=5)
    w = _randomise(net, 8)
    x = torch.from_numpy(masks)
    for index in ("0", "2", "4", "6", "8"):
        x = F.relu(_conv(x, w, f"maskiou_net.{index}", stride=2))
    x = F.relu(_conv(x, w, "maskiou_net.10"))
    expected = F.max_pool2d(x, kernel_size=x.shape[2:]).flatten(1)
    got = _run(net, masks)
    assert got.shape == (3, 5)
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-4)
