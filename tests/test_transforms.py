"""Per-sample numpy transforms against hand-computed values and independent formulas."""
import cv2
import numpy as np
import pytest

from src.data.transforms import (MEAN_BGR, downsample_masks, eval_transform, expand,
                                 normalize_image, photometric_distort, random_mirror,
                                 random_sample_crop, resize_masks, resize_sample,
                                 semantic_target, train_transform)


def _synthetic_sample(seed, height=64, width=80):
    """Random image, two rectangles and a disc (non-crowd) and a crowd rectangle.

    Boxes are the masks' pixel extents: (min col, min row, max col + 1, max row + 1).
    """
    rng = np.random.default_rng(1000 + seed)
    image = rng.uniform(0, 255, (height, width, 3)).astype(np.float32)
    masks = np.zeros((4, height, width), np.uint8)
    for g in (0, 1, 3):
        w, h = rng.integers(16, 30, 2)
        x, y = rng.integers(0, width - w), rng.integers(0, height - h)
        masks[g, y:y + h, x:x + w] = 1
    radius = int(rng.integers(9, 14))
    centre = (int(rng.integers(radius, width - radius)), int(rng.integers(radius, height - radius)))
    cv2.circle(masks[2], centre, radius, 1, -1)
    boxes = np.array([_extent(m) for m in masks], np.float32)
    return image, masks, boxes, np.array([3, 7, 7, 3]), np.array([False, False, False, True])


def _extent(mask):
    """(x1, y1, x2, y2) pixel extent of a binary mask."""
    rows, cols = np.nonzero(mask)
    return cols.min(), rows.min(), cols.max() + 1, rows.max() + 1


def test_train_transform_boxes_inside_image_and_match_mask_extents():
    size = 64
    shapes = {"rect": 0, "disc": 0, "crowd": 0}
    for seed in range(24):
        image, masks, boxes, labels, crowd = _synthetic_sample(seed)
        sample = train_transform(image, masks, boxes, labels, crowd, size,
                                 np.random.default_rng(seed))
        assert sample is not None
        assert sample.image.shape == (3, size, size) and sample.image.dtype == np.float32
        assert sample.masks.shape == (len(sample.boxes), size, size)
        assert set(np.unique(sample.masks)) <= {0, 1}
        assert np.all(sample.boxes >= 0) and np.all(sample.boxes <= 1)
        assert np.all(sample.boxes[:, 2:] > sample.boxes[:, :2])
        assert (~sample.is_crowd).any()
        for mask, box, label, is_crowd in zip(sample.masks, sample.boxes * size,
                                              sample.labels, sample.is_crowd):
            extent = np.array(_extent(mask), np.float32)
            # A pixel is on only where the bilinear value is >= 0.5, so the mask never passes a
            # box edge by more than half an output pixel. Inward it may stop short by more:
            # OpenCV's 8-bit vertical pass truncates, so a 0/1 mask turns off some values up
            # to ~0.75, and a disc's extreme column is thin and may vanish.
            is_disc = not is_crowd and mask.sum() < 0.9 * np.prod(box[2:] - box[:2])
            outward = np.array([-1, -1, 1, 1]) * (extent - box)
            assert np.all(outward <= 0.5 + 1e-3), (seed, extent, box)
            assert np.all(outward >= -(2.0 if is_disc else 1.5)), (seed, extent, box)
            shapes["crowd" if is_crowd else ("disc" if is_disc else "rect")] += 1
    assert min(shapes.values()) > 0, shapes


def test_train_transform_is_reproducible_from_the_seed():
    image, masks, boxes, labels, crowd = _synthetic_sample(5)
    first = train_transform(image, masks, boxes, labels, crowd, 48, np.random.default_rng(11))
    second = train_transform(image, masks, boxes, labels, crowd, 48, np.random.default_rng(11))
    other = train_transform(image, masks, boxes, labels, crowd, 48, np.random.default_rng(12))
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first.image, other.image)


def test_train_transform_returns_none_without_a_non_crowd_box():
    image, masks, boxes, labels, _ = _synthetic_sample(2)
    all_crowd = np.ones(4, bool)
    for seed in range(4):
        assert train_transform(image, masks, boxes, labels, all_crowd, 32,
                               np.random.default_rng(seed)) is None


def test_expand_pastes_at_the_drawn_offset_and_fills_the_mean():
    image, masks, boxes, _, _ = _synthetic_sample(0, height=40, width=50)
    fired = 0
    for seed in range(8):
        probe = np.random.default_rng(seed)
        out_image, out_masks, out_boxes = expand(image, masks, boxes, np.random.default_rng(seed))
        if probe.integers(2):
            assert out_image is image and out_masks is masks and out_boxes is boxes
            continue
        fired += 1
        ratio = probe.uniform(1, 4)
        x0, y0 = int(probe.uniform(0, 50 * ratio - 50)), int(probe.uniform(0, 40 * ratio - 40))
        assert out_image.shape == (int(40 * ratio), int(50 * ratio), 3)
        np.testing.assert_array_equal(out_image[y0:y0 + 40, x0:x0 + 50], image)
        outside = np.ones(out_image.shape[:2], bool)
        outside[y0:y0 + 40, x0:x0 + 50] = False
        np.testing.assert_array_equal(out_image[outside],
                                      np.broadcast_to(MEAN_BGR, (outside.sum(), 3)))
        np.testing.assert_array_equal(out_masks[:, y0:y0 + 40, x0:x0 + 50], masks)
        assert out_masks[:, outside].sum() == 0
        np.testing.assert_array_equal(out_boxes, boxes + [x0, y0, x0, y0])
    assert 0 < fired < 8


def test_mirror_flips_boxes_and_masks_consistently():
    image, masks, boxes, _, _ = _synthetic_sample(1)
    flipped = 0
    for seed in range(6):
        out_image, out_masks, out_boxes = random_mirror(image, masks, boxes,
                                                        np.random.default_rng(seed))
        if not np.random.default_rng(seed).integers(2):
            np.testing.assert_array_equal(out_image, image)
            continue
        flipped += 1
        np.testing.assert_array_equal(out_image, image[:, ::-1])
        np.testing.assert_array_equal(out_masks, masks[:, :, ::-1])
        np.testing.assert_array_equal(out_boxes[:, [0, 2]], 80 - boxes[:, [2, 0]])
        np.testing.assert_array_equal(out_boxes[:, [1, 3]], boxes[:, [1, 3]])
        np.testing.assert_array_equal(out_boxes, [_extent(m) for m in out_masks])
    assert 0 < flipped < 6


def test_crop_keeps_exactly_the_gts_whose_centre_is_inside():
    height, width, count = 50, 70, 14
    rng = np.random.default_rng(3)
    cols, rows = np.meshgrid(np.arange(width), np.arange(height))
    image = np.stack([cols, rows, np.zeros_like(cols)], -1).astype(np.float32)
    xy = rng.uniform(0, [width - 6, height - 6], (count, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(4, 25, (count, 2))], 1).astype(np.float32)
    masks = rng.integers(0, 2, (count, height, width)).astype(np.uint8)
    ids = np.arange(count)
    crowd = np.arange(count) >= count - 4
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    cropped = uncropped = 0
    for seed in range(40):
        out = random_sample_crop(image, masks, boxes, ids, crowd, np.random.default_rng(seed))
        out_image, out_masks, out_boxes, out_ids, out_crowd = out
        if out_image.shape == image.shape:
            uncropped += 1
            assert all(a is b for a, b in zip(out, (image, masks, boxes, ids, crowd)))
            continue
        cropped += 1
        x1, y1 = int(out_image[0, 0, 0]), int(out_image[0, 0, 1])
        x2, y2 = x1 + out_image.shape[1], y1 + out_image.shape[0]
        inside = ((centres[:, 0] > x1) & (centres[:, 0] < x2)
                  & (centres[:, 1] > y1) & (centres[:, 1] < y2))
        np.testing.assert_array_equal(out_ids, ids[inside])
        np.testing.assert_array_equal(out_crowd, crowd[inside])
        assert (~out_crowd).any()
        expected = np.clip(boxes[inside], [x1, y1, x1, y1], [x2, y2, x2, y2]) - [x1, y1, x1, y1]
        np.testing.assert_allclose(out_boxes, expected, atol=1e-5)
        np.testing.assert_array_equal(out_masks, masks[inside][:, y1:y2, x1:x2])
        assert out_image.shape[1] >= int(0.3 * width) - 1
        assert out_image.shape[0] >= int(0.3 * height) - 1
        # The authors' offset is uniform between 1 and W - w (numpy's default high of 1.0).
        if out_image.shape[1] <= width - 2:
            assert x1 >= 1
        if out_image.shape[0] <= height - 2:
            assert y1 >= 1
    assert cropped > 20 and uncropped > 0


def test_crop_leaves_a_crowd_only_sample_uncropped():
    image, masks, boxes, labels, _ = _synthetic_sample(4)
    crowd = np.ones(4, bool)
    out = random_sample_crop(image, masks, boxes, labels, crowd, np.random.default_rng(0))
    assert all(a is b for a, b in zip(out, (image, masks, boxes, labels, crowd)))


def test_normalise_known_pixel_gives_rgb_values():
    image = np.zeros((2, 3, 3), np.float32)
    image[1, 2] = (10, 120, 250)                       # B, G, R
    out = normalize_image(image)
    assert out.shape == (3, 2, 3) and out.dtype == np.float32
    # R = (250 - 123.68) / 58.40, G = (120 - 116.78) / 57.12, B = (10 - 103.94) / 57.38
    # rtol covers the float32 rounding of the mean and std.
    np.testing.assert_allclose(out[:, 1, 2], [2.1630137, 0.0563725, -1.6371558], rtol=1e-5)
    np.testing.assert_allclose(out[:, 0, 0], [-2.1178082, -2.0444678, -1.8114326], rtol=1e-5)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64])
def test_normalise_equals_the_whole_image_formula_bit_for_bit(dtype):
    from src.data.transforms import MEAN_BGR, STD_BGR
    image = np.random.default_rng(3).uniform(0, 255, (37, 53, 3)).astype(dtype)
    expected = ((image.astype(np.float32) - MEAN_BGR) / STD_BGR)[:, :, ::-1].transpose(2, 0, 1)
    np.testing.assert_array_equal(normalize_image(image), expected)


def test_eval_transform_resizes_the_float_image_bilinearly():
    image = np.zeros((2, 2, 3), np.uint8)
    image[:, 1] = 101
    out = eval_transform(image, 4)
    # Half-pixel centres 2 -> 4: columns 0, .25*101, .75*101, 101 (a uint8 resize would round).
    expected_bgr = np.array([0.0, 25.25, 75.75, 101.0])[:, None]
    expected = (expected_bgr - MEAN_BGR) / np.array((57.38, 57.12, 58.40))   # [4, 3] BGR
    for row in range(4):
        np.testing.assert_allclose(out[:, row, :], expected[:, ::-1].T, rtol=1e-5)


def _hsv_to_bgr(hue, sat, val):
    """Textbook HSV (H in degrees) -> BGR for one pixel."""
    sector = int(np.floor(hue / 60.0)) % 6
    frac = hue / 60.0 - np.floor(hue / 60.0)
    p, q, t = val * (1 - sat), val * (1 - sat * frac), val * (1 - sat * (1 - frac))
    r, g, b = [(val, t, p), (q, val, p), (p, val, t), (p, q, val), (t, p, val), (val, p, q)][sector]
    return np.array([b, g, r])


def test_photometric_on_constant_gray_is_brightness_then_contrast():
    image = np.full((4, 5, 3), 100.0, np.float32)
    checked = 0
    for seed in range(40):
        probe = np.random.default_rng(seed)
        if not probe.integers(2):
            continue
        delta = probe.uniform(-32, 32)
        contrast_first = probe.integers(2)
        if not (contrast_first and probe.integers(2)):
            continue
        alpha = probe.uniform(0.5, 1.5)
        out = photometric_distort(image, np.random.default_rng(seed))
        # Gray has S = 0, so saturation and hue change nothing: (100 + delta) * alpha.
        np.testing.assert_allclose(out, (100.0 + delta) * alpha, rtol=1e-5)
        checked += 1
    assert checked >= 2
    np.testing.assert_array_equal(image, 100.0)


def test_photometric_on_a_red_pixel_follows_the_hsv_formulas():
    image = np.zeros((2, 2, 3), np.float32)
    image[:, :, 2] = 200.0
    hue_shifts = []
    for seed in range(24):
        probe = np.random.default_rng(seed)
        bgr = np.array([0.0, 0.0, 200.0])
        if probe.integers(2):
            bgr = bgr + probe.uniform(-32, 32)
        contrast_first = probe.integers(2)
        if contrast_first and probe.integers(2):
            bgr = bgr * probe.uniform(0.5, 1.5)
        # R is the max and G = B, so H = 0, S = (R - B) / R, V = R.
        val, sat, hue = bgr[2], (bgr[2] - bgr[0]) / bgr[2], 0.0
        if probe.integers(2):
            sat *= probe.uniform(0.5, 1.5)
        if probe.integers(2):
            hue = probe.uniform(-18, 18)
            hue_shifts.append(hue)
            hue = hue + 360.0 if hue < 0 else hue
        bgr = _hsv_to_bgr(hue, sat, val)
        if not contrast_first and probe.integers(2):
            bgr = bgr * probe.uniform(0.5, 1.5)
        out = photometric_distort(image, np.random.default_rng(seed))
        np.testing.assert_allclose(out, np.broadcast_to(bgr, out.shape), rtol=1e-4, atol=1e-3)
    assert min(hue_shifts) < 0 < max(hue_shifts)


def _interpolation_matrix(in_size, out_size):
    """[out, in] float64 bilinear weights, align_corners=False, built pixel by pixel."""
    matrix = np.zeros((out_size, in_size))
    for j in range(out_size):
        src = max((j + 0.5) * in_size / out_size - 0.5, 0.0)
        i0 = min(int(np.floor(src)), in_size - 1)
        i1 = min(i0 + 1, in_size - 1)
        lam = src - i0
        matrix[j, i0] += 1 - lam
        matrix[j, i1] += lam
    return matrix


def _blob_masks(height, width, seed):
    rng = np.random.default_rng(seed)
    masks = np.zeros((3, height, width), np.uint8)
    for mask in masks:
        x, y = rng.integers(0, width // 2), rng.integers(0, height // 2)
        mask[y:y + rng.integers(2, height // 2), x:x + rng.integers(2, width // 2)] = 1
        cv2.circle(mask, (int(rng.integers(0, width)), int(rng.integers(0, height))),
                   int(rng.integers(2, height // 3)), 1, -1)
    return masks


SIZES = [(550, 550, 138), (550, 550, 69), (256, 256, 64), (47, 61, 23), (20, 20, 33)]


@pytest.mark.parametrize("height,width,size", SIZES)
def test_downsample_masks_equals_the_bilinear_formula(height, width, size):
    masks = _blob_masks(height, width, size)
    out = downsample_masks(masks, size)
    assert out.shape == (3, size, size) and out.dtype == np.float32
    reference = (_interpolation_matrix(height, size) @ masks.astype(np.float64)
                 @ _interpolation_matrix(width, size).T)
    # Float32 source coordinates (as PyTorch) differ from float64 by up to ulp(550)/2.
    np.testing.assert_allclose(out, reference, atol=1e-4)
    decided = np.abs(reference - 0.5) > 1e-4
    np.testing.assert_array_equal((out > 0.5)[decided], (reference > 0.5)[decided])


@pytest.mark.parametrize("height,width,size", SIZES)
def test_downsample_masks_equals_torch_interpolate(height, width, size):
    torch = pytest.importorskip("torch")
    masks = _blob_masks(height, width, size + 1)
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(masks.astype(np.float32))[None], (size, size), mode="bilinear",
        align_corners=False)[0].numpy()
    out = downsample_masks(masks, size)
    np.testing.assert_allclose(out, expected, rtol=0, atol=2.5e-7)
    np.testing.assert_array_equal(out > 0.5, expected > 0.5)


def test_semantic_target_is_the_per_class_max_of_non_crowd_masks():
    masks = _blob_masks(40, 40, 7)
    masks = np.concatenate([masks, masks[:1]])       # the crowd copies mask 0
    labels = np.array([2, 2, 5, 2])
    crowd = np.array([False, False, True, True])
    target = semantic_target(masks, labels, crowd, 6, 17)
    matrix = _interpolation_matrix(40, 17)
    small = (matrix @ masks.astype(np.float64) @ matrix.T) > 0.5
    expected = np.zeros((6, 17, 17), np.float32)
    expected[2] = small[0] | small[1]
    assert target.dtype == np.float32
    np.testing.assert_array_equal(target, expected)
    assert expected[2].sum() > max(small[0].sum(), small[1].sum())


def test_resize_masks_stays_binary_and_chunks_past_512_channels():
    rng = np.random.default_rng(0)
    masks = (rng.random((520, 9, 11)) > 0.5).astype(np.uint8)
    out = resize_masks(masks, 7)
    assert out.shape == (520, 7, 7) and set(np.unique(out)) == {0, 1}
    for index in (0, 511, 512, 519):
        np.testing.assert_array_equal(out[index], cv2.resize(masks[index], (7, 7)))


def test_resize_drops_only_degenerate_boxes():
    image = np.zeros((100, 100, 3), np.float32)
    masks = np.zeros((3, 100, 100), np.uint8)
    # Widths after resizing 100 -> 50: 0.005 px, 0.01 px and 10 px; the threshold is 4/550 px.
    boxes = np.array([[10, 10, 10.01, 30], [10, 10, 10.02, 30], [10, 10, 30, 30]], np.float32)
    _, out_masks, out_boxes, out_labels, out_crowd = resize_sample(
        image, masks, boxes, np.array([0, 1, 2]), np.zeros(3, bool), 50)
    np.testing.assert_array_equal(out_labels, [1, 2])
    np.testing.assert_allclose(out_boxes[1], [5, 5, 15, 15])
    assert out_masks.shape == (2, 50, 50) and len(out_crowd) == 2


def test_light_augmentation_keeps_every_object_and_only_mirrors():
    size = 64
    mirrored = 0
    for seed in range(8):
        image, masks, boxes, labels, crowd = _synthetic_sample(seed)
        sample = train_transform(image, masks, boxes, labels, crowd, size,
                                 np.random.default_rng(seed), augmentation="light")
        # No crop, no expand: every object survives, scaled to the 64 x 64 input.
        np.testing.assert_array_equal(sample.labels, labels)
        scale = np.array([size / 80, size / 64] * 2, np.float32)
        plain = boxes * scale / size
        flipped = plain[:, [2, 1, 0, 3]] * np.array([-1, 1, -1, 1]) + np.array([1, 0, 1, 0])
        is_flipped = np.allclose(sample.boxes, flipped, atol=1e-6)
        assert is_flipped or np.allclose(sample.boxes, plain, atol=1e-6)
        mirrored += is_flipped
        expected_masks = resize_masks(masks[:, :, ::-1] if is_flipped else masks, size)
        np.testing.assert_array_equal(sample.masks, expected_masks)
    assert 0 < mirrored < 8
