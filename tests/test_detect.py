"""Detect: score filter on the best foreground score, per-class top-k, Fast NMS, fixed-size output.

Hand-made cases: the priors are image 0's boxes in (cx, cy, w, h) with loc = 0, so they
decode to exactly the boxes we want (dyadic coordinates: IoUs exact in float32); image 1 of
each batch reaches its boxes through loc (exact to ~1e-7). Random inputs are compared with a
numpy transcription of the authors' Fast NMS (dynamic shapes) written below.
"""
import numpy as np
import pytest
from mindspore import Tensor

from src.box.coder import decode
from src.box.ops import pairwise_iou
from src.postprocess.detect import Detect

NUM_CLASSES = 3          # background + 2
NUM_PRIORS = 6
TOP_K = 4
MAX_DETECTIONS = 5
# Pairwise disjoint boxes (corners may touch: IoU 0), for the priors that should not interact.
GRID_BOXES = [(0.0, 0.0, 0.25, 0.25), (0.5, 0.0, 0.75, 0.25), (0.0, 0.5, 0.25, 0.75),
              (0.5, 0.5, 0.75, 0.75), (0.75, 0.75, 1.0, 1.0), (0.25, 0.25, 0.5, 0.5)]
NOT_KEPT = (0.96, 0.02, 0.02)        # best foreground 0.02 <= 0.05


@pytest.fixture(scope="module")
def small_detect():
    return Detect(NUM_CLASSES, score_threshold=0.05, nms_threshold=0.5, top_k=TOP_K,
                  max_detections=MAX_DETECTIONS)


def _priors_for(boxes):
    """(x1, y1, x2, y2) boxes -> (cx, cy, w, h) priors that decode to them with loc = 0."""
    boxes = np.asarray(boxes, np.float32)
    return np.concatenate(((boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]), 1)


def _run(detect, scenes):
    """scenes: per image (boxes [P, 4], conf [P, C]). Prior p's coefficients are
    (p + 10 b, -p + 10 b) in image b, so a detection's coefficients name its prior."""
    batch = len(scenes)
    boxes = np.stack([np.asarray(s[0], np.float32) for s in scenes])            # [B, P, 4]
    conf = np.stack([np.asarray(s[1], np.float32) for s in scenes])             # [B, P, C]
    priors = _priors_for(boxes[0])
    # loc that moves prior p of image 0 onto box p of image b (exact when b == 0: loc = 0).
    target = np.concatenate(((boxes[..., :2] + boxes[..., 2:]) / 2, boxes[..., 2:] - boxes[..., :2]), -1)
    loc = np.concatenate(((target[..., :2] - priors[:, :2]) / (0.1 * priors[:, 2:]),
                          np.log(target[..., 2:] / priors[:, 2:]) / 0.2), -1).astype(np.float32)
    coeff = np.stack([np.arange(NUM_PRIORS, dtype=np.float32),
                      -np.arange(NUM_PRIORS, dtype=np.float32)], -1)
    coeff = np.broadcast_to(coeff, (batch, NUM_PRIORS, 2)).copy() + 10 * np.arange(batch)[:, None, None]
    outs = detect(Tensor(loc), Tensor(conf), Tensor(coeff.astype(np.float32)), Tensor(priors))
    return [o.asnumpy() for o in outs], coeff


def _valid_rows(outs, image):
    boxes, classes, scores, coeffs, valid = [o[image] for o in outs]
    n = int(valid.sum())
    assert valid[:n].all() and not valid[n:].any(), "invalid slots must come last"
    assert np.all(boxes[n:] == 0) and np.all(classes[n:] == 0) and np.all(scores[n:] == 0)
    assert np.all(coeffs[n:] == 0)
    return boxes[:n], classes[:n], scores[:n], coeffs[:n]


def _assert_detections(outs, coeff, image, classes, scores, boxes, priors, box_atol=0.0):
    """Image ``image``'s valid rows are ``classes``/``scores``/``boxes``, with the coefficients
    of ``priors``; scores, classes and coefficients exactly."""
    got_boxes, got_classes, got_scores, got_coeffs = _valid_rows(outs, image)
    np.testing.assert_array_equal(got_classes, classes)
    np.testing.assert_array_equal(got_scores, np.float32(scores))
    np.testing.assert_allclose(got_boxes, np.float32(boxes), rtol=0, atol=box_atol)
    np.testing.assert_array_equal(got_coeffs, coeff[image, list(priors)])


def _scene(kept):
    """kept: list of (box, conf row); the remaining priors are not kept (grid boxes)."""
    boxes = [k[0] for k in kept]
    conf = [k[1] for k in kept]
    for p in range(len(kept), NUM_PRIORS):
        boxes.append(GRID_BOXES[p])
        conf.append(NOT_KEPT)
    return boxes, conf


def test_nms_threshold_is_inclusive_at_half(small_detect):
    box_a = (0.0, 0.0, 0.5, 0.5)
    half = (0.0, 0.0, 0.25, 0.5)          # IoU with A = 0.125 / 0.25 = 0.5 exactly -> kept
    above = (0.0, 0.0, 0.28125, 0.5)      # IoU = 0.140625 / 0.25 = 0.5625 -> suppressed
    conf_a, conf_b = (0.09, 0.9, 0.01), (0.18, 0.8, 0.02)
    outs, coeff = _run(small_detect, [_scene([(box_a, conf_a), (half, conf_b)]),
                                      _scene([(box_a, conf_a), (above, conf_b)])])
    # Kept priors also enter class 1 with their small scores; there B (0.02) ranks before A.
    _assert_detections(outs, coeff, 0, [0, 0, 1, 1], [0.9, 0.8, 0.02, 0.01],
                       [box_a, half, half, box_a], [0, 1, 1, 0])
    _assert_detections(outs, coeff, 1, [0, 1], [0.9, 0.02], [box_a, above], [0, 1], box_atol=1e-6)


def test_same_box_in_two_classes_is_kept_twice_and_nothing_kept_gives_no_detection(small_detect):
    box = (0.125, 0.125, 0.625, 0.5)
    scene = _scene([(box, (0.1, 0.8, 0.1)), (box, (0.2, 0.1, 0.7))])
    # A not-kept prior on the very same box, with a foreground score just under the threshold.
    scene[1][2], scene[0][2] = (0.96, 0.04, 0.0), box
    empty = _scene([])
    outs, coeff = _run(small_detect, [scene, empty])
    # Class 0: prior 0 (0.8) suppresses prior 1 (0.1); class 1: prior 1 (0.7) suppresses prior 0.
    _assert_detections(outs, coeff, 0, [0, 1], [0.8, 0.7], [box, box], [0, 1])
    assert not outs[4][1].any()
    assert np.all(outs[0][1] == 0) and np.all(outs[2][1] == 0) and np.all(outs[3][1] == 0)


def test_fast_nms_suppresses_through_a_removed_box_and_threshold_uses_best_foreground(small_detect):
    box_a = (0.0, 0.0, 0.5, 0.5)
    box_b = (0.125, 0.0, 0.625, 0.5)      # IoU(A, B) = 0.6
    box_c = (0.25, 0.0, 0.75, 0.5)        # IoU(B, C) = 0.6, IoU(A, C) = 1/3
    chain = _scene([(box_a, (0.09, 0.9, 0.01)), (box_b, (0.18, 0.8, 0.02)),
                    (box_c, (0.27, 0.7, 0.03))])
    # Best foreground 0.04 fails although the foreground sum (0.08) would pass; a prior with
    # best 0.06 passes and reports its 0.01 class as well (no per-class threshold).
    threshold = _scene([(GRID_BOXES[0], (0.92, 0.04, 0.04)), (GRID_BOXES[1], (0.93, 0.06, 0.01))])
    outs, coeff = _run(small_detect, [chain, threshold])
    # Classic NMS would keep C in class 0 (only B, itself removed, overlaps it) and A in
    # class 1 (order C, B, A); Fast NMS keeps neither.
    _assert_detections(outs, coeff, 0, [0, 1], [0.9, 0.03], [box_a, box_c], [0, 2])
    _assert_detections(outs, coeff, 1, [0, 1], [0.06, 0.01], [GRID_BOXES[1]] * 2,
                       [1, 1], box_atol=1e-6)


def test_top_k_per_class_and_max_detections(small_detect):
    # Five disjoint kept boxes: class 0 scores 0.9 .. 0.5, class 1 scores 0.01 .. 0.05.
    rows = [(GRID_BOXES[p], (0.09 + 0.09 * p, 0.9 - 0.1 * p, 0.01 * (p + 1))) for p in range(5)]
    scene = _scene(rows)
    outs, _ = _run(small_detect, [scene, _scene([])])
    boxes, classes, scores, coeffs = _valid_rows(outs, 0)
    # Class 0 keeps only its top 4 (0.5 is cut by top_k although it beats every class-1
    # score); class 1 keeps the top 4 of its tiny scores: 0.05 .. 0.02. Eight survivors, the
    # best five are reported.
    np.testing.assert_array_equal(classes, [0, 0, 0, 0, 1])
    np.testing.assert_allclose(scores, np.float32([0.9, 0.8, 0.7, 0.6, 0.05]), atol=0)
    np.testing.assert_array_equal(coeffs[:, 0], [0, 1, 2, 3, 4])
    np.testing.assert_allclose(boxes, np.float32([GRID_BOXES[p] for p in (0, 1, 2, 3, 4)]), atol=1e-6)


def reference_fast_nms(loc, conf, coeff, priors, score_threshold, nms_threshold, top_k,
                       max_detections):
    """The authors' Detect (use_fast_nms=True, no cross-class NMS) for one image, numpy."""
    boxes = decode(loc, priors)
    fg_scores = conf[:, 1:].T                                           # [F, P]
    keep = fg_scores.max(axis=0) > score_threshold
    if not keep.any():
        return np.zeros((0, 4)), np.zeros(0, int), np.zeros(0), np.zeros((0, coeff.shape[1]))
    scores, boxes, coeff = fg_scores[:, keep], boxes[keep], coeff[keep]
    order = np.argsort(-scores, axis=1, kind="stable")[:, :top_k]      # [F, k]
    scores = np.take_along_axis(scores, order, axis=1)
    class_boxes = boxes[order]                                          # [F, k, 4]
    iou = np.stack([np.triu(pairwise_iou(b, b), k=1) for b in class_boxes])
    survive = iou.max(axis=1) <= nms_threshold                          # [F, k]
    classes = np.broadcast_to(np.arange(scores.shape[0])[:, None], survive.shape)[survive]
    prior = order[survive]
    scores = scores[survive]
    best = np.argsort(-scores, kind="stable")[:max_detections]
    return boxes[prior[best]], classes[best], scores[best], coeff[prior[best]]


@pytest.fixture(scope="module")
def random_case():
    rng = np.random.default_rng(7)
    batch, num_priors, num_classes, k = 2, 300, 5, 3
    centres = rng.uniform(0.3, 0.7, (num_priors, 2))
    sizes = rng.uniform(0.1, 0.4, (num_priors, 2))
    priors = np.concatenate((centres, sizes), 1).astype(np.float32)
    loc = (rng.normal(size=(batch, num_priors, 4)) * 0.5).astype(np.float32)
    logits = rng.normal(size=(batch, num_priors, num_classes)) * 2
    # Background bias: image 0 keeps more priors than top_k, image 1 fewer (so every kept
    # prior, tiny class scores included, enters each class's NMS).
    logits[..., 0] += rng.uniform(0, 5, (batch, num_priors)) + np.array([[0.0], [7.0]])
    conf = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    coeff = rng.normal(size=(batch, num_priors, k)).astype(np.float32)
    return loc, conf.astype(np.float32), coeff, priors


def _assert_equals_reference(outputs, image, reference):
    """outputs: Detect's five arrays as numpy; reference: (boxes, classes, scores, coeffs) of
    one image from a numpy reference. Valid rows equal it, the rest is empty."""
    boxes, classes, scores, coeffs = _valid_rows(outputs, image)
    ref_boxes, ref_classes, ref_scores, ref_coeffs = reference
    assert len(scores) == len(ref_scores)
    np.testing.assert_array_equal(classes, ref_classes)
    np.testing.assert_allclose(scores, ref_scores, rtol=0, atol=1e-6)
    np.testing.assert_allclose(boxes, ref_boxes, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(coeffs, ref_coeffs)


def test_matches_numpy_reference_on_random_inputs(random_case):
    loc, conf, coeff, priors = random_case
    num_priors = priors.shape[0]
    top_k, max_detections = 50, 60
    detect = Detect(5, score_threshold=0.05, nms_threshold=0.5, top_k=top_k,
                    max_detections=max_detections)
    outputs = [o.asnumpy() for o in detect(Tensor(loc), Tensor(conf), Tensor(coeff),
                                           Tensor(priors))]
    for b in range(loc.shape[0]):
        reference = reference_fast_nms(loc[b], conf[b], coeff[b], priors, 0.05, 0.5, top_k,
                                       max_detections)
        kept_priors = (conf[b, :, 1:].max(-1) > 0.05).sum()
        survivors = len(reference_fast_nms(loc[b], conf[b], coeff[b], priors, 0.05, 0.5, top_k,
                                           num_priors * 4)[2])
        # The case exercises suppression, the max-detections cut and both sides of top_k.
        assert (kept_priors > top_k) == (b == 0)
        assert max_detections < survivors < 4 * min(kept_priors, top_k)
        _assert_equals_reference(outputs, b, reference)


def test_cross_class_nms_keeps_one_box_per_object_with_its_best_class():
    detect = Detect(NUM_CLASSES, score_threshold=0.05, nms_threshold=0.5, top_k=TOP_K,
                    max_detections=MAX_DETECTIONS, cross_class_nms=True)
    box = (0.125, 0.125, 0.625, 0.5)
    shifted = (0.25, 0.125, 0.75, 0.5)     # IoU with box = 0.375 / 0.625 = 0.6
    apart = (0.0, 0.5, 0.5, 1.0)           # IoU with box = 0
    scene = _scene([(box, (0.1, 0.2, 0.7)), (shifted, (0.1, 0.8, 0.1)),
                    (apart, (0.5, 0.3, 0.2))])
    outs, coeff = _run(detect, [scene, _scene([])])
    # Per class, prior 0 would survive in class 1 (0.7) and prior 1 in class 0 (0.8); across
    # classes prior 1 (best 0.8) suppresses prior 0. Each survivor reports only its best class.
    _assert_detections(outs, coeff, 0, [0, 0], [0.8, 0.3], [shifted, apart], [1, 2])
    assert not outs[4][1].any()


def reference_cc_fast_nms(loc, conf, coeff, priors, score_threshold, nms_threshold, top_k):
    """The authors' Detect with ``use_cross_class_nms`` (``cc_fast_nms``) for one image, numpy."""
    boxes = decode(loc, priors)
    fg_scores = conf[:, 1:]
    keep = fg_scores.max(axis=1) > score_threshold
    scores, classes = fg_scores[keep].max(axis=1), fg_scores[keep].argmax(axis=1)
    boxes, coeff = boxes[keep], coeff[keep]
    order = np.argsort(-scores, kind="stable")[:top_k]
    iou = np.triu(pairwise_iou(boxes[order], boxes[order]), k=1)
    survivors = order[iou.max(axis=0, initial=0.0) <= nms_threshold]
    return boxes[survivors], classes[survivors], scores[survivors], coeff[survivors]


def test_cross_class_nms_matches_numpy_reference_on_random_inputs(random_case):
    loc, conf, coeff, priors = random_case
    top_k = 50
    detect = Detect(5, score_threshold=0.05, nms_threshold=0.5, top_k=top_k,
                    max_detections=top_k, cross_class_nms=True)
    outputs = [o.asnumpy() for o in detect(Tensor(loc), Tensor(conf), Tensor(coeff),
                                           Tensor(priors))]
    for b in range(loc.shape[0]):
        reference = reference_cc_fast_nms(loc[b], conf[b], coeff[b], priors, 0.05, 0.5, top_k)
        # Some priors suppressed, more than one class among the survivors.
        assert 0 < len(reference[2]) < min((conf[b, :, 1:].max(-1) > 0.05).sum(), top_k)
        assert len(set(reference[1])) > 1
        _assert_equals_reference(outputs, b, reference)
