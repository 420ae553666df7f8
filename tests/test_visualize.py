"""Pixel checks of the detection drawing: mask blending, box outlines, labels, filtering."""
import numpy as np
import pytest

from src.utils.visualize import colour_for_class, draw_detections

CLASS_NAMES = ("person", "dog", "cat")
HEIGHT, WIDTH = 120, 160
LABEL_BAND = 30   # rows above a box's top that its label may use (text ~20 px high)


def _random_image(seed=0):
    return np.random.default_rng(seed).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)


def _outline(x1, y1, x2, y2):
    """[H, W] bool: the outermost pixels of the box (x2, y2 exclusive)."""
    outline = np.zeros((HEIGHT, WIDTH), bool)
    outline[y1, x1:x2] = outline[y2 - 1, x1:x2] = True
    outline[y1:y2, x1] = outline[y1:y2, x2 - 1] = True
    return outline


def _rect_mask(x1, y1, x2, y2):
    mask = np.zeros((HEIGHT, WIDTH), bool)
    mask[y1:y2, x1:x2] = True
    return mask


def _has_text(area):
    """White (anti-aliased) text: every channel bright; class colours keep one channel near 60."""
    return bool(np.any(np.all(area >= 200, axis=2)))


def _result(boxes, classes, scores, masks=None, mask_scores=None):
    result = {"boxes": np.array(boxes, np.int64), "classes": np.array(classes, np.int64),
              "box_scores": np.array(scores, np.float32)}
    if masks is not None:
        result["masks"] = np.stack(masks)
        result["mask_scores"] = np.array(scores if mask_scores is None else mask_scores, np.float32)
    return result


def test_colour_is_fixed_per_class_and_distinct():
    colours = [colour_for_class(label) for label in range(80)]
    assert len(set(colours)) == 80
    assert colour_for_class(7) == colours[7]
    assert all(len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c) for c in colours)
    # Label 0: hue 0 (red), saturation 0.75, value 0.95 -> RGB (242, 61, 61) -> BGR (61, 61, 242).
    assert colours[0] == (61, 61, 242)


def test_mask_moves_toward_class_colour_by_alpha_and_box_has_class_colour():
    image = np.full((HEIGHT, WIDTH, 3), 100, np.uint8)
    box = (40, 50, 100, 110)
    mask = _rect_mask(50, 60, 90, 100)
    out = draw_detections(image, _result([box], [1], [0.8], [mask]), CLASS_NAMES, alpha=0.45)
    colour = np.array(colour_for_class(1), np.float64)
    # 100 * (1 - 0.45) + colour * 0.45 = 55 + 0.45 * colour, rounded to the nearest level.
    expected = 55.0 + 0.45 * colour
    inside = out[mask].astype(np.float64)
    assert np.all(np.abs(inside - expected) <= 0.5 + 1e-6)
    assert np.all(out[_outline(*box)] == colour.astype(np.uint8))
    # Inside the box, off the mask and the outline: untouched.
    interior = _rect_mask(41, 51, 99, 109) & ~mask
    assert np.all(out[interior] == 100)


def test_overlapping_masks_blend_lowest_score_first():
    image = np.full((HEIGHT, WIDTH, 3), 100, np.uint8)
    low_mask, high_mask = _rect_mask(10, 10, 60, 60), _rect_mask(40, 40, 90, 90)
    # Listed low score first: drawing order must come from the scores, not the list order.
    result = _result([(10, 10, 60, 60), (40, 40, 90, 90)], [2, 0], [0.3, 0.9], [low_mask, high_mask])
    out = draw_detections(image, result, CLASS_NAMES, alpha=0.5)
    low, high = (np.array(colour_for_class(c), np.float64) for c in (2, 0))
    overlap = out[50, 50].astype(np.float64)
    expected = (100 * 0.5 + low * 0.5) * 0.5 + high * 0.5
    assert np.all(np.abs(overlap - expected) <= 0.5 + 1e-6)
    # Where the outlines cross, the higher score is on top: the high box's top row (y=40)
    # meets the low box's right column (x=59).
    assert tuple(out[40, 59]) == colour_for_class(0)
    # And the low box's bottom row (y=59) meets the high box's left column (x=40).
    assert tuple(out[59, 40]) == colour_for_class(0)


def test_outside_masks_boxes_and_labels_the_image_is_unchanged():
    image = _random_image()
    before = image.copy()
    box = (40, 50, 100, 110)
    mask = _rect_mask(50, 60, 90, 100)
    out = draw_detections(image, _result([box], [2], [0.77], [mask]), CLASS_NAMES)
    assert np.array_equal(image, before)   # not drawn in place
    allowed = mask | _outline(*box)
    allowed[box[1] - LABEL_BAND:box[1] + 1, box[0]:] = True
    changed = np.any(out != image, axis=2)
    assert not np.any(changed & ~allowed)
    # The label is there: class-coloured background with white text just above the box.
    label = out[box[1] - 15:box[1], box[0]:box[0] + 40]
    assert np.mean(np.all(label == colour_for_class(2), axis=2)) > 0.5
    assert _has_text(label)


def test_label_goes_inside_a_box_at_the_top_edge():
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    out = draw_detections(image, _result([(5, 0, 150, 100)], [0], [0.5]), CLASS_NAMES)
    label_area = out[1:LABEL_BAND, 6:60]
    assert np.any(np.all(label_area == colour_for_class(0), axis=2))
    assert not _has_text(out[LABEL_BAND:99, 6:149])
    assert _has_text(label_area)


def test_without_masks_only_boxes_and_labels_are_drawn():
    image = _random_image(1)
    box = (40, 50, 100, 110)
    out = draw_detections(image, _result([box], [0], [0.6]), CLASS_NAMES)
    assert np.all(out[_outline(*box)] == colour_for_class(0))
    assert np.array_equal(out[51:109, 41:99], image[51:109, 41:99])


def _two_far_apart():
    boxes = [(10, 40, 60, 110), (100, 40, 150, 110)]
    masks = [_rect_mask(20, 60, 50, 100), _rect_mask(110, 60, 140, 100)]
    return boxes, masks


def test_score_threshold_and_top_k_filter_detections():
    image = _random_image(2)
    boxes, masks = _two_far_apart()
    result = _result(boxes, [0, 1], [0.3, 0.9], masks)
    for kwargs in ({"score_threshold": 0.5}, {"top_k": 1}):
        out = draw_detections(image, result, CLASS_NAMES, **kwargs)
        # The 0.9 detection is drawn, the 0.3 one is not (pixels of its box and mask untouched).
        assert np.all(out[_outline(*boxes[1])] == colour_for_class(1))
        dropped = _outline(*boxes[0]) | masks[0]
        assert np.array_equal(out[dropped], image[dropped])
    both = draw_detections(image, result, CLASS_NAMES, score_threshold=0.3)
    assert np.all(both[_outline(*boxes[0])] == colour_for_class(0))
    nothing = draw_detections(image, result, CLASS_NAMES, score_threshold=0.95)
    assert np.array_equal(nothing, image)


def test_mask_score_is_the_displayed_score_when_masks_are_present():
    image = _random_image(3)
    boxes, masks = _two_far_apart()
    with_masks = _result(boxes, [0, 1], [0.9, 0.9], masks, mask_scores=[0.2, 0.9])
    out = draw_detections(image, with_masks, CLASS_NAMES, score_threshold=0.5)
    assert np.array_equal(out[_outline(*boxes[0])], image[_outline(*boxes[0])])
    boxes_only = {k: v for k, v in with_masks.items() if k not in ("masks", "mask_scores")}
    out = draw_detections(image, boxes_only, CLASS_NAMES, score_threshold=0.5)
    assert np.all(out[_outline(*boxes[0])] == colour_for_class(0))


def test_empty_result_returns_an_equal_copy():
    image = _random_image(4)
    empty = {"boxes": np.zeros((0, 4), np.int64), "classes": np.zeros(0, np.int64),
             "box_scores": np.zeros(0), "masks": np.zeros((0, HEIGHT, WIDTH), bool),
             "mask_scores": np.zeros(0)}
    out = draw_detections(image, empty, CLASS_NAMES)
    assert np.array_equal(out, image) and out is not image


def test_rejects_a_non_uint8_image():
    with pytest.raises(ValueError, match="uint8"):
        draw_detections(np.zeros((4, 4, 3), np.float32), _result([(0, 0, 2, 2)], [0], [1.0]), CLASS_NAMES)
