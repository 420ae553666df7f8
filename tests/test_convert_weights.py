"""Weight converter: the authors' and torchvision key layouts are generated here from the
spec's layout section (not from our model), filled with random tensors, converted, and every
tensor is checked in its place, with the BN renames and the DCN offset reordering."""
import os
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest
import torch

from src.config.load import load_config
from src.model.build import build_model
from src.utils.weights import (WeightConversionError, convert, convert_state_dict,
                               load_torch_state_dict)
from tests.conftest import load_tool

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES = 81
FPN = 256
# Entry kinds: "param" (trainable), "stat" (BN running statistic), "offset" (DCN offset/mask
# conv: channels reordered), "counter" (num_batches_tracked: dropped).
BN_RENAMES = (("weight", "gamma", "param"), ("bias", "beta", "param"),
              ("running_mean", "moving_mean", "stat"), ("running_var", "moving_variance", "stat"))


def conv_entries(theirs, ours, out, inp, kernel, bias=True, kind="param"):
    entries = [(f"{theirs}.weight", f"{ours}.weight", (out, inp, kernel, kernel), kind)]
    if bias:
        entries.append((f"{theirs}.bias", f"{ours}.bias", (out,), kind))
    return entries


def bn_entries(theirs, ours, channels):
    entries = [(f"{theirs}.{t}", f"{ours}.{o}", (channels,), kind) for t, o, kind in BN_RENAMES]
    return entries + [(f"{theirs}.num_batches_tracked", None, (), "counter")]


def resnet_entries(stem, stage_name, layers, use_dcn):
    """(their key, our name, shape, kind) of a torchvision-layout ResNet (no fc).

    stem: prefix of conv1/bn1 ("backbone." or ""); stage_name(s): their name of stage s;
    use_dcn(s, b): whether block b of stage s has a deformable 3x3 conv.
    """
    entries = conv_entries(f"{stem}conv1", "backbone.conv1", 64, 3, 7, bias=False)
    entries += bn_entries(f"{stem}bn1", "backbone.bn1", 64)
    inplanes = 64
    for s, blocks in enumerate(layers):
        planes = 64 * 2 ** s
        for b in range(blocks):
            theirs, ours = f"{stage_name(s)}.{b}", f"backbone.layers.{s}.{b}"
            entries += conv_entries(f"{theirs}.conv1", f"{ours}.conv1", planes, inplanes, 1, False)
            entries += bn_entries(f"{theirs}.bn1", f"{ours}.bn1", planes)
            dcn = use_dcn(s, b)
            entries += conv_entries(f"{theirs}.conv2", f"{ours}.conv2", planes, planes, 3, bias=dcn)
            if dcn:
                entries += conv_entries(f"{theirs}.conv2.conv_offset_mask",
                                        f"{ours}.conv2.conv_offset_mask", 27, planes, 3,
                                        kind="offset")
            entries += bn_entries(f"{theirs}.bn2", f"{ours}.bn2", planes)
            entries += conv_entries(f"{theirs}.conv3", f"{ours}.conv3", 4 * planes, planes, 1,
                                    bias=False)
            entries += bn_entries(f"{theirs}.bn3", f"{ours}.bn3", 4 * planes)
            if b == 0:
                entries += conv_entries(f"{theirs}.downsample.0", f"{ours}.downsample.0",
                                        4 * planes, inplanes, 1, bias=False)
                entries += bn_entries(f"{theirs}.downsample.1", f"{ours}.downsample.1", 4 * planes)
            inplanes = 4 * planes
    return entries


def head_entries(num_anchors, maskiou):
    """Everything outside the backbone of an authors' checkpoint (COCO, 81 classes)."""
    entries = []
    for i, channels in enumerate((2048, 1024, 512)):  # C5 first
        entries += conv_entries(f"fpn.lat_layers.{i}", f"fpn.lat_layers.{i}", FPN, channels, 1)
    for i in range(3):
        entries += conv_entries(f"fpn.pred_layers.{i}", f"fpn.pred_layers.{i}", FPN, FPN, 3)
    for i in range(2):
        entries += conv_entries(f"fpn.downsample_layers.{i}", f"fpn.downsample_layers.{i}",
                                FPN, FPN, 3)
    for i in (0, 2, 4, 8):
        entries += conv_entries(f"proto_net.{i}", f"proto_net.proto_net.{i}", 256, FPN, 3)
    entries += conv_entries("proto_net.10", "proto_net.proto_net.10", 32, 256, 1)
    entries += conv_entries("prediction_layers.0.upfeature.0", "prediction_head.upfeature.0",
                            FPN, FPN, 3)
    for layer, width in (("bbox_layer", 4), ("conf_layer", NUM_CLASSES), ("mask_layer", 32)):
        entries += conv_entries(f"prediction_layers.0.{layer}", f"prediction_head.{layer}",
                                num_anchors * width, FPN, 3)
    entries += conv_entries("semantic_seg_conv", "semantic_head.semantic_seg_conv",
                            NUM_CLASSES - 1, FPN, 1)
    if maskiou:
        channels = (1, 8, 16, 32, 64, 128)
        for i in range(5):
            entries += conv_entries(f"maskiou_net.maskiou_net.{2 * i}",
                                    f"maskiou_net.maskiou_net.{2 * i}",
                                    channels[i + 1], channels[i], 3)
        entries += conv_entries("maskiou_net.maskiou_net.10", "maskiou_net.maskiou_net.10",
                                NUM_CLASSES - 1, 128, 1)
    return entries


R50, R101 = (3, 4, 6, 3), (3, 4, 23, 3)
AUTHORS_LAYOUTS = {  # config -> (ResNet blocks, DCN rule, anchors per location, maskiou)
    "yolact_plus_resnet50": (R50, lambda s, b: s >= 1, 9, True),
    "yolact_plus_base": (R101, lambda s, b: s >= 1 and b % 3 == 0, 9, True),
    "yolact_base": (R101, lambda s, b: False, 3, False),
    "yolact_resnet50": (R50, lambda s, b: False, 3, False),
}


def authors_entries(config_name):
    layers, use_dcn, anchors, maskiou = AUTHORS_LAYOUTS[config_name]
    return (resnet_entries("backbone.", lambda s: f"backbone.layers.{s}", layers, use_dcn)
            + head_entries(anchors, maskiou))


def torchvision_entries(layers):
    entries = resnet_entries("", lambda s: f"layer{s + 1}", layers, lambda s, b: False)
    return entries + [("fc.weight", None, (1000, 2048), "counter"),
                      ("fc.bias", None, (1000,), "counter")]


def random_state_dict(entries, seed):
    """Their key -> np.ndarray: standard-normal float32 (a unique pattern per tensor)."""
    rng = np.random.default_rng(seed)
    return {theirs: (np.array(7, np.int64) if theirs.endswith("num_batches_tracked")
                     else rng.standard_normal(shape, dtype=np.float32))
            for theirs, _, shape, _ in entries}


def expected_ours(entries, state_dict):
    """Our name -> expected array; the DCN reordering written out per tap."""
    expected = {}
    for theirs, ours, _, kind in entries:
        if ours is None:
            continue
        value = state_dict[theirs]
        if kind == "offset":
            reordered = np.empty_like(value)
            for tap in range(9):
                reordered[tap] = value[2 * tap + 1]     # dx: DCNv2 channel 2t+1
                reordered[9 + tap] = value[2 * tap]     # dy: DCNv2 channel 2t
                reordered[18 + tap] = value[18 + tap]   # mask logit
            value = reordered
        expected[ours] = value
    return expected


def assert_all_equal(arrays, expected):
    assert set(arrays) == set(expected)
    for name, value in expected.items():
        assert arrays[name].dtype == np.float32, name
        np.testing.assert_array_equal(arrays[name], value, err_msg=name)


@pytest.fixture(scope="module")
def plus_r50():
    """(config, built net, authors' entries, random authors' state dict) for R-50++."""
    config = load_config("yolact_plus_resnet50")
    entries = authors_entries("yolact_plus_resnet50")
    return config, build_model(config), entries, random_state_dict(entries, seed=0)


@pytest.mark.parametrize("config_name, counts", [
    ("yolact_plus_resnet50", dict(total=33_766_460, backbone=24_382_879, fpn=3_868_672,
                                  proto_net=2_368_544, prediction_layers=3_017_245,
                                  semantic_seg_conv=20_560, maskiou_net=108_560)),
    ("yolact_plus_base", dict(total=52_571_142, backbone=43_187_561)),
    ("yolact_base", dict(total=50_157_071, backbone=42_500_160, prediction_layers=1_399_135)),
    ("yolact_resnet50", dict(total=31_164_943, backbone=23_508_032)),
])
def test_generated_layout_has_the_spec_parameter_counts(config_name, counts):
    """The test's own key generator reproduces the spec's trainable-parameter table."""
    sizes = {}
    for theirs, _, shape, kind in authors_entries(config_name):
        if kind in ("param", "offset"):
            group = theirs.split(".")[0]
            sizes[group] = sizes.get(group, 0) + int(np.prod(shape))
    sizes["total"] = sum(sizes.values())
    assert {key: sizes[key] for key in counts} == counts


def test_cli_converts_authors_checkpoint_into_every_parameter(plus_r50, tmp_path):
    config, net, entries, state_dict = plus_r50
    src, dst = tmp_path / "yolact_plus_resnet50_54_800000.pth", tmp_path / "out.ckpt"
    torch.save({key: torch.from_numpy(value) for key, value in state_dict.items()}, src)
    result = subprocess.run(
        [sys.executable, os.path.join("tools", "convert_weights.py"), "--config", config.name,
         "--src", str(src), "--dst", str(dst)],
        cwd=REPO, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    counters = sum(kind == "counter" for _, _, _, kind in entries)
    assert f"converted {len(entries) - counters} tensors" in result.stdout
    assert f"dropped {counters} source tensors" in result.stdout
    assert "left at init: 0 parameters" in result.stdout
    assert sorted(os.listdir(tmp_path)) == ["out.ckpt", src.name]  # no temp file left

    checkpoint = ms.load_checkpoint(str(dst))
    assert_all_equal({name: param.asnumpy() for name, param in checkpoint.items()},
                     expected_ours(entries, state_dict))
    # Every parameter of the model (BN moving statistics included) is filled exactly once.
    model_names = [name for name, _ in net.parameters_and_names()]
    assert sorted(model_names) == sorted(checkpoint)
    param_not_loaded, ckpt_not_loaded = ms.load_param_into_net(net, checkpoint)
    assert (list(param_not_loaded), list(ckpt_not_loaded)) == ([], [])
    offsets = "backbone.layers.3.2.conv2.conv_offset_mask.weight"
    np.testing.assert_array_equal(net.parameters_dict()[offsets].asnumpy()[:9],
                                  state_dict[offsets][1:18:2])


def test_v1_checkpoint_and_the_authors_compat_drops():
    """YOLACT v1 (R-101, 3 anchors, no DCN, no maskiou); plus the keys the authors' own
    loader discards: stale ``backbone.layerN`` copies and v1.0's extra downsample layers."""
    config = load_config("yolact_base")
    entries = authors_entries("yolact_base")
    stale = (conv_entries("fpn.downsample_layers.2", "-", FPN, FPN, 3)
             + conv_entries("backbone.layer1.0.conv1", "-", 64, 64, 1, bias=False))
    entries += [(theirs, None, shape, "counter") for theirs, _, shape, _ in stale]
    state_dict = random_state_dict(entries, seed=1)
    conversion = convert(state_dict, config)
    assert_all_equal(conversion.arrays, expected_ours(entries, state_dict))
    model_shapes = {name: tuple(p.shape) for name, p in build_model(config).parameters_and_names()}
    assert {name: a.shape for name, a in conversion.arrays.items()} == model_shapes
    assert sorted(key for key, _ in conversion.dropped) == sorted(
        theirs for theirs, ours, _, _ in entries if ours is None)
    assert conversion.left_at_init == ()


def test_backbone_only_fills_the_backbone_but_dcn_extras(plus_r50):
    """torchvision ResNet-50 -> R-50++ backbone: DCN blocks take the pretrained conv2.weight;
    their conv2.bias and offset/mask conv, and everything outside the backbone, stay at init."""
    config, net, _, _ = plus_r50
    entries = torchvision_entries(R50)
    state_dict = random_state_dict(entries, seed=2)
    conversion = convert(state_dict, config, backbone_only=True)
    assert_all_equal(conversion.arrays, expected_ours(entries, state_dict))
    assert sorted(key for key, _ in conversion.dropped) == sorted(
        theirs for theirs, ours, _, _ in entries if ours is None)

    dcn_blocks = [f"backbone.layers.{s}.{b}" for s in (1, 2, 3) for b in range(R50[s])]
    dcn_extras = {f"{block}.conv2.{leaf}" for block in dcn_blocks
                  for leaf in ("bias", "conv_offset_mask.weight", "conv_offset_mask.bias")}
    assert len(dcn_extras) == 39
    model_names = {name for name, _ in net.parameters_and_names()}
    outside = {name for name in model_names if not name.startswith("backbone.")}
    assert set(conversion.left_at_init) == dcn_extras | outside
    params = {name: ms.Parameter(ms.Tensor(a), name=name) for name, a in conversion.arrays.items()}
    param_not_loaded, ckpt_not_loaded = ms.load_param_into_net(net, params)
    assert set(param_not_loaded) == dcn_extras | outside and not ckpt_not_loaded


def _error(state_dict, config, backbone_only=False):
    with pytest.raises(WeightConversionError) as info:
        convert_state_dict(state_dict, config, backbone_only)
    return str(info.value)


def test_unmapped_missing_and_mismatched_keys_are_errors(plus_r50):
    config, _, _, state_dict = plus_r50
    extra = dict(state_dict, **{"prediction_layers.0.score_layer.weight": np.zeros((9, 256, 3, 3))})
    message = _error(extra, config)
    assert "1 source keys with no parameter in yolact_plus_resnet50: " \
           "prediction_layers.0.score_layer.weight" in message
    assert "missing" not in message

    many = dict(state_dict, **{f"extra.{i}": np.zeros(1) for i in range(8)})
    assert "8 source keys with no parameter" in _error(many, config)
    assert "... (3 more)" in _error(many, config)

    missing = {key: value for key, value in state_dict.items() if key != "fpn.lat_layers.1.bias"}
    message = _error(missing, config)
    assert message == "1 model parameters missing from the source: fpn.lat_layers.1.bias"

    key = "backbone.layers.1.0.conv2.conv_offset_mask.weight"
    wrong = dict(state_dict, **{key: np.zeros((18, 128, 3, 3), np.float32)})
    message = _error(wrong, config)
    assert message == (f"1 shape mismatches (file vs model): "
                       f"{key} [18, 128, 3, 3] vs {key} [27, 128, 3, 3]")


def test_wrong_mode_errors_say_which_flag(plus_r50):
    config, _, _, state_dict = plus_r50
    assert "drop --backbone" in _error(state_dict, config, backbone_only=True)
    resnet = random_state_dict(torchvision_entries(R50)[:20], seed=3)
    assert "add --backbone" in _error(resnet, config)


class MkdirOnUnpickle:
    """A pickle payload: unpickling it calls ``os.mkdir(path)``."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


def test_malicious_pickle_is_refused_without_side_effect(tmp_path, capsys):
    marker = tmp_path / "payload_ran"
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "x": MkdirOnUnpickle(str(marker))}, path)

    with pytest.raises(WeightConversionError, match="refused.*GLOBAL posix.mkdir"):
        load_torch_state_dict(str(path))
    assert not marker.exists()
    main = load_tool("convert_weights").main
    assert main(["--config", "yolact_resnet50", "--src", str(path),
                 "--dst", str(tmp_path / "out.ckpt"), "--backbone"]) == 2
    assert not marker.exists() and not (tmp_path / "out.ckpt").exists()
    assert "weights_only=True" in capsys.readouterr().err

    # Control: the payload is real, a full unpickling runs it.
    torch.load(path, weights_only=False)
    assert marker.is_dir()


@pytest.mark.parametrize("case, expected", [
    ("missing_file", "no such file"),
    ("wrong_config", "unknown config 'yolact_plus_resnet51'"),
    ("garbage", "not a readable PyTorch file"),
    ("list", "expected a state dict, got list"),
    ("training_checkpoint", "not a state dict of tensors; 2 entries: iteration, model"),
    ("not_ckpt_name", "must end with .ckpt"),
    ("unmapped", "add --backbone"),
])
def test_cli_bad_input_exits_2_with_one_line(case, expected, tmp_path, capsys):
    src, dst = tmp_path / "in.pth", tmp_path / "out.ckpt"
    payloads = {"list": [torch.zeros(2)],
                "training_checkpoint": {"iteration": 3, "model": {"w": torch.zeros(2)}},
                "unmapped": {"layer1.0.conv1.weight": torch.zeros(64, 64, 1, 1)}}
    torch.save(payloads.get(case, {"conv1.weight": torch.zeros(1)}), src)
    if case == "garbage":
        src.write_bytes(np.random.default_rng(4).bytes(1000))
    dst.write_text("previous")
    args = {"config": "yolact_plus_resnet50", "src": str(src), "dst": str(dst)}
    if case == "missing_file":
        args["src"] = str(tmp_path / "absent.pth")
    if case == "wrong_config":
        args["config"] = "yolact_plus_resnet51"
    if case == "not_ckpt_name":
        args["dst"] = str(tmp_path / "out.bin")
    assert load_tool("convert_weights").main([f"--{k}={v}" for k, v in args.items()]) == 2
    err = capsys.readouterr().err
    assert err.startswith("convert_weights: error: ") and err.count("\n") == 1, err
    assert expected in err
    assert dst.read_text() == "previous"  # a failed run leaves the old checkpoint alone
    assert sorted(os.listdir(tmp_path)) == ["in.pth", "out.ckpt"]
