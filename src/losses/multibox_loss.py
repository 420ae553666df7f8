"""YOLACT / YOLACT++ training loss: the five weighted, normalised terms and their sum."""
import mindspore as ms
from mindspore import nn, ops

from src.losses.box_loss import BoxLoss
from src.losses.conf_loss import ConfLoss
from src.losses.mask_loss import MaskLoss, assemble_sampled_masks
from src.losses.maskiou_loss import MaskIoULoss
from src.losses.semantic_loss import SemanticLoss


class MultiBoxLoss(nn.Cell):
    """Box, class, mask, semantic and mask-IoU losses, weighted and normalised as the authors.

    B, C, M and I are divided by N, the number of positive priors in the whole batch (at
    least 1: the authors' loss would be 0/0 there, a batch without positives now costs only
    its semantic term); S is divided by the batch size. I is 0 when ``maskiou_net`` is None
    (YOLACT v1).

    Args:
        num_classes: C, classes including background (81 on COCO).
        maskiou_net: cell [N, 1, S, S] -> [N, C-1], or None.
        bbox_weight, conf_weight, mask_weight, semantic_weight, maskiou_weight: term weights.
        negpos_ratio: OHEM negatives per positive.
        masks_to_train: M, sampled positives per image for the mask terms.
        discard_mask_area: GT masks with at most this many pixels (at S*S) skip the I term.

    Inputs:
        loc: [B, P, 4] float32 box offsets. conf: [B, P, C] float32 logits.
        coeff: [B, P, K] float32 coefficients (after tanh).
        proto: [B, S, S, K] float32 prototypes (after ReLU). segm: [B, C-1, s, s] logits.
        loc_t: [B, P, 4] float32 encoded targets. conf_t: [B, P] int32 (-1, 0, label+1).
        idx_t: [B, P] int32 matched GT slot.
        gt_boxes: [B, G, 4] float32 (x1, y1, x2, y2), relative. gt_labels: [B, G] int32 0-based.
        gt_masks: [B, G, S, S] 0/1. semantic_t: [B, C-1, s, s] 0/1 (any real or integer
            dtype; the data pipeline ships uint8).
        pos_sample_idx: [B, M] int32 sampled positive priors (0 = padding).
        pos_sample_valid: [B, M] float32 1 for real samples.

    Returns:
        total: [] float32 sum of the terms.
        terms: [5] float32 weighted terms in the order of ``TERM_NAMES``.
    """

    TERM_NAMES = ("B", "C", "M", "S", "I")

    def __init__(self, num_classes, maskiou_net=None, bbox_weight=1.5, conf_weight=1.0,
                 mask_weight=6.125, semantic_weight=1.0, maskiou_weight=25.0, negpos_ratio=3,
                 masks_to_train=100, discard_mask_area=25):
        super().__init__()
        self.num_classes = num_classes
        self.masks_to_train = masks_to_train
        self.bbox_weight = bbox_weight
        self.conf_weight = conf_weight
        self.mask_weight = mask_weight
        self.semantic_weight = semantic_weight
        self.maskiou_weight = maskiou_weight
        self.box_loss = BoxLoss()
        self.conf_loss = ConfLoss(negpos_ratio)
        self.mask_loss = MaskLoss(masks_to_train)
        self.semantic_loss = SemanticLoss()
        self.maskiou_loss = None if maskiou_net is None else MaskIoULoss(
            maskiou_net, discard_mask_area)

    def construct(self, loc, conf, coeff, proto, segm, loc_t, conf_t, idx_t, gt_boxes,
                  gt_labels, gt_masks, semantic_t, pos_sample_idx, pos_sample_valid):
        if conf.shape[2] != self.num_classes or pos_sample_idx.shape[1] != self.masks_to_train:
            raise ValueError("MultiBoxLoss: conf must have num_classes channels and "
                             "pos_sample_idx masks_to_train columns")
        gt_masks = gt_masks.astype(ms.float32)
        semantic_t = semantic_t.astype(ms.float32)
        batch = loc.shape[0]
        num_pos = (conf_t > 0).astype(ms.float32).sum(axis=1)
        total_pos = ops.maximum(num_pos.sum(), 1.0)

        box = self.box_loss(loc, loc_t, conf_t)
        confidence = self.conf_loss(conf, conf_t)
        pred_masks, mask_t, box_t, label_t = assemble_sampled_masks(
            coeff, proto, idx_t, gt_boxes, gt_labels, gt_masks, pos_sample_idx)
        mask = self.mask_loss(pred_masks, mask_t, box_t, pos_sample_valid, num_pos)
        semantic = self.semantic_loss(segm, semantic_t)
        if self.maskiou_loss is None:
            maskiou = ops.zeros((), ms.float32)
        else:
            maskiou = self.maskiou_loss(pred_masks, mask_t, label_t, pos_sample_valid)

        terms = ops.stack([
            box * self.bbox_weight / total_pos,
            confidence * self.conf_weight / total_pos,
            mask * self.mask_weight / total_pos,
            semantic * self.semantic_weight / batch,
            maskiou * self.maskiou_weight / total_pos,
        ])
        return terms.sum(), terms
