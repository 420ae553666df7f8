"""Training checkpoints: model, optimizer and loss-scale state plus the iteration, written
atomically, with rotation and resume."""
import glob
import os
import re

import mindspore as ms

from src.train.ema import LIVE_PREFIX
from src.train.optimizer import optimizer_state
from src.utils.checkpoint import CheckpointError, read_checkpoint, save_checkpoint_atomic

_ITERATION_KEY = "iteration"
_SCALE_KEYS = ("loss_scale.value", "loss_scale.counter")


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


def _training_state(model, optimizer, loss_scaler, weight_average=None):
    """(name, Parameter) pairs that together define where training is.

    With a ``weight_average`` the model's names hold the average (what evaluation loads)
    and ``live.<name>`` the weights being trained.
    """
    if weight_average is None:
        state = [(name, param) for name, param in model.parameters_and_names()]
    else:
        state = weight_average.named_averages()
        state += [(LIVE_PREFIX + name, param) for name, param in model.parameters_and_names()]
        state.append((weight_average.num_updates.name, weight_average.num_updates))
    state += [(param.name, param) for param in optimizer_state(optimizer)]
    state.append(("global_step", optimizer.global_step))
    scale_value = getattr(loss_scaler, "scale_value", None)
    counter = getattr(loss_scaler, "counter", None)
    for key, param in zip(_SCALE_KEYS, (scale_value, counter)):
        if isinstance(param, ms.Parameter):
            state.append((key, param))
    return state


def save_training_checkpoint(path, model, optimizer, loss_scaler, iteration, weight_average=None):
    """Write everything needed to continue at ``iteration`` (the next step to run)."""
    entries = [{"name": name, "data": param} for name, param in
               _training_state(model, optimizer, loss_scaler, weight_average)]
    save_checkpoint_atomic(entries, path, append_dict={_ITERATION_KEY: int(iteration)})


def rotate_checkpoints(output_dir, name, keep_last):
    """Delete all but the ``keep_last`` newest checkpoints of ``name`` (0 keeps all)."""
    if keep_last <= 0:
        return
    for path in list_checkpoints(output_dir, name)[:-keep_last]:
        os.remove(path)


def resume_training(path, model, optimizer, loss_scaler, weight_average=None):
    """Restore a checkpoint written by ``save_training_checkpoint`` (with the same
    ``weight_average`` setting).

    Returns:
        the iteration to continue from.

    Raises:
        CheckpointError: the file is missing, is not a training checkpoint (no iteration or
            optimizer state: e.g. converted weights, use them with --backbone_ckpt or eval),
            or does not fit the model.
    """
    params = read_checkpoint(path)
    if _ITERATION_KEY not in params or "global_step" not in params:
        raise CheckpointError(f"{path}: not a training checkpoint (no iteration / optimizer "
                              "state); pass model weights to eval.py, or an ImageNet backbone "
                              "to --backbone_ckpt")
    expected = dict(_training_state(model, optimizer, loss_scaler, weight_average))
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
    return int(params[_ITERATION_KEY].asnumpy())


def load_backbone_weights(model, path):
    """Initialise ``model.backbone`` from an ImageNet checkpoint made by
    ``python -m src.convert_weights --backbone``.

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
                              "'python -m src.convert_weights --backbone'")
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
