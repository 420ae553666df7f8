"""The training loss of a config variant."""
from src.losses.multibox_loss import MultiBoxLoss


def build_loss(config, model):
    """``MultiBoxLoss`` with ``config.loss``'s weights and sampling, scoring ``model``'s masks
    with ``model.maskiou_net`` (None for YOLACT v1)."""
    loss = config.loss
    return MultiBoxLoss(config.num_classes, model.maskiou_net, loss.bbox_weight, loss.conf_weight,
                        loss.mask_weight, loss.semantic_weight, loss.maskiou_weight,
                        loss.negpos_ratio, loss.masks_to_train, loss.discard_mask_area)
