"""Checkpoint files: atomic writes, strict model loading, training state with rotation and
resume, and ImageNet backbone initialisation.

Writes go to a temporary file in the destination folder, then ``os.replace`` it over the
target, so a crash never leaves a truncated checkpoint under the final name. This module
knows files and names, not optimizers: the trainer passes the (name, Parameter) pairs that
make up its state (``src.train.setup.TrainingSetup.state``).
"""
import glob
import os
import re
import tempfile

import mindspore as ms

ITERATION_KEY = "iteration"
GLOBAL_STEP_KEY = "global_step"
# Temporary files of a save start with this; so do MindSpore's own (``<temp>.tmp``).
TEMP_PREFIX = ".tmp_"


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or does not fit the model; the message
    names the file and the offending parameters."""


def save_checkpoint_atomic(save_obj, path, append_dict=None):
    """Write ``save_obj`` (a Cell or a list of {"name", "data"}) to ``path`` atomically."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, temp_path = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".ckpt", dir=directory)
    os.close(handle)
    # MindSpore writes <name>.tmp and renames it to <name>.ckpt: a failed write leaves it.
    temporaries = (temp_path, os.path.splitext(temp_path)[0] + ".tmp")
    try:
        ms.save_checkpoint(save_obj, temp_path, append_dict=append_dict)
        os.replace(temp_path, path)
    finally:
        for temporary in temporaries:
            if os.path.exists(temporary):
                os.remove(temporary)


def read_checkpoint(path):
    """{name: Parameter} of a checkpoint file, or a CheckpointError naming the file."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        return ms.load_checkpoint(path)
    except (ValueError, RuntimeError, OSError) as error:
        raise CheckpointError(f"{path}: not a readable MindSpore checkpoint ({error})") from None


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
    own = {name: param for name, param in net.parameters_and_names()}
    modules = tuple(net.name_cells())
    missing = [name for name in own if name not in params
               and not name.startswith(tuple(allow_missing_prefixes))]
    mis_shaped = [f"{name} {tuple(params[name].shape)} != {tuple(own[name].shape)}"
                  for name in own if name in params and tuple(params[name].shape) != tuple(own[name].shape)]
    unexpected = [name for name in params if name not in own and name.split(".")[0] in modules]
    problems = []
    for label, names in (("missing", missing), ("shape mismatch", mis_shaped),
                         ("unexpected", unexpected)):
        if names:
            shown = ", ".join(names[:5]) + (f" (+{len(names) - 5} more)" if len(names) > 5 else "")
            problems.append(f"{len(names)} {label}: {shown}")
    if problems:
        raise CheckpointError(f"{path}: does not fit this model (a checkpoint of another config?): "
                              + "; ".join(problems))
    ms.load_param_into_net(net, {name: params[name] for name in own if name in params})
    return params


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


def save_training_checkpoint(path, state, iteration):
    """Write the training ``state`` ((name, Parameter) pairs, the optimizer's step counter
    under ``GLOBAL_STEP_KEY`` among them) and ``iteration``, the next step to run."""
    entries = [{"name": name, "data": param} for name, param in state]
    save_checkpoint_atomic(entries, path, append_dict={ITERATION_KEY: int(iteration)})


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
            optimizer state: e.g. converted weights, use them with --backbone_ckpt or eval),
            or does not fit the model.
    """
    params = read_checkpoint(path)
    if ITERATION_KEY not in params or GLOBAL_STEP_KEY not in params:
        raise CheckpointError(f"{path}: not a training checkpoint (no iteration / optimizer "
                              "state); pass model weights to eval.py, or an ImageNet backbone "
                              "to --backbone_ckpt")
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
    own = {name: param for name, param in model.parameters_and_names()
           if name.startswith("backbone.")}
    missing = [name for name in own if name not in params and not _is_dcn_extra(name)]
    mis_shaped = [name for name in own
                  if name in params and tuple(params[name].shape) != tuple(own[name].shape)]
    unknown = [name for name in params if name not in own]
    if missing or mis_shaped or unknown:
        shown = ", ".join((missing + mis_shaped + unknown)[:5])
        raise CheckpointError(f"{path}: does not fit this backbone (another depth?): "
                              f"{len(missing)} missing, {len(mis_shaped)} mis-shaped, "
                              f"{len(unknown)} unknown, e.g. {shown}")
    ms.load_param_into_net(model, {name: params[name] for name in own if name in params})
    return sum(1 for name in own if name in params)


def _is_dcn_extra(name):
    return re.search(r"\.conv2\.(bias|conv_offset_mask\.(weight|bias))$", name) is not None
