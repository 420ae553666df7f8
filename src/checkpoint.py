"""Checkpoint files: atomic writes, strict model loading, training state with rotation and
resume, ImageNet backbone initialisation and partial loading for fine-tuning.

Writes go to a temporary file in the destination folder, then ``os.replace`` it over the
target, so a crash never leaves a truncated checkpoint under the final name. This module
knows files and names, not optimizers: the trainer passes the (name, Parameter) pairs that
make up its state (``src.train.setup.TrainingSetup.state``).
"""
import collections
import dataclasses
import glob
import os
import re

import mindspore as ms

from src.utils.files import replaced_atomically

ITERATION_KEY = "iteration"
GLOBAL_STEP_KEY = "global_step"


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or does not fit the model; the message
    names the file and the offending parameters."""


def save_checkpoint_atomic(save_obj, path, append_dict=None):
    """Write ``save_obj`` (a Cell or a list of {"name", "data"}) to ``path`` atomically."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with replaced_atomically(path, suffix=".ckpt") as temporary:
        try:
            ms.save_checkpoint(save_obj, temporary, append_dict=append_dict)
        finally:
            # MindSpore writes <name>.tmp and renames it to <name>.ckpt: a failed write leaves it.
            leftover = os.path.splitext(temporary)[0] + ".tmp"
            if os.path.exists(leftover):
                os.remove(leftover)


def read_checkpoint(path):
    """{name: Parameter} of a checkpoint file, or a CheckpointError naming the file."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        return ms.load_checkpoint(path)
    except (ValueError, RuntimeError, OSError) as error:
        raise CheckpointError(f"{path}: not a readable MindSpore checkpoint ({error})") from None


@dataclasses.dataclass(frozen=True)
class Fit:
    """How the entries of a checkpoint line up with a model's parameters.

    Attributes:
        matched: names in both with the same shape, in the model's order.
        missing: model parameters the file does not hold.
        mis_shaped: (name, shape in the file, shape in the model) of names in both.
        unexpected: entries under one of the model's parts (``backbone.``, ``fpn.``, ...)
            that the model does not have (another depth, mask re-scoring off, ...).
        other: entries outside the model's parts: training state (optimizer moments,
            ``live.`` / ``ema.`` copies, step counters), parts this model does not build,
            or another network's names.
    """
    matched: tuple
    missing: tuple
    mis_shaped: tuple
    unexpected: tuple
    other: tuple


def compare(model, params, prefix=""):
    """The ``Fit`` of ``params`` ({name: Parameter}, as read) to the parameters of ``model``
    whose names start with ``prefix``."""
    own = {name: param for name, param in model.parameters_and_names() if name.startswith(prefix)}
    modules = tuple(model.name_cells())
    in_file = [name for name in own if name in params]
    mis_shaped = tuple((name, tuple(params[name].shape), tuple(own[name].shape))
                       for name in in_file if tuple(params[name].shape) != tuple(own[name].shape))
    shape_differs = {name for name, _, _ in mis_shaped}
    foreign = [name for name in params if name not in own]
    in_parts = [name.split(".")[0] in modules for name in foreign]
    return Fit(matched=tuple(name for name in in_file if name not in shape_differs),
               missing=tuple(name for name in own if name not in params),
               mis_shaped=mis_shaped,
               unexpected=tuple(name for name, part in zip(foreign, in_parts) if part),
               other=tuple(name for name, part in zip(foreign, in_parts) if not part))


def _assign(model, params, names):
    """Copy the file's ``params[name]`` into the model's Parameter of each of ``names``."""
    own = dict(model.parameters_and_names())
    for name in names:
        own[name].set_data(ms.Tensor(params[name].asnumpy(), own[name].dtype))


def load_weights(net, path, allow_missing_prefixes=()):
    """Load a checkpoint into ``net``, insisting that it fits.

    Every parameter of ``net`` must be in the file with the same shape, except those whose
    name starts with one of ``allow_missing_prefixes``; entries of the file under one of
    ``net``'s child cells (``backbone.``, ``fpn.``, ...) that ``net`` does not have are an
    error, other entries (optimizer moments, step counters) are training state and ignored.

    Returns:
        the dict read from the file (training state included), for callers that need it.

    Raises:
        CheckpointError: naming the file, the missing / unexpected / mis-shaped parameters
            and the likely cause (a checkpoint of another config).
    """
    params = read_checkpoint(path)
    fit = compare(net, params)
    missing = [name for name in fit.missing if not name.startswith(tuple(allow_missing_prefixes))]
    mis_shaped = [f"{name} {theirs} != {ours}" for name, theirs, ours in fit.mis_shaped]
    problems = []
    for label, names in (("missing", missing), ("shape mismatch", mis_shaped),
                         ("unexpected", fit.unexpected)):
        if names:
            shown = ", ".join(names[:5]) + (f" (+{len(names) - 5} more)" if len(names) > 5 else "")
            problems.append(f"{len(names)} {label}: {shown}")
    if problems:
        raise CheckpointError(f"{path}: does not fit this model (a checkpoint of another config?): "
                              + "; ".join(problems))
    _assign(net, params, fit.matched)
    return params


def load_pretrained_weights(model, path):
    """Initialise ``model`` for fine-tuning from any YOLACT checkpoint: every parameter whose
    name and shape match is loaded, the others keep their init.

    Accepts model weights (``tools/convert_weights.py``, eval's inputs) and training
    checkpoints of ``train.py``. Of a training checkpoint only the model's names count; with
    a weight average (``train.ema_decay``) these hold the average, not the ``live.`` weights,
    and the average is what is loaded: it is the model that run's evaluation measured and its
    best checkpoint was chosen by, while the live weights are one optimizer step's noisy
    state that only makes sense together with the momentum, which fine-tuning starts afresh.

    Typical skips: when the class count differs, ``prediction_head.conf_layer`` (P·C
    outputs), ``semantic_head.semantic_seg_conv`` and the last ``maskiou_net`` conv (C - 1
    outputs each) change shape.

    Returns:
        the ``Fit``; ``fit.matched`` were loaded (``fit_summary`` says what and why not).

    Raises:
        CheckpointError: the file is missing or unreadable, or not one of its entries is a
            parameter of this model with the model's shape.
    """
    params = read_checkpoint(path)
    fit = compare(model, params)
    if not fit.matched:
        example = next((f"{name} is {theirs} here but {ours} in the model"
                        for name, theirs, ours in fit.mis_shaped), next(iter(params), "none"))
        raise CheckpointError(
            f"{path}: none of its {len(params)} entries is a parameter of this model with its "
            f"shape (e.g. {example}); expected a checkpoint of train.py or "
            "tools/convert_weights.py")
    _assign(model, params, fit.matched)
    return fit


def fit_summary(fit, path, max_groups=8):
    """Log lines of a ``load_pretrained_weights`` result: what was loaded, then per reason
    the layers (names without the last part) that were not, with both shapes for those whose
    shape differs."""
    lines = [f"pretrained weights from {path}: {len(fit.matched)} of "
             f"{len(fit.matched) + len(fit.missing) + len(fit.mis_shaped)} model tensors loaded"
             + (f", {len(fit.other)} other entries ignored" if fit.other else "")]
    by_layer = {}
    for name, theirs, ours in fit.mis_shaped:
        layer, _, leaf = name.rpartition(".")
        by_layer.setdefault(layer, []).append(f"{leaf} {theirs} vs {ours}")
    shown = list(by_layer.items())[:max_groups]
    lines += [f"  kept init, shape differs (checkpoint vs model): {layer}: {', '.join(shapes)}"
              for layer, shapes in shown]
    if len(by_layer) > max_groups:
        lines.append(f"  kept init, shape differs: {len(by_layer) - max_groups} more layers")
    for label, names in (("kept init, not in the checkpoint", fit.missing),
                         ("ignored, not in this model", fit.unexpected)):
        if names:
            layers = list(dict.fromkeys(name.rpartition(".")[0] for name in names))
            more = f" (+{len(layers) - max_groups} more)" if len(layers) > max_groups else ""
            lines.append(f"  {label}: {len(names)} tensors of {len(layers)} layers: "
                         f"{', '.join(layers[:max_groups])}{more}")
    if fit.other:
        # Training state shows as live. / ema. / moments. ..., a part this model lacks
        # (mask re-scoring off) under its own name.
        groups = collections.Counter(name.split(".")[0] for name in fit.other)
        shown = [f"{name} ({count})" for name, count in groups.most_common(max_groups)]
        more = f" (+{len(groups) - max_groups} more)" if len(groups) > max_groups else ""
        lines.append(f"  ignored, outside the model's parts: {', '.join(shown)}{more}")
    return lines


def checkpoint_path(output_dir, name, iteration):
    return os.path.join(output_dir, f"{name}_{iteration}.ckpt")


def list_checkpoints(output_dir, name):
    """Paths of ``{name}_{iteration}.ckpt`` in ``output_dir``, oldest iteration first."""
    pattern = re.compile(re.escape(name) + r"_(\d+)\.ckpt$")
    found = []
    for path in glob.glob(os.path.join(output_dir, f"{name}_*.ckpt")):
        match = pattern.search(os.path.basename(path))
        if match:
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def save_training_checkpoint(path, state, iteration, **values):
    """Write the training ``state`` ((name, Parameter) pairs, the optimizer's step counter
    under ``GLOBAL_STEP_KEY`` among them), ``iteration``, the next step to run, and any
    further named numbers ``values`` (read back as [] float Parameters)."""
    entries = [{"name": name, "data": param} for name, param in state]
    save_checkpoint_atomic(entries, path, append_dict={ITERATION_KEY: int(iteration), **values})


def rotate_checkpoints(output_dir, name, keep_last):
    """Delete all but the ``keep_last`` newest checkpoints of ``name`` (0 keeps all)."""
    if keep_last <= 0:
        return
    for path in list_checkpoints(output_dir, name)[:-keep_last]:
        os.remove(path)


def resume_training(path, state):
    """Restore a checkpoint written by ``save_training_checkpoint`` into ``state`` (the same
    (name, Parameter) pairs it was written from, so the same ``train.ema_decay`` and
    ``train.optimizer``).

    Returns:
        the iteration to continue from.

    Raises:
        CheckpointError: the file is missing, is not a training checkpoint (no iteration or
            optimizer state: e.g. converted weights, use them with --pretrained or eval),
            or does not fit the model.
    """
    params = read_checkpoint(path)
    if ITERATION_KEY not in params or GLOBAL_STEP_KEY not in params:
        raise CheckpointError(f"{path}: not a training checkpoint (no iteration / optimizer "
                              "state); start from model weights with --pretrained, evaluate "
                              "them with eval.py, or pass an ImageNet backbone to "
                              "--backbone_ckpt")
    expected = dict(state)
    missing = [name for name in expected if name not in params]
    mis_shaped = [name for name, param in expected.items()
                  if name in params and tuple(params[name].shape) != tuple(param.shape)]
    if missing or mis_shaped:
        shown = ", ".join((missing + mis_shaped)[:5])
        raise CheckpointError(f"{path}: does not fit this model/optimizer (a checkpoint of "
                              f"another config, or another train.ema_decay / train.optimizer "
                              f"setting?): {len(missing)} missing, {len(mis_shaped)} "
                              f"mis-shaped, e.g. {shown}")
    for name, param in expected.items():
        param.set_data(ms.Tensor(params[name].asnumpy()))
    return int(params[ITERATION_KEY].asnumpy())


def load_backbone_weights(model, path):
    """Initialise ``model.backbone`` from an ImageNet checkpoint made by
    ``python tools/convert_weights.py --backbone``.

    Every backbone parameter must be in the file with its shape, except the DCN-only ones
    (``conv2.bias`` and the offset/mask conv of DCN blocks), which keep their zero init so
    that each DCN block starts as the pretrained 3x3 conv.

    Returns:
        the number of parameters loaded.
    """
    params = read_checkpoint(path)
    foreign = [name for name in params if not name.startswith("backbone.")]
    if foreign:
        raise CheckpointError(f"{path}: not a backbone checkpoint ({len(foreign)} entries outside "
                              f"backbone., e.g. {foreign[0]}); make one with "
                              "'python tools/convert_weights.py --backbone'")
    fit = compare(model, params, prefix="backbone.")
    missing = [name for name in fit.missing if not _is_dcn_extra(name)]
    mis_shaped = [name for name, _, _ in fit.mis_shaped]
    # Every entry is under backbone. (checked above): the unexpected ones are all unknown.
    unknown = list(fit.unexpected)
    if missing or mis_shaped or unknown:
        shown = ", ".join((missing + mis_shaped + unknown)[:5])
        raise CheckpointError(f"{path}: does not fit this backbone (another depth?): "
                              f"{len(missing)} missing, {len(mis_shaped)} mis-shaped, "
                              f"{len(unknown)} unknown, e.g. {shown}")
    _assign(model, params, fit.matched)
    return len(fit.matched)


def _is_dcn_extra(name):
    return re.search(r"\.conv2\.(bias|conv_offset_mask\.(weight|bias))$", name) is not None
