"""Mask-IoU loss of YOLACT++: the mask re-scoring net learns each mask's IoU with its GT."""
import mindspore as ms
from mindspore import nn, ops


class MaskIoULoss(nn.Cell):
    """Smooth-L1 (beta = 1) between the predicted IoU at the GT class and the measured IoU.

    The inputs are the same GT-box-cropped soft masks as the mask loss. Masks whose GT has
    an area <= ``discard_mask_area`` pixels (at S*S) are given weight 0 (the authors drop
    them; a weight keeps the shapes static). The target is IoU(pred > 0.5, GT) without an
    epsilon and carries no gradient; the net's input is not detached, so this loss also
    trains the coefficients and prototypes.

    Args:
        maskiou_net: cell [N, 1, S, S] -> [N, C-1] predicted IoU per class.
        discard_mask_area: GT masks with at most this many pixels are ignored (25).

    Inputs:
        pred_masks: [B, M, S, S] float32 cropped soft masks.
        mask_t: [B, M, S, S] float32 0/1 GT masks.
        label_t: [B, M] int32 0-based GT classes.
        pos_sample_valid: [B, M] float32 1 for real samples, 0 for padding.

    Returns:
        [] float32 unweighted sum (the caller multiplies by the weight, divides by the
        positives).
    """

    def __init__(self, maskiou_net, discard_mask_area=25):
        super().__init__()
        self.maskiou_net = maskiou_net
        self.discard_mask_area = discard_mask_area

    def iou_targets(self, pred_masks, mask_t, pos_sample_valid):
        """IoU targets [B, M] float32 and the 0/1 weights [B, M] float32 of the kept masks."""
        pred_masks = ops.stop_gradient(pred_masks)
        binary = (pred_masks > 0.5).astype(ms.float32)
        intersection = (binary * mask_t).sum(axis=(2, 3))
        gt_area = mask_t.sum(axis=(2, 3))
        union = binary.sum(axis=(2, 3)) + gt_area - intersection
        keep = ops.logical_and(pos_sample_valid > 0, gt_area > self.discard_mask_area)
        # Kept masks have a non-empty GT, so their union is > 0; others get a dummy divisor.
        iou = intersection / ops.select(keep, union, ops.ones_like(union))
        return ops.select(keep, iou, ops.zeros_like(iou)), keep.astype(ms.float32)

    def construct(self, pred_masks, mask_t, label_t, pos_sample_valid):
        batch, num_samples, height, width = pred_masks.shape
        target, weight = self.iou_targets(pred_masks, mask_t, pos_sample_valid)
        scores = self.maskiou_net(pred_masks.reshape(batch * num_samples, 1, height, width))
        predicted = ops.gather_elements(scores, 1, label_t.reshape(-1, 1).astype(ms.int32))
        predicted = predicted.reshape(batch, num_samples)
        per_mask = ops.smooth_l1_loss(predicted, target, beta=1.0, reduction="none")
        return (per_mask * weight).sum()
