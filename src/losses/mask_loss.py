"""Lincomb mask loss: BCE of the assembled, GT-box-cropped masks of sampled positives."""
import mindspore as ms
from mindspore import nn, ops

from src.box.ops import crop_masks_tensor

# PyTorch's binary_cross_entropy clamps each log term at -100, so a cropped-out pixel
# (probability exactly 0) whose GT is 1 costs 100 instead of infinity.
_LOG_FLOOR = -100.0


def assemble_sampled_masks(coeff, proto, idx_t, gt_boxes, gt_labels, gt_masks, pos_sample_idx):
    """Masks of the sampled positives, cropped to their matched GT box, with their targets.

    Args:
        coeff: [B, P, K] float32 mask coefficients (after tanh).
        proto: [B, S, S, K] float32 prototypes (after ReLU), channels last.
        idx_t: [B, P] int32 matched GT slot of each prior.
        gt_boxes: [B, G, 4] float32 (x1, y1, x2, y2), relative; zero rows for padding.
        gt_labels: [B, G] int32 0-based foreground classes.
        gt_masks: [B, G, S, S] float32 0/1 GT masks at the prototype size.
        pos_sample_idx: [B, M] int32 prior indices of the sampled positives (0 = padding).

    Returns:
        pred_masks: [B, M, S, S] float32 sigmoid(proto @ coeff) cropped (padding 1) to the
            matched GT box, zero outside.
        mask_t: [B, M, S, S] float32 the matched GT masks.
        box_t: [B, M, 4] float32 the matched GT boxes (x1, y1, x2, y2), relative.
        label_t: [B, M] int32 the matched 0-based GT classes.
    """
    batch, num_priors, num_coeffs = coeff.shape
    size = proto.shape[1]
    num_slots = gt_boxes.shape[1]
    num_samples = pos_sample_idx.shape[1]

    prior_offset = ops.arange(0, batch * num_priors, num_priors, dtype=ms.int32).expand_dims(1)
    flat_prior = (pos_sample_idx + prior_offset).reshape(-1)
    sample_coeff = ops.gather(coeff.reshape(batch * num_priors, num_coeffs), flat_prior, 0)
    sample_coeff = sample_coeff.reshape(batch, num_samples, num_coeffs)

    slot = ops.gather(idx_t.reshape(-1), flat_prior, 0).reshape(batch, num_samples)
    slot_offset = ops.arange(0, batch * num_slots, num_slots, dtype=ms.int32).expand_dims(1)
    flat_slot = (slot + slot_offset).reshape(-1)
    box_t = ops.gather(gt_boxes.reshape(batch * num_slots, 4), flat_slot, 0)
    box_t = box_t.reshape(batch, num_samples, 4)
    label_t = ops.gather(gt_labels.reshape(-1), flat_slot, 0).reshape(batch, num_samples)
    mask_t = ops.gather(gt_masks.reshape(batch * num_slots, size * size), flat_slot, 0)
    mask_t = mask_t.reshape(batch, num_samples, size, size)

    logits = ops.BatchMatMul(transpose_b=True)(
        sample_coeff, proto.reshape(batch, size * size, num_coeffs))
    pred_masks = ops.sigmoid(logits).reshape(batch, num_samples, size, size)
    # The crop comes after the sigmoid: cropped-out pixels are probability 0, not logit 0.
    pred_masks = crop_masks_tensor(pred_masks, box_t, padding=1)
    return pred_masks, mask_t, box_t, label_t


def _floored_log(x):
    """max(log(x), -100) for x in [0, 1], with a zero (not NaN) gradient where x == 0."""
    is_positive = x > 0
    safe = ops.select(is_positive, x, ops.ones_like(x))
    floor = ops.full_like(x, _LOG_FLOOR)
    return ops.maximum(ops.select(is_positive, ops.log(safe), floor), floor)


class MaskLoss(nn.Cell):
    """Area-normalised BCE of the sampled positives' cropped masks.

    Per mask: sum over the S*S pixels of BCE(clamp(p, 0, 1), t) with PyTorch's -100 floor
    on each log term, divided by the GT box's area in mask pixels (w*S * h*S). When an image
    has more than ``masks_to_train`` positives (so only a subset was sampled), its masks are
    scaled by num_pos / masks_to_train. This equals the authors' sum / area * S*S followed
    by the global / S / S.

    Args:
        masks_to_train: M, the most positives per image whose masks are trained (100).

    Inputs:
        pred_masks: [B, M, S, S] float32 cropped soft masks from ``assemble_sampled_masks``.
        mask_t: [B, M, S, S] float32 0/1 GT masks.
        box_t: [B, M, 4] float32 GT boxes (x1, y1, x2, y2), relative.
        pos_sample_valid: [B, M] float32 1 for real samples, 0 for padding.
        num_pos: [B] float32 positives per image (before sampling).

    Returns:
        [] float32 unweighted sum (the caller multiplies by the mask weight, divides by the
        positives).
    """

    def __init__(self, masks_to_train=100):
        super().__init__()
        self.masks_to_train = masks_to_train

    def construct(self, pred_masks, mask_t, box_t, pos_sample_valid, num_pos):
        size = pred_masks.shape[2]
        prob = ops.clamp(pred_masks, 0.0, 1.0)
        log_fg = _floored_log(prob)
        log_bg = _floored_log(1.0 - prob)
        bce = -(mask_t * log_fg + (1.0 - mask_t) * log_bg)
        per_mask = bce.sum(axis=(2, 3))

        x1, y1, x2, y2 = ops.unstack(box_t, axis=-1)                                   # [B, M]
        box_area = (x2 - x1) * size * ((y2 - y1) * size)
        is_valid = pos_sample_valid > 0
        # Padding samples may point at an empty GT slot (area 0): keep the division finite.
        box_area = ops.select(is_valid, box_area, ops.ones_like(box_area))
        per_mask = ops.select(is_valid, per_mask / box_area, ops.zeros_like(per_mask))

        subsample_scale = ops.maximum(num_pos / self.masks_to_train, 1.0)
        return (per_mask.sum(axis=1) * subsample_scale).sum()
