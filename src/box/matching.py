"""Per-image prior matcher: forced best prior per GT, 0.5 / 0.4 thresholds, crowd -> neutral.

Runs on the host (numpy) in the data pipeline: priors are constant, so the network receives
fixed-size ``[P]`` / ``[P, 4]`` targets. Reproduces the authors' ``layers/box_utils.py match``
(IoU matching on the priors, not on predictions) bit for bit in float32.

Class target codes (``conf_t``):
    -1  neutral: ignored by the class loss (0.4 <= IoU < 0.5, or mostly covered by a crowd)
     0  background
    k+1 positive for the 0-based foreground class k (IoU >= 0.5, or forced)

Worked example (thresholds 0.5 / 0.4): a prior whose best IoU is 0.62 with a GT of class 2
gets conf_t 3; 0.45 -> -1; 0.1 -> 0, or -1 if a crowd box covers more than 70 % of the prior.
A GT whose best prior has IoU 0.3 still claims that prior ("forced"), which becomes positive.
"""
import numpy as np

from src.box.coder import DEFAULT_VARIANCES, encode
from src.box.ops import intersection_over_area, pairwise_iou, point_form

_REMOVED = -1.0   # the authors' marker for served GT rows / taken prior columns
_FORCED = 2.0     # above any IoU, so a forced prior always passes the positive threshold


def _best_gt_per_prior(overlaps):
    """Column-wise max / argmax of [G, P], first GT on ties (as ``np.argmax``), in G row passes.

    Row passes over contiguous rows are ~3x faster than ``argmax(axis=0)`` at G = 20.
    """
    best_iou = overlaps[0].copy()                                          # [P]
    best_gt = np.zeros(overlaps.shape[1], np.int32)                        # [P]
    for gt_index in range(1, overlaps.shape[0]):
        row = overlaps[gt_index]
        best_gt[row > best_iou] = gt_index
        np.maximum(best_iou, row, out=best_iou)
    return best_iou, best_gt


def _forced_matches(overlaps):
    """Greedy one-to-one GT -> prior assignment, served in descending IoU order.

    Equivalent to the authors' loop, which G times takes the globally highest (GT j, prior i)
    of the matrix, then sets row j and column i to -1; ties go to the lowest GT index, then
    the lowest prior index. Instead of G passes over [G, P], each row's best remaining prior
    is cached and recomputed (one row pass) only when its prior was just taken: a removed
    column cannot change the best of a row that did not hold it, and the first-index tie
    rule survives because the cached argmax is still present and still first.

    Args:
        overlaps: [G, P] float32 IoU; MODIFIED in place (taken columns set to -1).

    Returns:
        (gt_indices [F] int, prior_indices [F] int), F = min(G, P), in serving order;
        the priors are distinct.
    """
    num_gt, num_priors = overlaps.shape
    num_forced = min(num_gt, num_priors)
    row_best = overlaps.argmax(axis=1)                                     # [G]
    row_best_iou = overlaps[np.arange(num_gt), row_best]                   # [G]
    served = np.zeros(num_gt, bool)
    gt_indices = np.empty(num_forced, np.int64)
    prior_indices = np.empty(num_forced, np.int64)
    for step in range(num_forced):
        gt_index = int(np.argmax(row_best_iou))
        prior_index = int(row_best[gt_index])
        gt_indices[step], prior_indices[step] = gt_index, prior_index
        served[gt_index] = True
        row_best_iou[gt_index] = _REMOVED
        overlaps[:, prior_index] = _REMOVED
        for stale in np.flatnonzero((row_best == prior_index) & ~served):
            row_best[stale] = overlaps[stale].argmax()
            row_best_iou[stale] = overlaps[stale, row_best[stale]]
    return gt_indices, prior_indices


def match(gt_boxes, gt_labels, crowd_boxes, priors, positive_threshold=0.5,
          negative_threshold=0.4, crowd_threshold=0.7, variances=DEFAULT_VARIANCES):
    """Training targets of one image.

    1. IoU [G, P] between the non-crowd GT boxes and the priors in point form; each prior
       takes its best GT (first on ties) and best IoU from this unmodified matrix.
    2. Each GT is forced onto its best still-free prior (greedy, see :func:`_forced_matches`):
       that prior's IoU becomes 2 and its GT this one.
    3. ``conf_t`` = label + 1 if IoU >= positive_threshold, -1 if >= negative_threshold, else 0.
    4. A non-positive prior becomes -1 when some crowd box covers more than
       ``crowd_threshold`` of the PRIOR's area (intersection / area(prior), not IoU).
       Crowds are never matched and never change a positive.

    ``idx_t`` and ``loc_t`` are filled for every prior, not only positives (as the authors
    do): the best GT of the unmodified matrix (forced GT where forced) and its encoding.
    An image without non-crowd GT (the authors' code fails there) gets ``conf_t`` 0 except
    crowd neutrals, ``idx_t`` 0 and ``loc_t`` 0 (the encoding of each prior onto itself);
    no loss reads them since nothing is positive.

    Args:
        gt_boxes: [G, 4] float32 (x1, y1, x2, y2), relative; non-crowd GT, G may be 0.
        gt_labels: [G] int, 0-based foreground classes.
        crowd_boxes: [K, 4] float32 (x1, y1, x2, y2), relative; K may be 0.
        priors: [P, 4] float32 (cx, cy, w, h), relative.
        positive_threshold: IoU at or above which a prior is positive.
        negative_threshold: IoU below which a prior is background; in between, neutral.
        crowd_threshold: crowd coverage of a prior above which a non-positive turns neutral.
        variances: box coder variances.

    Returns:
        loc_t: [P, 4] float32 (dcx, dcy, dw, dh), encoded box of the prior's GT.
        conf_t: [P] int32, -1 neutral, 0 background, label + 1 positive.
        idx_t: [P] int32, index of the prior's GT in ``gt_boxes``.
    """
    priors = np.asarray(priors, np.float32)
    gt_boxes = np.asarray(gt_boxes, np.float32).reshape(-1, 4)
    crowd_boxes = np.asarray(crowd_boxes, np.float32).reshape(-1, 4)
    prior_boxes = point_form(priors)                                       # [P, 4]
    num_priors = len(priors)

    if len(gt_boxes):
        overlaps = pairwise_iou(gt_boxes, prior_boxes)                     # [G, P]
        best_iou, idx_t = _best_gt_per_prior(overlaps)
        forced_gts, forced_priors = _forced_matches(overlaps)
        best_iou[forced_priors] = _FORCED
        idx_t[forced_priors] = forced_gts
        conf_t = np.asarray(gt_labels, np.int32)[idx_t] + 1
        conf_t[best_iou < positive_threshold] = -1
        conf_t[best_iou < negative_threshold] = 0
        loc_t = encode(gt_boxes[idx_t], priors, variances).astype(np.float32)
    else:
        idx_t = np.zeros(num_priors, np.int32)
        conf_t = np.zeros(num_priors, np.int32)
        loc_t = np.zeros((num_priors, 4), np.float32)

    if len(crowd_boxes):
        crowd_cover = intersection_over_area(crowd_boxes, prior_boxes).max(axis=0)   # [P]
        conf_t[(conf_t <= 0) & (crowd_cover > crowd_threshold)] = -1
    return loc_t, conf_t, idx_t
