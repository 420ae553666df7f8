"""Inference detection layer: decode, score filter, per-class top-k, Fast NMS, fixed-size output.

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
    score > ``score_threshold``; a kept prior enters every class with that class's score,
    however small (no per-class threshold). Per foreground class, the ``top_k`` kept priors
    by score go through Fast NMS: box j is dropped when its IoU with any higher-scoring box
    of the same class exceeds ``nms_threshold`` — even if that box was itself dropped. No
    cross-class NMS. The survivors of all classes are sorted by score and the first
    ``max_detections`` are returned.

    Args:
        num_classes: C, classes including background (81 on COCO).
        score_threshold: a prior is kept when its best foreground score is strictly above.
        nms_threshold: a box survives when its IoU with every earlier box is <= this.
        top_k: candidates per class entering NMS.
        max_detections: D, detection slots per image.

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
                 max_detections=100):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must include background and >= 1 class, got {num_classes}")
        self.num_fg_classes = num_classes - 1
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self.top_k = int(top_k)
        self.max_detections = int(max_detections)
        # Strict upper triangle: entry [i, j] is True when candidate i ranks before j.
        self.earlier_mask = Tensor(np.triu(np.ones((self.top_k, self.top_k), np.bool_), k=1))

    def construct(self, loc, conf, coeff, priors):
        batch, num_priors, _ = loc.shape
        num_fg = self.num_fg_classes
        num_cand = min(self.top_k, num_priors)
        boxes = decode_tensor(loc, priors)

        fg_scores = ops.slice(conf, (0, 0, 1), (batch, num_priors, num_fg))
        kept_prior = ops.amax(fg_scores, axis=-1) > self.score_threshold           # [B, P]
        fg_scores = ops.where(ops.expand_dims(kept_prior, -1), fg_scores,
                              ops.full_like(fg_scores, _NOT_KEPT_SCORE))
        cand_scores, cand_prior = ops.topk(ops.transpose(fg_scores, (0, 2, 1)), num_cand)  # [B, F, k]
        cand_valid = cand_scores > _NOT_KEPT_SCORE

        cand_boxes = ops.gather(boxes, cand_prior.reshape(batch, num_fg * num_cand), 1, batch_dims=1)
        cand_boxes = cand_boxes.reshape(batch * num_fg, num_cand, 4)
        iou = pairwise_iou_tensor(cand_boxes, cand_boxes)                           # [B*F, k, k]
        # Only higher-ranked candidates may suppress. Non-kept candidates rank after every
        # kept one (sentinel score), so they can only reach other non-kept candidates.
        # Select, not multiply: like the authors' triu_, it drops the NaN IoU a degenerate box
        # has with itself. Tiled rather than broadcast: MindSpore CPU broadcasts slowly.
        earlier = ops.slice(self.earlier_mask, (0, 0), (num_cand, num_cand))
        earlier = ops.tile(ops.expand_dims(earlier, 0), (batch * num_fg, 1, 1))
        iou = ops.where(earlier, iou, ops.zeros_like(iou))
        max_earlier_iou = ops.amax(iou, axis=1).reshape(batch, num_fg, num_cand)
        survives = ops.logical_and(max_earlier_iou <= self.nms_threshold, cand_valid)

        flat_scores = ops.where(survives, cand_scores, ops.full_like(cand_scores, _NOT_KEPT_SCORE))
        flat_scores = flat_scores.reshape(batch, num_fg * num_cand)
        if num_fg * num_cand < self.max_detections:
            filler = ops.full((batch, self.max_detections - num_fg * num_cand), _NOT_KEPT_SCORE,
                              dtype=flat_scores.dtype)
            flat_scores = ops.concat((flat_scores, filler), axis=1)
        scores, flat_index = ops.topk(flat_scores, self.max_detections)             # [B, D]
        valid = scores > _NOT_KEPT_SCORE
        # Empty slots may point at filler columns: redirect them to column 0 before gathering.
        flat_index = ops.where(valid, flat_index, ops.zeros_like(flat_index))

        classes = ops.floor_div(flat_index, num_cand).astype(ms.int32)
        prior_index = ops.gather(cand_prior.reshape(batch, num_fg * num_cand), flat_index, 1,
                                 batch_dims=1)
        det_boxes = ops.gather(boxes, prior_index, 1, batch_dims=1)
        det_coeffs = ops.gather(coeff, prior_index, 1, batch_dims=1)

        valid_col = ops.expand_dims(valid, -1)
        det_boxes = ops.where(valid_col, det_boxes, ops.zeros_like(det_boxes))
        det_coeffs = ops.where(valid_col, det_coeffs, ops.zeros_like(det_coeffs))
        classes = ops.where(valid, classes, ops.zeros_like(classes))
        scores = ops.where(valid, scores, ops.zeros_like(scores))
        return det_boxes, classes, scores, det_coeffs, valid
