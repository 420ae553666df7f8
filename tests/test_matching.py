"""Prior matcher: hand-made cases, a literal reference of the spec, and the authors' fixture."""
import math

import numpy as np
import pytest

from src.box.coder import decode
from src.box.matching import match
from src.box.ops import center_size
from tests.conftest import load_authors_fixture

NO_BOXES = np.zeros((0, 4), np.float32)


def _priors(*boxes):
    """Priors given by their corners (x1, y1, x2, y2) -> [P, 4] float32 (cx, cy, w, h)."""
    return center_size(np.array(boxes, np.float32))


def _boxes(*boxes):
    return np.array(boxes, np.float32)


def test_gt_forced_onto_best_prior_below_negative_threshold():
    priors = _priors((0.0, 0.0, 0.2, 0.2), (0.5, 0.5, 0.7, 0.7))
    gt = _boxes((0.0, 0.0, 0.4, 0.4))             # IoU 0.04 / 0.16 = 0.25 with prior 0, 0 with 1
    loc_t, conf_t, idx_t = match(gt, [6], NO_BOXES, priors)
    np.testing.assert_array_equal(conf_t, [7, 0])
    np.testing.assert_array_equal(idx_t, [0, 0])
    assert conf_t.dtype == np.int32 and idx_t.dtype == np.int32 and loc_t.dtype == np.float32
    # centre offset 0.1 / (0.1 · 0.2) = 5, size log(0.4 / 0.2) / 0.2
    np.testing.assert_allclose(loc_t[0], [5, 5, math.log(2) / 0.2, math.log(2) / 0.2], rtol=1e-5)


def test_thresholds_positive_neutral_background():
    gt = _boxes((0.0, 0.0, 0.5, 0.5))             # area 0.25
    priors = _priors((0.0, 0.0, 0.5, 0.5),        # IoU 1, the forced prior
                     (0.0, 0.0, 0.5, 0.25),       # IoU 0.5 exactly -> positive
                     (0.0, 0.0, 0.5, 0.225),      # IoU 0.45 -> neutral
                     (0.0, 0.0, 0.5, 0.19),       # IoU 0.38 -> background
                     (0.6, 0.6, 0.9, 0.9))        # disjoint -> background
    _, conf_t, _ = match(gt, [0], NO_BOXES, priors)
    np.testing.assert_array_equal(conf_t, [1, 1, -1, 0, 0])
    _, conf_t, _ = match(gt, [0], NO_BOXES, priors, positive_threshold=0.6, negative_threshold=0.3)
    np.testing.assert_array_equal(conf_t, [1, -1, -1, -1, 0])


def test_competing_gts_get_distinct_forced_priors_in_descending_iou_order():
    priors = _priors((0.0, 0.0, 0.4, 0.4),        # A: best prior of both GTs
                     (0.05, 0.05, 0.45, 0.45),    # B
                     (0.6, 0.6, 0.9, 0.9))
    # GT 0 = (0.02, 0.02, 0.38, 0.38): IoU 0.81 with A, 0.6027 with B.
    # GT 1 = A exactly: IoU 1 with A, 0.62 with B. GT 1 is served first and takes A; GT 0
    # then takes B, overriding B's plain best GT (GT 1, 0.62 > 0.6027). Served in index
    # order instead, GT 0 would take A.
    gt = _boxes((0.02, 0.02, 0.38, 0.38), (0.0, 0.0, 0.4, 0.4))
    loc_t, conf_t, idx_t = match(gt, [3, 8], NO_BOXES, priors)
    np.testing.assert_array_equal(idx_t[:2], [1, 0])
    np.testing.assert_array_equal(conf_t, [9, 4, 0])
    np.testing.assert_allclose(decode(loc_t, priors)[:2], gt[[1, 0]], atol=1e-6)


def test_crowd_neutrals_use_intersection_over_prior_area():
    crowd = _boxes((0.5, 0.5, 1.0, 1.0))
    gt = _boxes((0.55, 0.55, 0.95, 0.95))
    priors = _priors((0.55, 0.55, 0.95, 0.95),    # positive inside the crowd: stays positive
                     (0.6, 0.6, 0.7, 0.7),        # inside the crowd: ratio 1, crowd IoU 0.04 -> -1
                     (0.45, 0.6, 0.65, 0.7),      # ratio 0.75 > 0.7 -> -1
                     (0.4, 0.6, 0.6, 0.7),        # ratio 0.5 -> stays background
                     (0.0, 0.0, 0.2, 0.2))        # outside -> background
    _, conf_t, idx_t = match(gt, [4], crowd, priors)
    np.testing.assert_array_equal(conf_t, [5, -1, -1, 0, 0])
    np.testing.assert_array_equal(idx_t, np.zeros(5))
    _, conf_without_crowd, _ = match(gt, [4], NO_BOXES, priors)
    np.testing.assert_array_equal(conf_without_crowd, [5, 0, 0, 0, 0])


def test_crowds_only_and_empty_images():
    crowd = _boxes((0.5, 0.5, 1.0, 1.0))
    priors = _priors((0.6, 0.6, 0.7, 0.7), (0.0, 0.0, 0.2, 0.2))
    loc_t, conf_t, idx_t = match(NO_BOXES, np.zeros(0, np.int64), crowd, priors)
    np.testing.assert_array_equal(conf_t, [-1, 0])
    np.testing.assert_array_equal(idx_t, [0, 0])
    np.testing.assert_array_equal(loc_t, np.zeros((2, 4)))
    loc_t, conf_t, idx_t = match(NO_BOXES, [], NO_BOXES, priors)
    np.testing.assert_array_equal(conf_t, [0, 0])
    assert loc_t.shape == (2, 4) and idx_t.shape == (2,)


def _reference_match(gt_boxes, gt_labels, crowd_boxes, priors):
    """The spec's Matching section, literally: G full passes over a float32 [G, P] matrix."""
    x1y1 = priors[:, :2] - priors[:, 2:] / 2
    prior_boxes = np.concatenate((x1y1, priors[:, :2] + priors[:, 2:] / 2), 1)
    lo = np.maximum(gt_boxes[:, None, :2], prior_boxes[None, :, :2])
    hi = np.minimum(gt_boxes[:, None, 2:], prior_boxes[None, :, 2:])
    inter = np.clip(hi - lo, 0, None).prod(-1)
    area_gt = ((gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1]))[:, None]
    area_prior = ((prior_boxes[:, 2] - prior_boxes[:, 0]) * (prior_boxes[:, 3] - prior_boxes[:, 1]))
    overlaps = inter / (area_gt + area_prior - inter)
    best_iou, best_gt = overlaps.max(0), overlaps.argmax(0)
    for _ in range(len(gt_boxes)):
        j = overlaps.max(1).argmax()
        i = overlaps[j].argmax()
        overlaps[:, i] = -1
        overlaps[j, :] = -1
        best_iou[i], best_gt[i] = 2, j
    conf = np.asarray(gt_labels)[best_gt] + 1
    conf[best_iou < 0.5] = -1
    conf[best_iou < 0.4] = 0
    lo = np.maximum(crowd_boxes[:, None, :2], prior_boxes[None, :, :2])
    hi = np.minimum(crowd_boxes[:, None, 2:], prior_boxes[None, :, 2:])
    cover = (np.clip(hi - lo, 0, None).prod(-1) / area_prior).max(0)
    conf[(conf <= 0) & (cover > 0.7)] = -1
    return conf, best_gt


@pytest.mark.parametrize("seed", range(4))
def test_equals_literal_reference_with_ties(seed):
    rng = np.random.default_rng(seed)
    # A coarse grid of priors and GTs snapped to it make many exactly tied IoUs;
    # duplicated GTs tie across rows.
    grid = (np.arange(8) + 0.5) / 8
    cx, cy, size = np.meshgrid(grid, grid, (0.125, 0.25, 0.5), indexing="ij")
    priors = np.stack((cx, cy, size, size), -1).reshape(-1, 4).astype(np.float32)
    corners = np.sort(rng.integers(0, 9, size=(6, 2, 2)) / 8, axis=1)
    corners[:, 1] = np.maximum(corners[:, 1], corners[:, 0] + 0.125)
    gt = corners.reshape(6, 4).astype(np.float32)        # (x1, y1, x2, y2)
    gt = np.concatenate((gt, gt[:2]))
    labels = rng.integers(0, 80, len(gt))
    crowd = _boxes((0.0, 0.5, 0.5, 1.0))
    _, conf_t, idx_t = match(gt, labels, crowd, priors)
    expected_conf, expected_idx = _reference_match(gt, labels, crowd, priors)
    assert (expected_conf > 0).sum() >= len(gt) and (expected_conf == -1).any()
    np.testing.assert_array_equal(conf_t, expected_conf)
    np.testing.assert_array_equal(idx_t, expected_idx)


@pytest.mark.parametrize("image", [0, 1])
def test_equal_to_authors_matching(image):
    fixture = load_authors_fixture()
    targets = fixture[f"gt/targets_{image}"]
    num_gt = len(targets) - int(fixture["gt/num_crowds"][image])
    priors = fixture["train/priors"]
    loc_t, conf_t, idx_t = match(targets[:num_gt, :4], targets[:num_gt, 4].astype(np.int64),
                                 targets[num_gt:, :4], priors)
    np.testing.assert_array_equal(conf_t, fixture["train/match/conf_t"][image])
    np.testing.assert_array_equal(idx_t, fixture["train/match/idx_t"][image])
    np.testing.assert_allclose(loc_t, fixture["train/match/loc_t"][image], rtol=0, atol=1e-5)
    # Every prior's target decodes back to its GT box (the coder's round trip).
    np.testing.assert_allclose(decode(loc_t, priors), targets[idx_t, :4], atol=1e-6)
