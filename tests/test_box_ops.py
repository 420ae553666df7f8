"""Box conversions, overlaps, crop and the box coder: hand-computed values, numpy == MindSpore."""
import numpy as np
import pytest
import mindspore as ms

from src.box.coder import decode, decode_tensor, encode
from src.box.ops import (center_size, center_size_tensor, crop_masks, crop_masks_tensor,
                         intersection_over_area, pairwise_iou, pairwise_iou_tensor, point_form,
                         point_form_tensor)


def test_point_form_and_center_size_hand_values():
    priors = np.array([[0.5, 0.5, 0.2, 0.4], [0.1, 0.3, 0.2, 0.2]], np.float32)
    boxes = np.array([[0.4, 0.3, 0.6, 0.7], [0.0, 0.2, 0.2, 0.4]], np.float32)
    np.testing.assert_allclose(point_form(priors), boxes, atol=1e-7)
    np.testing.assert_allclose(center_size(boxes), priors, atol=1e-7)
    assert point_form(priors[None]).shape == (1, 2, 4)


def test_pairwise_iou_hand_values():
    boxes_a = np.array([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 1.0, 1.0]], np.float32)
    boxes_b = np.array([[0.25, 0.25, 0.75, 0.75], [0.6, 0.6, 0.9, 0.9], [0.0, 0.0, 0.5, 0.5]],
                       np.float32)
    # a0 ∩ b0 = 0.0625, union 0.4375; a0, b1 disjoint; a0 == b2; a1 contains all of b.
    expected = np.array([[1 / 7, 0.0, 1.0], [0.25, 0.09, 0.25]])
    iou = pairwise_iou(boxes_a, boxes_b)
    assert iou.shape == (2, 3) and iou.dtype == np.float32
    np.testing.assert_allclose(iou, expected, rtol=1e-6)


def test_intersection_over_area_divides_by_second_argument():
    crowd = np.array([[0.0, 0.0, 1.0, 0.5]], np.float32)
    prior_boxes = np.array([[0.1, 0.1, 0.3, 0.3], [0.1, 0.4, 0.3, 0.6]], np.float32)
    # Prior 0 lies inside the crowd: ratio 1 while its IoU is only 0.04 / 0.5 = 0.08.
    np.testing.assert_allclose(intersection_over_area(crowd, prior_boxes), [[1.0, 0.5]], rtol=1e-6)
    np.testing.assert_allclose(pairwise_iou(crowd, prior_boxes)[0, 0], 0.08, rtol=1e-5)
    # Swapped, it divides by the crowd's area instead.
    np.testing.assert_allclose(intersection_over_area(prior_boxes, crowd), [[0.08], [0.04]],
                               rtol=1e-5)


def test_crop_masks_hand_values():
    masks = np.ones((1, 3, 4, 8), np.float32)
    boxes = np.array([[
        [0.3, 0.25, 0.6, 0.5],    # x: [2.4-1, 4.8+1) = [1.4, 5.8) -> cols 2..5; y: rows 0..2
        [0.6, 0.5, 0.3, 0.25],    # unordered corners: the same crop
        [0.9, 0.9, 1.2, 1.3],     # x: [6.2, 8) -> cols 7; y: [2.6, 4) -> rows 3
    ]], np.float32)
    expected = np.zeros((1, 3, 4, 8), np.float32)
    expected[0, 0, 0:3, 2:6] = 1
    expected[0, 1, 0:3, 2:6] = 1
    expected[0, 2, 3:4, 7:8] = 1
    np.testing.assert_array_equal(crop_masks(masks, boxes), expected)
    # Exact boundary: x1·W − 1 = 1.0 keeps column 1; x2·W + 1 = 5.0 drops column 5.
    edge = crop_masks(np.ones((1, 1, 8), np.float32), np.array([[0.25, 0.0, 0.5, 1.0]], np.float32))
    np.testing.assert_array_equal(edge[0, 0], [0, 1, 1, 1, 1, 0, 0, 0])


def test_encode_decode_hand_values_and_round_trip():
    priors = np.array([[0.5, 0.5, 0.2, 0.4], [0.25, 0.75, 0.1, 0.1]], np.float32)
    boxes = np.array([[0.42, 0.3, 0.62, 0.9], [0.2, 0.7, 0.3, 0.8]], np.float32)
    # Box 0: centre (0.52, 0.6), size (0.2, 0.6) -> ((0.02/0.02), (0.1/0.04), 0, log(1.5)/0.2).
    expected = np.array([[1.0, 2.5, 0.0, np.log(1.5) / 0.2], [0.0, 0.0, 0.0, 0.0]])
    loc = encode(boxes, priors)
    assert loc.dtype == np.float32
    np.testing.assert_allclose(loc, expected, atol=1e-5)
    np.testing.assert_allclose(decode(loc, priors), boxes, atol=1e-6)
    rng = np.random.default_rng(0)
    deltas = rng.normal(size=(3, 2, 4)).astype(np.float32)
    np.testing.assert_allclose(encode(decode(deltas, priors)[1], priors), deltas[1], atol=2e-5)


@ms.jit
def _tensor_forms(priors, boxes_a, boxes_b, masks, crop_boxes, loc):
    return (point_form_tensor(priors), center_size_tensor(boxes_a),
            pairwise_iou_tensor(boxes_a, boxes_b), crop_masks_tensor(masks, crop_boxes),
            decode_tensor(loc, priors[0]))


@pytest.fixture(scope="module")
def random_inputs():
    rng = np.random.default_rng(1)
    corners = rng.uniform(-0.1, 1.1, size=(2, 7, 4)).astype(np.float32)
    boxes_a = np.concatenate((np.minimum(corners[..., :2], corners[..., 2:]),
                              np.maximum(corners[..., :2], corners[..., 2:])), -1)
    boxes_b = boxes_a[:, ::-1].copy()
    boxes_b[:, :3] = rng.uniform(0, 1, size=(2, 3, 4)) * [0.5, 0.5, 0.5, 0.5] + [0, 0, 0.5, 0.5]
    boxes_b = boxes_b.astype(np.float32)
    priors = center_size(boxes_a)
    masks = rng.uniform(size=(2, 7, 12, 10)).astype(np.float32)
    loc = rng.normal(size=(2, 7, 4)).astype(np.float32)
    return priors, boxes_a, boxes_b, masks, corners, loc


def test_tensor_forms_equal_numpy(random_inputs):
    priors, boxes_a, boxes_b, masks, crop_boxes, loc = random_inputs
    outputs = _tensor_forms(*[ms.Tensor(x) for x in random_inputs])
    pf, cs, iou, cropped, decoded = [o.asnumpy() for o in outputs]
    np.testing.assert_allclose(pf, point_form(priors), atol=1e-7)
    np.testing.assert_allclose(cs, center_size(boxes_a), atol=1e-7)
    expected_iou = np.stack([pairwise_iou(a, b) for a, b in zip(boxes_a, boxes_b)])
    assert iou.shape == (2, 7, 7)
    assert (expected_iou > 0.05).sum() > 10
    np.testing.assert_allclose(iou, expected_iou, atol=1e-6)
    expected_crop = crop_masks(masks, crop_boxes)
    assert 0 < (expected_crop > 0).sum() < masks.size
    np.testing.assert_array_equal(cropped, expected_crop)
    np.testing.assert_allclose(decoded, decode(loc, priors[0]), atol=1e-6)
