"""Inference from an exported MINDIR: the graph as a callable, and ``ExportedDetector``.

The graph's input and outputs are documented in ``src.inference.net``.
"""
import os

import mindspore as ms
from mindspore import Tensor, nn
from mindspore.train.mind_ir_pb2 import ModelProto

from src.config.load import load_config
from src.inference.detector import BatchDetector
from src.runtime import init_context


class DeployError(ValueError):
    """An export request that cannot be carried out, an export that fails its check, or an
    exported file that is missing or does not fit the config."""


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
    """``src.inference.detector.Detector``'s API on an exported MINDIR instead of a checkpoint.

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
