"""Export a checkpoint's ``InferenceNet`` (``src.inference.net``) to MINDIR (any device) or
AIR (Ascend), verified before it is put in place.

The export always builds the portable model (``model.kernels=portable``): a graph with the
C++ CPU kernels would name a library file of this machine.
"""
import contextlib
import os
import shutil
import tempfile

import mindspore as ms
import numpy as np
from mindspore import Tensor

from src.checkpoint import CheckpointError, load_weights
from src.config.schema import replace
from src.inference.exported import DeployError, load_exported
from src.inference.net import OUTPUT_NAMES, build_inference_net
from src.model.build import build_model
from src.runtime import init_context

FILE_SUFFIXES = {"MINDIR": ".mindir", "AIR": ".air"}
# The exported graph runs the same kernels as the Cell: anything above float rounding noise
# means the file does not compute what the checkpoint computes.
VERIFY_TOLERANCE = 1e-5
VERIFY_SEED = 0


def exported_path(file_name, file_format):
    """The absolute path MindSpore writes for ``file_name``: the format's suffix is appended
    unless the name already ends with it."""
    suffix = FILE_SUFFIXES[file_format]
    path = os.path.abspath(file_name)
    return path if path.endswith(suffix) else path + suffix


def export_checkpoint(config, ckpt_path, file_name, file_format="MINDIR", device_target="CPU",
                      verify=True):
    """Export the ``InferenceNet`` of ``config`` with the weights of ``ckpt_path``.

    Cheap checks come first (format, device, output folder, checkpoint file),
    then the graph is compiled and written into a staging folder next to the destination;
    a MINDIR is reloaded there and compared with the Cell before it is moved into place, so
    the final name only ever holds a complete, verified export.

    Args:
        config: a ``YolactConfig``; ``eval.batch_size`` is the graph's input batch B.
        ckpt_path: checkpoint of that config.
        file_name: output path, with or without the format's suffix.
        file_format: "MINDIR" or "AIR" (AIR needs an Ascend device).
        device_target: "CPU", "GPU" or "Ascend".
        verify: reload a MINDIR and compare it with the Cell.

    Returns:
        (final path, {output name: max abs difference} or None when not verified).

    Raises:
        DeployError: bad arguments, an unusable output folder, or a failed comparison.
        CheckpointError: the checkpoint is missing or belongs to another config.
    """
    file_format, final_path = _check_request(file_name, file_format, device_target)
    with _staging_folder(os.path.dirname(final_path)) as staging:
        # load_weights says the same, but only after the model is built.
        if not os.path.isfile(ckpt_path):
            raise CheckpointError(f"{ckpt_path}: checkpoint file not found")
        model = build_model(replace(config, **{"model.kernels": "portable"}), device_target)
        load_weights(model, ckpt_path)
        model.set_train(False)
        net = build_inference_net(config, model)
        input_shape = (config.eval.batch_size, 3, config.max_size, config.max_size)
        staged_path = os.path.join(staging, os.path.basename(final_path))
        ms.export(net, Tensor(np.zeros(input_shape, np.float32)), file_name=staged_path,
                  file_format=file_format)
        differences = None
        if verify and file_format == "MINDIR":
            differences = compare_with_exported(net, staged_path, input_shape)
            check_differences(differences, final_path)
        _publish(staging, os.path.dirname(final_path))
    return final_path, differences


def compare_with_exported(net, mindir_path, input_shape, seed=VERIFY_SEED):
    """Max abs difference per output between ``net`` and the MINDIR on one random input.

    Args:
        net: the ``InferenceNet`` the file was exported from.
        mindir_path: the exported file.
        input_shape: (B, 3, S, S) of the export.
        seed: of the standard-normal input (normalised images are roughly N(0, 1)).

    Returns:
        {output name: float}; integer and bool outputs are compared as numbers, so a
        different class or validity gives a difference >= 1.
    """
    images = Tensor(np.random.default_rng(seed).normal(size=input_shape).astype(np.float32))
    exported = load_exported(mindir_path)(images)
    reference = net(images)
    return {name: float(np.abs(mine.asnumpy().astype(np.float64)
                               - theirs.asnumpy().astype(np.float64)).max())
            for name, mine, theirs in zip(OUTPUT_NAMES, exported, reference)}


def check_differences(differences, final_path):
    """Raise a DeployError naming every output whose difference exceeds ``VERIFY_TOLERANCE``
    (or is NaN); ``final_path`` is where the rejected export would have gone."""
    worst = {name: diff for name, diff in differences.items() if not diff <= VERIFY_TOLERANCE}
    if worst:
        listed = ", ".join(f"{name} {diff:.3g}" for name, diff in differences.items())
        raise DeployError(f"the exported MINDIR differs from the checkpoint's InferenceNet by more "
                          f"than {VERIFY_TOLERANCE:g} in {', '.join(worst)} (max abs difference: "
                          f"{listed}); nothing written to {final_path}")


def _check_request(file_name, file_format, device_target):
    """The cheap checks of an export request, before anything is built.

    Returns:
        (upper-case file format, the absolute path MindSpore will write).
    """
    requested, file_format = file_format, str(file_format).upper()
    if file_format not in FILE_SUFFIXES:
        raise DeployError(f"--file_format '{requested}': expected one of {', '.join(FILE_SUFFIXES)}")
    if file_format == "AIR" and device_target != "Ascend":
        raise DeployError("AIR export needs an Ascend device (CANN); use MINDIR on CPU/GPU")
    if not file_name or file_name.endswith(os.sep):
        raise DeployError(f"--file_name '{file_name}' must name a file, not a folder")
    final_path = exported_path(file_name, file_format)
    if os.path.isdir(final_path):
        raise DeployError(f"{final_path}: is a folder; choose another --file_name")
    try:
        init_context(device_target)
    except (ValueError, RuntimeError) as error:
        raise DeployError(f"--device_target {device_target}: {error}") from None
    return file_format, final_path


@contextlib.contextmanager
def _staging_folder(folder):
    """A fresh hidden folder inside ``folder`` (proving it writable), removed on exit."""
    if not os.path.isdir(folder):
        raise DeployError(f"{folder}: output folder does not exist")
    try:
        staging = tempfile.mkdtemp(prefix=".export_", dir=folder)
    except OSError as error:
        raise DeployError(f"{folder}: cannot write the export into this folder "
                          f"({error.strerror})") from None
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _publish(staging, folder):
    """Move the staged export into ``folder``: the model file and, for models over 1 GB,
    MindSpore's ``<name>_variables`` folder that the file refers to by relative path."""
    for entry in os.listdir(staging):
        target = os.path.join(folder, entry)
        if os.path.isdir(target):
            shutil.rmtree(target)
        os.replace(os.path.join(staging, entry), target)
