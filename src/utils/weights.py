"""PyTorch ``.pth`` weights -> a MindSpore checkpoint of our YOLACT / YOLACT++ model.

Two sources:
  * the authors' released checkpoints (``yolact_plus_resnet50_54_800000.pth``, ...): a plain
    state dict of the whole network; every parameter of our model is filled;
  * ``--backbone``: a torchvision ImageNet ResNet-50/101 (``resnet50-19c8e357.pth``, the
    authors' ``resnet101_reducedfc.pth``): only ``backbone.*`` parameters are written, for
    training from ImageNet initialisation.

Usage::

    python tools/convert_weights.py --config yolact_plus_resnet50 \\
        --src yolact_plus_resnet50_54_800000.pth --dst yolact_plus_resnet50.ckpt
    python tools/convert_weights.py --config yolact_plus_base --backbone \\
        --src resnet101_reducedfc.pth --dst resnet101_imagenet.ckpt

Name map (authors' -> ours):
  * ``backbone.*`` -> ``backbone.*``; torchvision files: ``layerN.`` -> ``backbone.layers.{N-1}.``,
    ``conv1``/``bn1`` -> ``backbone.conv1``/``backbone.bn1``;
  * BatchNorm (``bn1``-``bn3``, ``downsample.1``): ``weight, bias, running_mean, running_var``
    -> ``gamma, beta, moving_mean, moving_variance``;
  * DCN blocks: ``conv2.weight``, ``conv2.bias`` keep their names; the 27 output channels of
    ``conv2.conv_offset_mask.{weight,bias}`` are reordered from DCNv2's ``(dy, dx)`` per tap
    to MindSpore's ``[9 dx | 9 dy | 9 masks]`` (``dcnv2_offset_channel_order``);
  * ``fpn.*`` -> ``fpn.*`` (both C5-first); ``proto_net.*`` -> ``proto_net.proto_net.*``;
    ``prediction_layers.0.*`` -> ``prediction_head.*`` (the head is shared, only level 0
    holds parameters); ``semantic_seg_conv.*`` -> ``semantic_head.semantic_seg_conv.*``;
    ``maskiou_net.maskiou_net.*`` unchanged.

Dropped on purpose (counted in the summary):
  * ``*.num_batches_tracked``: PyTorch's BatchNorm step counter; MindSpore's has none;
  * ``fc.*`` (torchvision files): the ImageNet classifier;
  * as the authors' own ``Yolact.load_weights`` does: ``backbone.layerN.*`` (duplicates of
    ``backbone.layers`` in checkpoints older than Oct 2018) and ``fpn.downsample_layers.i``
    with ``i`` beyond the model's P6/P7 layers (v1.0 checkpoints).

Left at their initialisation by a ``--backbone`` file: every parameter outside
``backbone.``, and in each DCN block ``conv2.bias`` and ``conv2.conv_offset_mask.{weight,
bias}`` (zero init: the block starts as the pretrained 3x3 conv scaled by sigmoid(0)).
Anything else unmapped, missing or of the wrong shape raises ``WeightConversionError``.

MindSpore is imported inside the functions so that the command line can set the CPU
environment defaults before it loads; PyTorch is optional and only needed to read ``.pth``.
The command line is ``tools/convert_weights.py``.
"""
import collections
import collections.abc
import dataclasses
import functools
import os
import re

import numpy as np


# Authors' top-level modules -> ours, for full YOLACT checkpoints.
MODULE_PREFIXES = (
    ("backbone.", "backbone."),
    ("fpn.", "fpn."),
    ("proto_net.", "proto_net.proto_net."),
    ("prediction_layers.0.", "prediction_head."),
    ("semantic_seg_conv.", "semantic_head.semantic_seg_conv."),
    ("maskiou_net.", "maskiou_net."),
)
BN_LEAVES = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean",
             "running_var": "moving_variance"}
BN_MODULE = re.compile(r"(^|\.)(bn\d|downsample\.1)$")
TORCHVISION_STAGE = re.compile(r"layer(\d+)\.(.+)")
STALE_BACKBONE_COPY = re.compile(r"backbone\.layer\d")
FPN_DOWNSAMPLE = re.compile(r"fpn\.downsample_layers\.(\d+)\.")
# DCN parameters a pretrained ImageNet ResNet has no counterpart for.
DCN_EXTRAS = re.compile(
    r"backbone\.layers\.\d+\.\d+\.conv2\.(bias|conv_offset_mask\.(weight|bias))")
TORCH_INSTALL_HINT = "pip install torch==2.13.0"
LISTED_KEYS = 5


class WeightConversionError(ValueError):
    """A source file or state dict that does not convert; the message lists the keys."""


@dataclasses.dataclass(frozen=True)
class Conversion:
    """Result of a conversion.

    Attributes:
        arrays: our parameter name -> np.ndarray (our shape and dtype, its own memory).
        dropped: (source key, reason) of every source tensor skipped on purpose.
        left_at_init: our parameter names the source does not fill (``--backbone`` only).
    """
    arrays: dict
    dropped: tuple
    left_at_init: tuple


def convert_state_dict(state_dict, config, backbone_only=False):
    """Map a PyTorch state dict onto our model's parameters.

    Args:
        state_dict: mapping key -> torch.Tensor or np.ndarray (authors' or torchvision names).
        config: a ``YolactConfig``; its model gives the target names and shapes.
        backbone_only: the source is a torchvision ImageNet ResNet.

    Returns:
        dict our parameter name -> np.ndarray.
    """
    return convert(state_dict, config, backbone_only).arrays


def convert(state_dict, config, backbone_only=False):
    """``convert_state_dict`` with the report of dropped keys and parameters left at init."""
    targets = target_parameters(config)
    num_downsample = len({m.group(1) for m in map(FPN_DOWNSAMPLE.match, targets) if m})
    arrays, source_of, dropped = {}, {}, []
    unmapped, duplicated, mismatched = [], [], []
    for key, value in state_dict.items():
        reason = _drop_reason(key, backbone_only, num_downsample)
        if reason:
            dropped.append((key, reason))
            continue
        name, reorder_offsets = _our_name(key, backbone_only)
        if name not in targets:
            unmapped.append(key)
            continue
        if name in source_of:
            duplicated.append(f"{source_of[name]} and {key} -> {name}")
            continue
        source_of[name] = key
        shape, dtype = targets[name]
        array = _to_numpy(key, value)
        if array.shape != shape:
            mismatched.append(f"{key} {list(array.shape)} vs {name} {list(shape)}")
            continue
        if reorder_offsets:
            array = array[_offset_channel_order()]
        arrays[name] = np.array(array, dtype=dtype)

    unfilled = [name for name in targets if name not in source_of]
    left_at_init = [name for name in unfilled if _may_stay_at_init(name, backbone_only)]
    missing = [name for name in unfilled if not _may_stay_at_init(name, backbone_only)]
    problems = [_listing(label, keys) for label, keys in (
        (f"source keys with no parameter in {config.name}", unmapped),
        ("source keys mapped twice", duplicated),
        ("shape mismatches (file vs model)", mismatched),
        ("model parameters missing from the source", missing)) if keys]
    if problems:
        hint = _mode_hint(state_dict, backbone_only)
        raise WeightConversionError("; ".join(problems) + (f" ({hint})" if hint else ""))
    return Conversion(arrays, tuple(dropped), tuple(left_at_init))


@functools.lru_cache(maxsize=4)
def target_parameters(config):
    """Our model's parameters (BN moving statistics included) for a config.

    Returns:
        dict name -> (shape tuple, numpy dtype), in the model's order.
    """
    import mindspore as ms
    from src.config.schema import replace
    from src.model.build import build_model

    # Names and shapes are the same on every kernel choice; portable needs no compiler.
    net = build_model(replace(config, **{"model.kernels": "portable"}))
    # MindSpore's own conversion of a one-element tensor (dtype_to_nptype is deprecated).
    numpy_dtypes = {dtype: ms.Tensor(np.zeros(1), dtype).asnumpy().dtype
                    for dtype in {param.dtype for param in net.get_parameters()}}
    return {name: (tuple(param.shape), numpy_dtypes[param.dtype])
            for name, param in net.parameters_and_names()}


def load_torch_state_dict(path):
    """Read a ``.pth`` state dict without executing code from the file.

    ``weights_only=True`` lets the unpickler build only tensors and plain containers, so a
    file carrying a ``__reduce__`` payload is refused instead of run.

    Returns:
        dict key -> torch.Tensor.
    """
    try:
        import torch
    except ImportError:
        raise WeightConversionError(
            f"reading .pth files needs PyTorch (CPU is enough): {TORCH_INSTALL_HINT}") from None
    if not os.path.isfile(path):
        raise WeightConversionError(f"{path}: no such file")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # garbage input raises almost any type from the unpickler
        # A refused global is named on its own line of torch's message; keep just that line.
        refused = [line for line in str(error).splitlines() if "GLOBAL" in line]
        if refused:
            raise WeightConversionError(
                f"{path}: refused, the file holds more than tensors and plain containers "
                f"(weights_only=True: {refused[0].strip()})") from None
        raise WeightConversionError(
            f"{path}: not a readable PyTorch file ({type(error).__name__})") from None
    if not isinstance(loaded, collections.abc.Mapping):
        raise WeightConversionError(f"{path}: expected a state dict, got {type(loaded).__name__}")
    not_tensors = [str(key) for key, value in loaded.items()
                   if not (isinstance(key, str) and isinstance(value, torch.Tensor))]
    if not_tensors:
        raise WeightConversionError(
            f"{path}: not a state dict of tensors; " + _listing("entries", not_tensors))
    return dict(loaded)


def write_checkpoint(arrays, path):
    """Write ``arrays`` (name -> np.ndarray) as a MindSpore checkpoint, all or nothing."""
    import mindspore as ms
    from src.checkpoint import save_checkpoint_atomic

    require_ckpt_suffix(path)
    save_checkpoint_atomic([{"name": name, "data": ms.Tensor(array)}
                            for name, array in arrays.items()], path)


def summary_lines(conversion, src, dst):
    """Human-readable report of a conversion, one fact per line."""
    lines = [f"converted {len(conversion.arrays)} tensors: {src} -> {dst}"]
    reasons = collections.Counter(reason for _, reason in conversion.dropped)
    lines.append(f"dropped {len(conversion.dropped)} source tensors" +
                 "".join(f"\n  {count} x {reason}" for reason, count in reasons.items()))
    dcn = [name for name in conversion.left_at_init if DCN_EXTRAS.fullmatch(name)]
    outside = [name for name in conversion.left_at_init if not name.startswith("backbone.")]
    lines.append(f"left at init: {len(conversion.left_at_init)} parameters"
                 f"\n  {len(dcn)} DCN conv2.bias / conv2.conv_offset_mask.* (zero init)"
                 f"\n  {len(outside)} outside the backbone")
    return lines


def _drop_reason(key, backbone_only, num_downsample):
    if key.endswith(".num_batches_tracked"):
        return "num_batches_tracked (PyTorch BatchNorm step counter; MindSpore has none)"
    if backbone_only:
        return "fc.* (ImageNet classifier)" if key.startswith("fc.") else None
    if STALE_BACKBONE_COPY.match(key):
        return "backbone.layerN.* (pre-Oct-2018 duplicate of backbone.layers; authors drop it)"
    downsample = FPN_DOWNSAMPLE.match(key)
    if downsample and int(downsample.group(1)) >= num_downsample:
        return "fpn.downsample_layers beyond P7 (v1.0 checkpoints; authors drop them)"
    return None


def _our_name(key, backbone_only):
    """(our name or None, whether the offset/mask channels need reordering)."""
    if backbone_only:
        stage = TORCHVISION_STAGE.fullmatch(key)
        if stage and int(stage.group(1)) >= 1:
            return _backbone_name(f"layers.{int(stage.group(1)) - 1}.{stage.group(2)}")
        if key.startswith(("conv1.", "bn1.")):
            return _backbone_name(key)
        return None, False
    for theirs, ours in MODULE_PREFIXES:
        if key.startswith(theirs):
            rest = key[len(theirs):]
            return _backbone_name(rest) if ours == "backbone." else (ours + rest, False)
    return None, False


def _backbone_name(key):
    """Backbone key without prefix -> (``backbone.`` name, offsets reordered)."""
    module, _, leaf = key.rpartition(".")
    if BN_MODULE.search(module):
        leaf = BN_LEAVES.get(leaf)
        if leaf is None:
            return None, False
    return f"backbone.{module}.{leaf}", module.endswith(".conv2.conv_offset_mask")


def _may_stay_at_init(name, backbone_only):
    return backbone_only and (not name.startswith("backbone.") or bool(DCN_EXTRAS.fullmatch(name)))


@functools.lru_cache(maxsize=1)
def _offset_channel_order():
    from src.model.dcn import dcnv2_offset_channel_order
    return dcnv2_offset_channel_order()


def _to_numpy(key, value):
    if hasattr(value, "detach"):  # torch.Tensor; bfloat16/half widen to float32 first
        value = value.detach().cpu()
        value = value.float() if value.is_floating_point() else value
        return value.numpy()
    if not hasattr(value, "shape"):
        raise WeightConversionError(f"{key}: expected a tensor, got {type(value).__name__}")
    return np.asarray(value)


def require_ckpt_suffix(path):
    if not path.endswith(".ckpt"):
        raise WeightConversionError(f"{path}: the checkpoint name must end with .ckpt "
                                    "(MindSpore's load_checkpoint requires it)")


def _listing(label, keys):
    shown = ", ".join(keys[:LISTED_KEYS])
    more = f", ... ({len(keys) - LISTED_KEYS} more)" if len(keys) > LISTED_KEYS else ""
    return f"{len(keys)} {label}: {shown}{more}"


def _mode_hint(state_dict, backbone_only):
    keys = list(state_dict)
    if backbone_only and any(key.startswith("backbone.") for key in keys):
        return "this looks like a full YOLACT checkpoint: drop --backbone"
    if not backbone_only and any(TORCHVISION_STAGE.match(key) for key in keys):
        return "this looks like an ImageNet ResNet: add --backbone"
    return ""
