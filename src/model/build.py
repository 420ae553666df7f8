"""``build_model(config)``: the one place where the config meets the constructors."""
import warnings

import mindspore as ms

from src.box.priors import feature_map_sizes, make_priors
from src.kernels.build import find_compiler
from src.model.fpn import FPN
from src.model.maskiou_net import MaskIoUNet
from src.model.prediction_head import PredictionHead
from src.model.protonet import ProtoNet
from src.model.resnet import ResNet
from src.model.semantic_head import SemanticHead
from src.model.yolact import Yolact

# Five stride-2 3x3 convs without padding reduce 63 px to 1 (63 -> 31 -> 15 -> 7 -> 3 -> 1).
MASKIOU_MIN_GRID = 63
KERNEL_CHOICES = ("auto", "cpu", "portable")


def uses_cpu_kernels(config):
    """Whether ``config.model.kernels`` selects the C++ CPU kernels on the current device.

    ``auto`` on the CPU device without a C++ compiler warns and takes the portable path.
    """
    kernels = config.model.kernels
    if kernels not in KERNEL_CHOICES:
        raise ValueError(f"config '{config.name}': model.kernels must be one of {KERNEL_CHOICES}, "
                         f"got {kernels!r}")
    on_cpu = ms.get_context("device_target") == "CPU"
    if kernels == "cpu" and not on_cpu:
        raise ValueError(f"config '{config.name}': model.kernels=cpu needs the CPU device, the "
                         f"device is {ms.get_context('device_target')}; use auto or portable")
    if kernels == "auto" and on_cpu and find_compiler() is None:
        warnings.warn("model.kernels=auto: no C++ compiler (g++ or $CXX) found, so the C++ CPU "
                      "kernels are off and the model runs on MindSpore primitives (slower on "
                      "CPU, same results); install g++ to use them", stacklevel=2)
        return False
    return kernels == "cpu" or (kernels == "auto" and on_cpu)


def prior_boxes(config):
    """[P, 4] float32 (cx, cy, w, h) priors of ``config`` at its input size."""
    model = config.model
    return make_priors(config.max_size, model.pred_scales, model.pred_aspect_ratios,
                       square_anchors=model.use_square_anchors)


def build_model(config, freeze_bn=False):
    """Build the network of a variant.

    Args:
        config: a ``YolactConfig``.
        freeze_bn: BatchNorm uses its running statistics and gamma/beta are not trained
            (the authors do this when the per-device batch is below 6).

    ``config.model.kernels`` picks the implementation (``uses_cpu_kernels``); the parameters
    and their names are the same either way, so checkpoints move freely between them.
    """
    model = config.model
    if model.use_maskiou and prototype_size(config) < MASKIOU_MIN_GRID:
        raise ValueError(f"config '{config.name}': the mask re-scoring net needs a prototype grid "
                         f"of at least {MASKIOU_MIN_GRID} px, but max_size {config.max_size} "
                         f"gives {prototype_size(config)}; YOLACT++ needs max_size >= 249")
    cpu_kernels = uses_cpu_kernels(config)
    backbone_cfg = model.backbone
    backbone = ResNet(layers=backbone_cfg.layers, base_width=backbone_cfg.base_width,
                      dcn_layers=backbone_cfg.dcn_layers, dcn_interval=backbone_cfg.dcn_interval,
                      dcn_impl="kernel" if cpu_kernels else backbone_cfg.dcn_impl,
                      freeze_bn=freeze_bn)
    expansion = 4
    stage_channels = tuple(backbone_cfg.base_width * 2 ** stage * expansion for stage in (1, 2, 3))
    num_levels = len(model.pred_scales)
    fpn = FPN(stage_channels, channels=model.fpn_channels, num_downsample=num_levels - 3,
              winograd=cpu_kernels)
    fg_classes = config.num_classes - 1
    maskiou_net = (MaskIoUNet(fg_classes, model.maskiou_channels) if model.use_maskiou else None)
    return Yolact(
        backbone=backbone,
        fpn=fpn,
        proto_net=ProtoNet(model.fpn_channels, model.proto_channels, model.num_prototypes,
                           winograd=cpu_kernels),
        prediction_head=PredictionHead(model.fpn_channels, model.num_anchors, config.num_classes,
                                       model.num_prototypes, winograd=cpu_kernels),
        semantic_head=SemanticHead(model.fpn_channels, fg_classes),
        maskiou_net=maskiou_net,
        priors=prior_boxes(config))


def prototype_size(config):
    """Side of the prototype grid (138 at 550): twice the P3 size."""
    return 2 * feature_map_sizes(config.max_size)[0]
