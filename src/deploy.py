"""Model export (MINDIR, or AIR on Ascend) and inference from an exported MINDIR.

The exported graph is ``src.inference.InferenceNet`` in eval mode: backbone, FPN, heads,
Fast NMS, mask assembly and (YOLACT++) mask re-scoring, with static shapes. B is the export
batch size (``--batch_size``), S the config's ``data.max_size``, D its
``eval.max_detections``, M the prototype grid (twice the P3 side: 138 at 550, 64 at 256).

Input (one):
    images: [B, 3, S, S] float32, normalised RGB: the image resized to S x S (cv2
        INTER_LINEAR on float32, aspect ratio not kept), ``(x - mean) / std`` in BGR, then
        BGR -> RGB (``src.data.transforms.eval_transform``).

Outputs (six, in this order; a MINDIR keeps the order, not the names):
    0 boxes: [B, D, 4] float32 (x1, y1, x2, y2), relative to the image, decoded, not clamped.
    1 classes: [B, D] int32, 0-based foreground class (background excluded).
    2 box_scores: [B, D] float32 class probability, descending along D.
    3 mask_scores: [B, D] float32, YOLACT++: box score x predicted mask IoU; YOLACT: = box_scores.
    4 masks: [B, D, M, M] float32 soft masks in [0, 1] on the prototype grid, zero
        outside the (padded) box.
    5 valid: [B, D] bool; invalid slots come last. Read only valid slots: invalid ones
        hold zero boxes, classes and scores, but their masks are not all zero (the
        padding-1 crop of a zero box keeps pixel (0, 0) at sigmoid(0) = 0.5).

Turning one image's slice into pixel boxes and full-size binary masks is host work:
``src.inference.detections_to_image``, which ``ExportedDetector`` uses.
"""
import contextlib
import os
import shutil
import tempfile

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn
from mindspore.train.mind_ir_pb2 import ModelProto

from src.config.load import load_config
from src.config.schema import replace
from src.inference import BatchDetector, build_inference_net
from src.model.build import build_model
from src.train.context import init_context
from src.utils.checkpoint import CheckpointError, load_weights

FILE_SUFFIXES = {"MINDIR": ".mindir", "AIR": ".air"}
OUTPUT_NAMES = ("boxes", "classes", "box_scores", "mask_scores", "masks", "valid")
# The exported graph runs the same kernels as the Cell: anything above float rounding noise
# means the file does not compute what the checkpoint computes.
VERIFY_TOLERANCE = 1e-5
VERIFY_SEED = 0


class DeployError(ValueError):
    """An export request that cannot be carried out, or an export that fails its check."""


def exported_path(file_name, file_format):
    """The absolute path MindSpore writes for ``file_name``: the format's suffix is appended
    unless the name already ends with it."""
    suffix = FILE_SUFFIXES[file_format]
    path = os.path.abspath(file_name)
    return path if path.endswith(suffix) else path + suffix


def export_checkpoint(config, ckpt_path, file_name, file_format="MINDIR", batch_size=1,
                      device_target="CPU", verify=True):
    """Export the ``InferenceNet`` of ``config`` with the weights of ``ckpt_path``.

    Cheap checks come first (format, device, batch size, output folder, checkpoint file),
    then the graph is compiled and written into a staging folder next to the destination;
    a MINDIR is reloaded there and compared with the Cell before it is moved into place, so
    the final name only ever holds a complete, verified export.

    Args:
        config: a ``YolactConfig``.
        ckpt_path: checkpoint of that config.
        file_name: output path, with or without the format's suffix.
        file_format: "MINDIR" or "AIR" (AIR needs an Ascend device).
        batch_size: B of the exported input.
        device_target: "CPU", "GPU" or "Ascend".
        verify: reload a MINDIR and compare it with the Cell.

    Returns:
        (final path, {output name: max abs difference} or None when not verified).

    Raises:
        DeployError: bad arguments, an unusable output folder, or a failed comparison.
        CheckpointError: the checkpoint is missing or belongs to another config.
    """
    file_format, final_path = _check_request(file_name, file_format, batch_size, device_target)
    with _staging_folder(os.path.dirname(final_path)) as staging:
        # load_weights says the same, but only after the model is built.
        if not os.path.isfile(ckpt_path):
            raise CheckpointError(f"{ckpt_path}: checkpoint file not found")
        # A graph with the C++ CPU kernels would name a library file of this machine.
        model = build_model(replace(config, **{"model.kernels": "portable"}))
        load_weights(model, ckpt_path)
        model.set_train(False)
        net = build_inference_net(config, model)
        input_shape = (batch_size, 3, config.max_size, config.max_size)
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


def load_exported(mindir_path):
    """An exported MINDIR as a callable ``nn.GraphCell`` (outputs in ``OUTPUT_NAMES`` order)."""
    if not os.path.isfile(mindir_path):
        raise DeployError(f"{mindir_path}: exported MINDIR file not found")
    return nn.GraphCell(ms.load(mindir_path))


def exported_input_shape(mindir_path):
    """(B, 3, S, S) of an exported MINDIR's image input, read from the file's graph proto."""
    model = ModelProto()
    with open(mindir_path, "rb") as handle:
        model.ParseFromString(handle.read())
    inputs = model.graph.input
    if len(inputs) != 1 or len(inputs[0].tensor) != 1:
        raise DeployError(f"{mindir_path}: expected one image input, found {len(inputs)} inputs")
    return tuple(int(d) for d in inputs[0].tensor[0].dims)


class ExportedDetector(BatchDetector):
    """``src.inference.Detector``'s API on an exported MINDIR instead of a checkpoint.

    Example::

        det = ExportedDetector("yolact_plus_resnet50.mindir", config="yolact_plus_resnet50")
        result = det(cv2.imread("dog.jpg"))      # the same dict as Detector returns

    Args:
        mindir: the file written by ``export_checkpoint`` / ``export.py``.
        config: the variant it was exported from (name, YAML path or ``YolactConfig``): the
            input size, class names and mask threshold come from it.
        device_target: "CPU", "GPU" or "Ascend".
        overrides: ``section.field=value`` strings applied to a named config.

    Raises:
        DeployError: the file is missing or was exported for another input size.
    """

    def __init__(self, mindir, config="yolact_plus_resnet50", device_target="CPU", overrides=()):
        self.config = load_config(config, overrides) if isinstance(config, str) else config
        init_context(device_target)
        self.net = load_exported(mindir)
        input_shape = exported_input_shape(mindir)
        size = self.config.max_size
        if input_shape[1:] != (3, size, size):
            raise DeployError(f"{mindir}: exported for input {input_shape}, but config "
                              f"'{self.config.name}' has max_size {size}")
        # B is fixed at export: the graph's reshapes were built for it.
        self.batch_size = input_shape[0]

    def run_network(self, batch):
        """The exported graph's outputs (numpy) of a [batch_size, 3, S, S] normalised batch."""
        return tuple(o.asnumpy() for o in self.net(Tensor(batch)))


def _check_request(file_name, file_format, batch_size, device_target):
    """The cheap checks of an export request, before anything is built.

    Returns:
        (upper-case file format, the absolute path MindSpore will write).
    """
    requested, file_format = file_format, str(file_format).upper()
    if file_format not in FILE_SUFFIXES:
        raise DeployError(f"--file_format '{requested}': expected one of {', '.join(FILE_SUFFIXES)}")
    if file_format == "AIR" and device_target != "Ascend":
        raise DeployError("AIR export needs an Ascend device (CANN); use MINDIR on CPU/GPU")
    if batch_size < 1:
        raise DeployError(f"--batch_size must be >= 1, got {batch_size}")
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
