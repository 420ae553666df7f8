"""Mask assembly and crop, mask re-scoring, resizing to the image, integer boxes."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn, ops

from src.postprocess.masks import (MaskRescoring, assemble_masks_tensor, boxes_to_image,
                                   masks_to_image, resize_masks)

GRID = 10                   # S, the prototype grid
LN3 = np.log(3.0)
FRACTIONAL_BOX = (0.26, 0.31, 0.74, 0.58)


@ms.jit
def _assemble(proto, coeffs, boxes):
    return assemble_masks_tensor(proto, coeffs, boxes)


@pytest.fixture(scope="module")
def assembled():
    """Prototype 0 is 1 everywhere, prototype 1 holds the column index x.

    Detection 0: coefficients (-ln 3, ln 3), so the logit is ln 3 · (x − 1) and the mask
    value sigmoid = 3^(x−1) / (3^(x−1) + 1): 1/4, 1/2, 3/4, 9/10, ... along x.
    Detections 1 and 2: zero coefficients (mask 1/2 everywhere) and the fractional box,
    given in order and with both ends swapped.
    """
    cols = np.broadcast_to(np.arange(GRID, dtype=np.float32), (GRID, GRID))
    proto = np.stack((np.ones((GRID, GRID), np.float32), cols), -1)[None]          # [1, S, S, 2]
    coeffs = np.float32([[[-LN3, LN3], [0, 0], [0, 0]]])
    x1, y1, x2, y2 = FRACTIONAL_BOX
    boxes = np.float32([[[0.25, 0.0, 0.5, 0.25], [x1, y1, x2, y2], [x2, y2, x1, y1]]])
    return _assemble(Tensor(proto), Tensor(coeffs), Tensor(boxes)).asnumpy()


def test_assembled_mask_values_and_crop_with_padding(assembled):
    mask = assembled[0, 0]
    # Box x 0.25..0.5 on 10 px: 2.5 − 1 <= c < 5 + 1 -> columns 2..5; y 0..0.25 -> rows 0..3.
    expected_row = np.float32([0, 0, 3 / 4, 9 / 10, 27 / 28, 81 / 82, 0, 0, 0, 0])
    np.testing.assert_allclose(mask[:4], np.broadcast_to(expected_row, (4, GRID)), rtol=0, atol=1e-6)
    assert np.all(mask[4:] == 0)


def test_fractional_box_keeps_exact_rows_and_columns(assembled):
    # x: 2.6 − 1 = 1.6 <= c < 7.4 + 1 = 8.4 -> columns 2..8; y: 2.1 <= r < 6.8 -> rows 3..6.
    expected = np.zeros((GRID, GRID), np.float32)
    expected[3:7, 2:9] = 0.5
    np.testing.assert_array_equal(assembled[0, 1], expected)
    np.testing.assert_array_equal(assembled[0, 2], expected)


class _ClassScaledMean(nn.Cell):
    """Stand-in maskiou net with MaskIoUNet's interface: [N, 1, S, S] -> [N, F], output
    (f + 1) · mean(mask) so each class's entry is distinct and known."""

    def __init__(self, num_fg_classes):
        super().__init__()
        self.class_scale = Tensor(np.arange(1, num_fg_classes + 1, dtype=np.float32))

    def construct(self, masks):
        return ops.mean(masks, axis=(1, 2, 3)).reshape(-1, 1) * self.class_scale


def test_rescoring_multiplies_by_the_class_entry():
    rng = np.random.default_rng(3)
    num_fg = 4
    masks = rng.uniform(0, 1, (2, 3, GRID, GRID)).astype(np.float32)
    classes = np.int32([[3, 0, 2], [1, 1, 3]])
    scores = np.float32([[0.9, 0.5, 0.2], [0.7, 0.6, 0.0]])
    mask_scores = MaskRescoring(_ClassScaledMean(num_fg))(
        Tensor(masks), Tensor(classes), Tensor(scores)).asnumpy()
    expected = scores * (classes + 1) * masks.mean(axis=(2, 3))
    # Values above the box score are kept (no clamp): class 3 scales the mean (~0.5) by 4.
    assert mask_scores[0, 0] > scores[0, 0]
    np.testing.assert_allclose(mask_scores, expected, rtol=1e-5, atol=1e-7)


def _bilinear_align_corners_false(masks, height, width):
    """Independent numpy bilinear resize, PyTorch ``align_corners=False`` semantics."""
    def taps(out_size, in_size):
        src = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
        src = np.maximum(src, 0)
        low = np.floor(src).astype(int)
        high = np.minimum(low + 1, in_size - 1)
        return low, high, src - low

    y0, y1, wy = taps(height, masks.shape[1])
    x0, x1, wx = taps(width, masks.shape[2])
    top = masks[:, y0][:, :, x0] * (1 - wx) + masks[:, y0][:, :, x1] * wx
    bottom = masks[:, y1][:, :, x0] * (1 - wx) + masks[:, y1][:, :, x1] * wx
    return top * (1 - wy)[:, None] + bottom * wy[:, None]


@pytest.mark.parametrize("height, width", [(23, 17),     # up, non-integer factors
                                           (40, 30),     # up x4, x3
                                           (7, 4),       # down, non-integer
                                           (5, 5),       # down x2 (OpenCV's area fast path)
                                           (31, 6)])     # up in y, down in x
def test_resize_matches_bilinear_align_corners_false(height, width):
    rng = np.random.default_rng(height * 100 + width)
    masks = rng.uniform(0, 1, (3, GRID, GRID)).astype(np.float32)
    reference = _bilinear_align_corners_false(masks.astype(np.float64), height, width)
    np.testing.assert_allclose(resize_masks(masks, height, width), reference, rtol=0, atol=2e-6)
    binary = masks_to_image(masks, height, width)
    assert binary.dtype == np.bool_ and binary.shape == (3, height, width)
    clear = np.abs(reference - 0.5) > 1e-5
    np.testing.assert_array_equal(binary[clear], (reference > 0.5)[clear])


def test_masks_to_image_single_mask_and_strict_threshold():
    mask = np.full((1, GRID, GRID), 0.5, np.float32)
    mask[0, :, 5:] = 1.0
    binary = masks_to_image(mask, 20, 20)
    assert binary.shape == (1, 20, 20)
    # Output columns 0..8 blend source columns 0..4 (all 0.5, not > 0.5); column 9 (source
    # 4.25) is the first to mix in a 1.
    assert not binary[0, :, :9].any() and binary[0, :, 9:].all()


def test_boxes_to_image_orders_clamps_outer_ends_and_truncates():
    boxes = np.float32([
        [0.6, 0.9, 0.1, 0.2],          # swapped ends
        [-0.2, -0.1, 1.3, 1.1],        # beyond every side
        [0.123, 0.456, 0.789, 0.999],  # truncation, not rounding
        [1.2, 0.1, 1.5, 0.2],          # right of the image: x1 keeps 120 (only x2 is clamped)
        [-0.3, 0.2, -0.005, 0.4],      # left of the image: x2 = -0.5 truncates to 0, not -1
    ])
    expected = np.int64([
        [10, 10, 60, 45],
        [0, 0, 100, 50],
        [12, 22, 78, 49],
        [120, 5, 100, 10],
        [0, 10, 0, 20],
    ])
    np.testing.assert_array_equal(boxes_to_image(boxes, 100, 50), expected)
