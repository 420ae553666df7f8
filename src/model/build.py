"""``build_model(config, device_target)``: the one place where the config meets the
constructors."""
from src.box.priors import make_priors
from src.kernels.selection import apply_cpu_kernels, resolve_kernels
from src.model.fpn import FPN
from src.model.maskiou_net import MaskIoUNet
from src.model.prediction_head import PredictionHead
from src.model.protonet import ProtoNet
from src.model.resnet import EXPANSION, ResNet
from src.model.semantic_head import SemanticHead
from src.model.yolact import Yolact


def prior_boxes(config):
    """[P, 4] float32 (cx, cy, w, h) priors of ``config`` at its input size."""
    model = config.model
    return make_priors(config.max_size, model.pred_scales, model.pred_aspect_ratios,
                       square_anchors=model.use_square_anchors)


def build_model(config, device_target="CPU", freeze_bn=False):
    """Build the network of a variant.

    Args:
        config: a ``YolactConfig`` (validated by ``src.config.load``).
        device_target: the device it will run on; with ``model.kernels`` it decides whether
            the C++ CPU kernels are swapped in (``src.kernels.selection``). Parameters and
            their names are the same either way, so checkpoints move freely between them.
        freeze_bn: BatchNorm uses its running statistics and gamma/beta are not trained
            (the authors do this when the per-device batch is below 6).

    Raises:
        KernelBuildError: ``model.kernels=cpu`` and the kernels cannot be used.
    """
    model = config.model
    cpu_kernels = resolve_kernels(model.kernels, device_target)
    backbone_cfg = model.backbone
    backbone = ResNet(layers=backbone_cfg.layers, base_width=backbone_cfg.base_width,
                      dcn_layers=backbone_cfg.dcn_layers, dcn_interval=backbone_cfg.dcn_interval,
                      dcn_impl=backbone_cfg.dcn_impl, freeze_bn=freeze_bn)
    stage_channels = tuple(backbone_cfg.base_width * 2 ** stage * EXPANSION for stage in (1, 2, 3))
    fpn = FPN(stage_channels, channels=model.fpn_channels,
              num_downsample=len(model.pred_scales) - 3)
    # Built in this order on purpose: each constructor draws its initial weights from the
    # global seed, so the order fixes what a seed gives (and the checkpoints tests compare).
    maskiou_net = (MaskIoUNet(config.num_fg_classes, model.maskiou_channels)
                   if model.use_maskiou else None)
    network = Yolact(
        backbone=backbone,
        fpn=fpn,
        proto_net=ProtoNet(model.fpn_channels, model.proto_channels, model.num_prototypes),
        prediction_head=PredictionHead(model.fpn_channels, model.num_anchors, config.num_classes,
                                       model.num_prototypes),
        semantic_head=SemanticHead(model.fpn_channels, config.num_fg_classes),
        maskiou_net=maskiou_net,
        priors=prior_boxes(config))
    if cpu_kernels:
        apply_cpu_kernels(network)
    return network
