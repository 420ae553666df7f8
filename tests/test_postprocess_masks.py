"""Mask assembly and crop, mask re-scoring, resizing to the image (windowed, bit-identical to
the full-image OpenCV resize), RLE from the windows, integer boxes."""
import cv2
import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn, ops
from pycocotools import mask as mask_utils

from src.postprocess.masks import (MaskRescoring, MaskWindows, assemble_masks_tensor,
                                   boxes_to_image, mask_windows, masks_to_image)

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


def _resize_full(masks, height, width):
    """The full-image resize ``masks_to_image`` replaced (before the windows): every mask
    resized to the whole image by cv2 INTER_LINEAR, 512 channels per call, then compared.

    OpenCV runs other kernels (Intel IPP, or SIMD variants of its 2x2 area average) for 1, 3
    or 4 channels, whose roundings differ from its generic path by up to ~1e-5, so the same
    mask could come out differently depending on how many detections the image had. The
    stack is padded with zero masks to 5 channels, the generic path that every image with 5
    or more detections took and that ``mask_windows`` reproduces for every count.
    """
    masks = np.asarray(masks, np.float32)
    count = masks.shape[0]
    padded = np.concatenate((masks, np.zeros((max(5 - count, 0),) + masks.shape[1:], np.float32)))
    out = np.empty((padded.shape[0], height, width), np.float32)
    for start in range(0, padded.shape[0], 512):
        chunk = padded[start:start + 512].transpose(1, 2, 0)                   # [S, S, n]
        resized = cv2.resize(chunk, (width, height), interpolation=cv2.INTER_LINEAR)
        out[start:start + chunk.shape[2]] = resized.reshape(height, width, -1).transpose(2, 0, 1)
    return out[:count]


def _full_image_masks(masks, height, width, threshold=0.5):
    return _resize_full(masks, height, width) > threshold


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
                                           (31, 6)])     # up in y, down in x
def test_resize_matches_bilinear_align_corners_false(height, width):
    rng = np.random.default_rng(height * 100 + width)
    masks = rng.uniform(0, 1, (3, GRID, GRID)).astype(np.float32)
    reference = _bilinear_align_corners_false(masks.astype(np.float64), height, width)
    np.testing.assert_allclose(_resize_full(masks, height, width), reference, rtol=0, atol=2e-6)
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


def _crop_to(masks, boxes):
    """Zero ``masks`` [D, S, S] outside ``boxes`` [D, 4] (row0, row1, col0, col1) cells,
    ends exclusive, as the graph's crop leaves them."""
    for mask, (r0, r1, c0, c1) in zip(masks, boxes):
        keep = np.zeros(mask.shape, bool)
        keep[r0:r1, c0:c1] = True
        mask[~keep] = 0
    return masks


def _cropped(rng, count, size, boxes=None, flat_fraction=0.0):
    """[count, size, size] float32 uniform soft masks, zero outside a random box each (or
    ``boxes``, see ``_crop_to``); a share ``flat_fraction`` of the cells is exactly 0.5, the
    threshold, to stress the roundings."""
    masks = rng.uniform(0, 1, (count, size, size)).astype(np.float32)
    masks[rng.uniform(size=masks.shape) < flat_fraction] = 0.5
    if boxes is None:
        rows, cols = (np.sort(rng.integers(0, size + 1, (count, 2)), 1) for _ in range(2))
        boxes = np.concatenate((rows, cols), 1)
    return _crop_to(masks, boxes)


def _smooth_cropped(rng, count, size, num_protos=8):
    """Real-like masks: sigmoid of a linear combination of smooth prototypes, cropped to
    boxes of log-uniform sides (1 cell to the whole grid)."""
    protos = np.stack([cv2.resize(rng.normal(0, 2, (5, 5)).astype(np.float32), (size, size),
                                  interpolation=cv2.INTER_CUBIC) for _ in range(num_protos)], -1)
    logits = protos @ rng.normal(0, 1, (num_protos, count)).astype(np.float32)
    masks = (1 / (1 + np.exp(-logits))).transpose(2, 0, 1).astype(np.float32)
    sides = np.exp(rng.uniform(0, np.log(size + 1), (count, 2))).astype(int).clip(1, size)
    row0 = rng.integers(0, size - sides[:, 0] + 1)
    col0 = rng.integers(0, size - sides[:, 1] + 1)
    return _crop_to(masks, np.stack((row0, row0 + sides[:, 0], col0, col0 + sides[:, 1]), 1))


def _assert_same_as_full_resize(masks, height, width, threshold=0.5):
    expected = _full_image_masks(masks, height, width, threshold)
    windows = mask_windows(masks, height, width, threshold)
    np.testing.assert_array_equal(windows.to_dense(), expected)
    np.testing.assert_array_equal(masks_to_image(masks, height, width, threshold), expected)
    return windows, expected


# (S, height, width): upscaling, downscaling (image smaller than the grid), one axis each
# way, odd sizes, exact x2 / x3 / x1 factors, OpenCV's exact halving (2x2 area average).
SIZES = [(138, 480, 640), (138, 427, 640), (138, 640, 427), (138, 101, 77), (138, 69, 69),
         (138, 69, 100), (138, 276, 414), (138, 138, 138), (138, 1, 1), (138, 1, 500),
         (69, 333, 500), (10, 23, 17), (10, 7, 4), (10, 5, 5), (10, 31, 6), (7, 3, 2),
         (1, 9, 4), (2, 1, 1)]


@pytest.mark.parametrize("size, height, width", SIZES)
def test_windows_equal_the_full_resize_on_random_boxes(size, height, width):
    rng = np.random.default_rng(size * 7919 + height * 31 + width)
    masks = _cropped(rng, 40, size, flat_fraction=0.3)
    _assert_same_as_full_resize(masks, height, width)


@pytest.mark.parametrize("size, height, width", SIZES)
def test_windows_equal_the_full_resize_on_real_like_masks(size, height, width):
    rng = np.random.default_rng(size * 104729 + height * 17 + width)
    _assert_same_as_full_resize(_smooth_cropped(rng, 30, size), height, width)


def test_windows_at_borders_tiny_and_whole_boxes():
    rng = np.random.default_rng(5)
    size = 138
    last = size - 1
    boxes = [(0, size, 0, size),               # the whole grid
             (0, 1, 0, 1), (last, size, last, size), (0, 1, last, size), (last, size, 0, 1),
             (70, 71, 33, 34),                 # one cell inside
             (0, size, 60, 61), (60, 61, 0, size),   # one column / one row, edge to edge
             (0, 10, 0, size), (size - 10, size, 0, size), (0, size, 0, 10),
             (0, size, size - 10, size), (0, 0, 0, 0)]   # ... and an empty box
    masks = _cropped(rng, len(boxes), size, boxes=np.array(boxes), flat_fraction=0.2)
    for height, width in ((480, 640), (100, 90), (69, 69), (550, 550), (37, 1000)):
        windows, expected = _assert_same_as_full_resize(masks, height, width)
        assert windows.corners[-1].tolist() == [0, 0, 0, 0] and not expected[-1].any()
        # The whole-grid box spans the whole image.
        assert windows.corners[0].tolist() == [0, 0, width, height]


@pytest.mark.parametrize("count", [0, 1, 2, 3, 4, 5, 100])
def test_windows_equal_the_full_resize_for_any_detection_count(count):
    rng = np.random.default_rng(count)
    masks = _smooth_cropped(rng, count, 138) if count else np.zeros((0, 138, 138), np.float32)
    windows, expected = _assert_same_as_full_resize(masks, 480, 640)
    assert len(windows) == count and expected.shape == (count, 480, 640)


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.9, 1.0])
def test_windows_equal_the_full_resize_at_any_threshold(threshold):
    rng = np.random.default_rng(int(threshold * 10))
    _assert_same_as_full_resize(_cropped(rng, 20, 138, flat_fraction=0.1), 300, 400, threshold)


def test_negative_threshold_is_refused():
    with pytest.raises(ValueError, match="mask threshold -0.1: expected >= 0"):
        mask_windows(np.zeros((1, 4, 4), np.float32), 8, 8, -0.1)


def _encode_dense(dense):
    return mask_utils.encode(np.asfortranarray(dense.astype(np.uint8).transpose(1, 2, 0)))


@pytest.mark.parametrize("height, width", [(480, 640), (69, 69), (13, 700), (700, 13)])
def test_rle_from_windows_equals_pycocotools_on_the_dense_masks(height, width):
    rng = np.random.default_rng(height + width)
    masks = np.concatenate((_smooth_cropped(rng, 30, 138), _cropped(rng, 20, 138, flat_fraction=0.3)))
    windows, dense = _assert_same_as_full_resize(masks, height, width)
    assert windows.to_rle() == _encode_dense(dense)
    assert MaskWindows.from_dense(dense).to_rle() == _encode_dense(dense)


def test_rle_of_runs_across_full_height_columns_and_image_corners():
    dense = np.zeros((6, 5, 4), bool)
    dense[0] = True                                   # every pixel: one run
    dense[1, :, 1:3] = True                           # two full columns: one run of 10
    dense[2, 3:, 0] = dense[2, :2, 1] = True          # a run across a column boundary
    dense[3, 0, 0] = dense[3, -1, -1] = True          # first and last pixel
    dense[4, ::2, ::2] = True                         # checkerboard-ish
    windows = MaskWindows.from_dense(dense)           # dense[5]: empty
    assert windows.to_rle() == _encode_dense(dense)
    assert [c.tolist() for c in windows.rle_counts()[:4]] == [
        [0, 20], [5, 10, 5], [3, 4, 13], [0, 1, 18, 1]]
    np.testing.assert_array_equal(windows.to_dense(), dense)


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
