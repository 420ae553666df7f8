"""Inference detection layer: decode, score filter, top-k, Fast NMS (per class or across
classes), fixed-size output.

The authors' ``Detect`` with ``use_fast_nms=True`` (their ``eval.py`` setting, which produced
the published numbers), written with static shapes: priors that fail the score filter are
not removed but carry a sentinel score below every probability, so they sort after every
kept prior, never suppress a box and are never reported.
"""
import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

from src.box.coder import decode_tensor
from src.box.ops import pairwise_iou_tensor

# Below any softmax probability: marks priors that failed the score filter and empty slots.
_NOT_KEPT_SCORE = -1.0


class Detect(nn.Cell):
    """Turns raw head outputs into at most ``max_detections`` detections per image.

    Steps (per image, batched): decode every prior; keep a prior when its best foreground
    score > ``score_threshold``. Then, by default (the authors' ``fast_nms``): a kept prior
    enters every class with that class's score, however small (no per-class threshold); per
    foreground class, the ``top_k`` kept priors by score go through Fast NMS: box j is dropped
    when its IoU with any higher-scoring box of the same class exceeds ``nms_threshold`` —
    even if that box was itself dropped. With ``cross_class_nms`` (the authors'
    ``cc_fast_nms``, their ``eval.py --cross_class_nms``): each kept prior enters once, with
    its best foreground class and score, and the ``top_k`` of them go through one Fast NMS
    over all classes. The survivors are sorted by score and the first ``max_detections`` are
    returned (the authors keep every cross-class survivor, up to ``top_k``).

    Args:
        num_classes: C, classes including background (81 on COCO).
        score_threshold: a prior is kept when its best foreground score is strictly above.
        nms_threshold: a box survives when its IoU with every earlier box is <= this.
        top_k: candidates per class (per image with ``cross_class_nms``) entering NMS.
        max_detections: D, detection slots per image.
        cross_class_nms: one NMS over all classes instead of one per class.

    Inputs:
        loc: [B, P, 4] float32 box regression (dcx, dcy, dw, dh).
        conf: [B, P, C] float32 softmax class probabilities, column 0 = background.
        coeff: [B, P, K] float32 mask coefficients.
        priors: [P, 4] float32 (cx, cy, w, h), relative.

    Returns:
        boxes: [B, D, 4] float32 (x1, y1, x2, y2), relative, decoded and not clamped.
        classes: [B, D] int32 0-based foreground class (0 = the first non-background class).
        scores: [B, D] float32 class probability, descending along D.
        coeffs: [B, D, K] float32 mask coefficients of the detection's prior.
        valid: [B, D] bool; invalid slots are last and hold zeros in every output.
    """

    def __init__(self, num_classes, score_threshold=0.05, nms_threshold=0.5, top_k=200,
                 max_detections=100, cross_class_nms=False):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must include background and >= 1 class, got {num_classes}")
        self.num_fg_classes = num_classes - 1
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self.top_k = int(top_k)
        self.max_detections = int(max_detections)
        self.cross_class_nms = bool(cross_class_nms)
        # Strict upper triangle: entry [i, j] is True when candidate i ranks before j.
        self.earlier_mask = Tensor(np.triu(np.ones((self.top_k, self.top_k), np.bool_), k=1))

    def construct(self, loc, conf, coeff, priors):
        batch, num_priors, _ = loc.shape
        num_fg = self.num_fg_classes
        num_cand = min(self.top_k, num_priors)
        boxes = decode_tensor(loc, priors)

        fg_scores = ops.slice(conf, (0, 0, 1), (batch, num_priors, num_fg))
        best_scores, best_classes = ops.max(fg_scores, axis=-1)                    # [B, P]
        kept_prior = best_scores > self.score_threshold
        if self.cross_class_nms:
            group_scores = ops.expand_dims(best_scores, 1)                          # [B, 1, P]
        else:
            group_scores = ops.transpose(fg_scores, (0, 2, 1))                      # [B, F, P]
        group_scores = ops.where(ops.expand_dims(kept_prior, 1), group_scores,
                                 ops.full_like(group_scores, _NOT_KEPT_SCORE))
        # Candidates come in groups (one per class, or one per image) that NMS keeps apart.
        cand_scores, cand_prior = ops.topk(group_scores, num_cand)                  # [B, G, k]
        num_groups = cand_scores.shape[1]
        cand_prior = cand_prior.reshape(batch, num_groups * num_cand)
        if self.cross_class_nms:
            cand_classes = ops.gather(best_classes, cand_prior, 1, batch_dims=1)
        else:
            cand_classes = ops.floor_div(ops.arange(num_fg * num_cand, dtype=ms.int32), num_cand)
            cand_classes = ops.tile(ops.expand_dims(cand_classes, 0), (batch, 1))
        cand_classes = cand_classes.astype(ms.int32)
        survives = self._fast_nms(ops.gather(boxes, cand_prior, 1, batch_dims=1), cand_scores)

        flat_scores = ops.where(survives, cand_scores, ops.full_like(cand_scores, _NOT_KEPT_SCORE))
        flat_scores = flat_scores.reshape(batch, num_groups * num_cand)
        if num_groups * num_cand < self.max_detections:
            filler = ops.full((batch, self.max_detections - num_groups * num_cand), _NOT_KEPT_SCORE,
                              dtype=flat_scores.dtype)
            flat_scores = ops.concat((flat_scores, filler), axis=1)
        scores, flat_index = ops.topk(flat_scores, self.max_detections)             # [B, D]
        valid = scores > _NOT_KEPT_SCORE
        # Empty slots may point at filler columns: redirect them to column 0 before gathering.
        flat_index = ops.where(valid, flat_index, ops.zeros_like(flat_index))

        classes = ops.gather(cand_classes, flat_index, 1, batch_dims=1)
        prior_index = ops.gather(cand_prior, flat_index, 1, batch_dims=1)
        det_boxes = ops.gather(boxes, prior_index, 1, batch_dims=1)
        det_coeffs = ops.gather(coeff, prior_index, 1, batch_dims=1)

        valid_col = ops.expand_dims(valid, -1)
        det_boxes = ops.where(valid_col, det_boxes, ops.zeros_like(det_boxes))
        det_coeffs = ops.where(valid_col, det_coeffs, ops.zeros_like(det_coeffs))
        classes = ops.where(valid, classes, ops.zeros_like(classes))
        scores = ops.where(valid, scores, ops.zeros_like(scores))
        return det_boxes, classes, scores, det_coeffs, valid

    def _fast_nms(self, cand_boxes, cand_scores):
        """Fast NMS within each group of candidates sorted by descending score.

        cand_boxes: [B, G*k, 4]; cand_scores: [B, G, k]. Returns [B, G, k] bool: the candidate
        was kept by the score filter and no higher-ranked candidate of its group overlaps it
        by more than ``nms_threshold``.
        """
        batch, num_groups, num_cand = cand_scores.shape
        cand_boxes = cand_boxes.reshape(batch * num_groups, num_cand, 4)
        iou = pairwise_iou_tensor(cand_boxes, cand_boxes)                           # [B*G, k, k]
        # Only higher-ranked candidates may suppress. Non-kept candidates rank after every
        # kept one (sentinel score), so they can only reach other non-kept candidates.
        # Select, not multiply: like the authors' triu_, it drops the NaN IoU a degenerate box
        # has with itself. Tiled rather than broadcast: MindSpore CPU broadcasts slowly.
        earlier = ops.slice(self.earlier_mask, (0, 0), (num_cand, num_cand))
        earlier = ops.tile(ops.expand_dims(earlier, 0), (batch * num_groups, 1, 1))
        iou = ops.where(earlier, iou, ops.zeros_like(iou))
        max_earlier_iou = ops.amax(iou, axis=1).reshape(batch, num_groups, num_cand)
        return ops.logical_and(max_earlier_iou <= self.nms_threshold,
                               cand_scores > _NOT_KEPT_SCORE)
