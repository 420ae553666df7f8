"""Reading and writing MindSpore checkpoints safely.

Writes go to a temporary file in the destination folder, then ``os.replace`` it over the
target, so a crash never leaves a truncated checkpoint under the final name.
"""
import os
import tempfile

import mindspore as ms


# Top-level cells of ``src.model.yolact.Yolact``: file entries under these names are model
# weights; anything else in a file (optimizer moments, step counters) is training state.
MODEL_MODULES = ("backbone", "fpn", "proto_net", "prediction_head", "semantic_head", "maskiou_net")


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or does not fit the model; the message
    names the file and the offending parameters."""


def save_checkpoint_atomic(save_obj, path, append_dict=None):
    """Write ``save_obj`` (a Cell or a list of {"name", "data"}) to ``path`` atomically."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, temp_path = tempfile.mkstemp(prefix=".tmp_", suffix=".ckpt", dir=directory)
    os.close(handle)
    try:
        ms.save_checkpoint(save_obj, temp_path, append_dict=append_dict)
        os.replace(temp_path, path)
    finally:
        if os.path.exists(temp_path):
            os.remove(temp_path)


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
    name starts with one of ``allow_missing_prefixes``; entries of the file that ``net``
    does not have are an error when they are model weights (``MODEL_MODULES``) and ignored
    when they are training state (optimizer moments, step counters).

    Returns:
        the dict read from the file (training state included), for callers that need it.

    Raises:
        CheckpointError: naming the file, the missing / unexpected / mis-shaped parameters
            and the likely cause (a checkpoint of another config).
    """
    params = read_checkpoint(path)
    own = {name: param for name, param in net.parameters_and_names()}
    missing = [name for name in own if name not in params
               and not name.startswith(tuple(allow_missing_prefixes))]
    mis_shaped = [f"{name} {tuple(params[name].shape)} != {tuple(own[name].shape)}"
                  for name in own if name in params and tuple(params[name].shape) != tuple(own[name].shape)]
    unexpected = [name for name in params
                  if name not in own and name.split(".")[0] in MODEL_MODULES]
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
