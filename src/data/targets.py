"""Fixed-shape training targets of one augmented image: padded GT, prototype-size masks,
the semantic target, prior matching and the positives sampled for the mask losses."""
import logging
from typing import NamedTuple

import numpy as np

from src.box.matching import match
from src.data.transforms import downsample_masks, semantic_target

logger = logging.getLogger(__name__)


class TargetShapes(NamedTuple):
    """Static sizes of the target arrays, all derived from the config."""
    max_num_gt: int          # G, padded GT slots
    mask_size: int           # S/4, the prototype grid (138 at 550)
    semantic_size: int       # S/8, the P3 grid (69 at 550)
    num_fg_classes: int      # C - 1
    masks_to_train: int      # M, positives sampled for the mask losses


class MatchThresholds(NamedTuple):
    positive: float = 0.5
    negative: float = 0.4
    crowd: float = 0.7


def keep_largest(boxes, limit):
    """Indices of the ``limit`` largest boxes by area (all of them if fewer), in input order."""
    if len(boxes) <= limit:
        return np.arange(len(boxes))
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return np.sort(np.argsort(-areas, kind="stable")[:limit])


def sample_positives(conf_t, masks_to_train, rng):
    """Up to M positive prior indices for the mask losses, padded to M.

    All positives when there are at most M; otherwise a uniformly random subset of M (the
    authors' ``randperm``), drawn here so that the graph keeps static shapes.

    Returns:
        pos_sample_idx: [M] int32 prior indices (0 in padding slots).
        pos_sample_valid: [M] float32, 1 for real entries.
    """
    positives = np.flatnonzero(conf_t > 0)
    if len(positives) > masks_to_train:
        positives = np.sort(rng.choice(positives, masks_to_train, replace=False))
    index = np.zeros(masks_to_train, np.int32)
    valid = np.zeros(masks_to_train, np.float32)
    index[:len(positives)] = positives
    valid[:len(positives)] = 1.0
    return index, valid


def build_targets(masks, boxes, labels, is_crowd, priors, shapes, thresholds, rng, image_id=-1):
    """Training targets of one image after augmentation.

    Args:
        masks: [G', S, S] uint8 0/1 masks at the network input size.
        boxes: [G', 4] float32 (x1, y1, x2, y2), relative.
        labels: [G'] int 0-based classes. is_crowd: [G'] bool.
        priors: [P, 4] float32 (cx, cy, w, h).
        shapes: ``TargetShapes``. thresholds: ``MatchThresholds``.
        rng: ``np.random.Generator`` for the positive sampling.
        image_id: for the log line when GT is cut to ``max_num_gt``.

    Returns:
        tuple ``(loc_t [P,4] f32, conf_t [P] i32, idx_t [P] i32, gt_boxes [G,4] f32,
        gt_labels [G] i32, gt_masks [G,s,s] u8, semantic_t [C-1,s2,s2] u8,
        pos_sample_idx [M] i32, pos_sample_valid [M] f32)``; crowds only neutralise priors.
    """
    is_crowd = np.asarray(is_crowd, bool)
    solid = np.flatnonzero(~is_crowd)
    kept = keep_largest(boxes[solid], shapes.max_num_gt)
    if len(kept) < len(solid):
        logger.warning("image %s has %d objects; keeping the %d largest (max_num_gt)",
                       image_id, len(solid), shapes.max_num_gt)
    solid = solid[kept]
    num_gt = len(solid)

    loc_t, conf_t, idx_t = match(boxes[solid], labels[solid], boxes[is_crowd], priors,
                                 thresholds.positive, thresholds.negative, thresholds.crowd)
    gt_boxes = np.zeros((shapes.max_num_gt, 4), np.float32)
    gt_labels = np.zeros(shapes.max_num_gt, np.int32)
    gt_masks = np.zeros((shapes.max_num_gt, shapes.mask_size, shapes.mask_size), np.uint8)
    gt_boxes[:num_gt] = boxes[solid]
    gt_labels[:num_gt] = labels[solid]
    if num_gt:
        gt_masks[:num_gt] = downsample_masks(masks[solid], shapes.mask_size) > 0.5
    semantic_t = semantic_target(masks, labels, is_crowd, shapes.num_fg_classes,
                                 shapes.semantic_size).astype(np.uint8)
    pos_sample_idx, pos_sample_valid = sample_positives(conf_t, shapes.masks_to_train, rng)
    return (loc_t, conf_t.astype(np.int32), idx_t.astype(np.int32), gt_boxes, gt_labels,
            gt_masks, semantic_t, pos_sample_idx, pos_sample_valid)
