"""Drawing detections on an image: per-class coloured masks, boxes and "class: score" labels.

Used by eval.py for --image / --images / --video output. Works on OpenCV BGR uint8 images and
the detector's per-image result (see ``src.evaluation.coco_eval``): int boxes (x1, y1, x2, y2)
in image pixels, 0-based classes, scores, optional [D, H, W] bool masks.
"""
import colorsys

import cv2
import numpy as np

_FONT = cv2.FONT_HERSHEY_DUPLEX
_FONT_SCALE = 0.6
_FONT_THICKNESS = 1
_TEXT_COLOUR = (255, 255, 255)
# Successive multiples of the golden ratio spread hues evenly for any number of classes.
_GOLDEN_RATIO_CONJUGATE = 0.618033988749895
_SATURATION = 0.75
_VALUE = 0.95


def colour_for_class(label):
    """BGR colour of a 0-based class label: a fixed function of the label, tuple of 3 ints 0..255."""
    hue = (int(label) * _GOLDEN_RATIO_CONJUGATE) % 1.0
    red, green, blue = colorsys.hsv_to_rgb(hue, _SATURATION, _VALUE)
    return tuple(int(round(channel * 255)) for channel in (blue, green, red))


def _display_scores(result):
    """The score shown and filtered on: the mask score when masks are drawn (the authors' display
    rescores boxes with the mask IoU on YOLACT++), the box score otherwise."""
    if result.get("masks") is not None and result.get("mask_scores") is not None:
        return np.asarray(result["mask_scores"], np.float64).reshape(-1)
    return np.asarray(result["box_scores"], np.float64).reshape(-1)


def _blend_masks(image, masks, classes, order, alpha):
    """Blends each mask toward its class colour: ``pixel ← (1 − alpha)·pixel + alpha·colour``,
    in ``order`` (later masks land on top), rounding once at the end."""
    canvas = image.astype(np.float32)
    for index in order:
        inside = masks[index]
        colour = np.asarray(colour_for_class(classes[index]), np.float32)
        canvas[inside] = canvas[inside] * (1.0 - alpha) + colour * alpha
    return np.clip(np.floor(canvas + 0.5), 0, 255).astype(np.uint8)


def _draw_label(image, x1, y1, text, colour):
    """Filled label of ``colour`` with white text, above the box's top-left corner, or just inside
    the box when there is no room above it."""
    (text_w, text_h), baseline = cv2.getTextSize(text, _FONT, _FONT_SCALE, _FONT_THICKNESS)
    label_h = text_h + baseline + 2
    top = y1 - label_h if y1 >= label_h else y1
    cv2.rectangle(image, (x1, top), (x1 + text_w + 2, top + label_h), colour, cv2.FILLED)
    cv2.putText(image, text, (x1 + 1, top + text_h + 1), _FONT, _FONT_SCALE, _TEXT_COLOUR,
                _FONT_THICKNESS, cv2.LINE_AA)


def draw_detections(image_bgr, result, class_names, score_threshold=0.0, top_k=None, alpha=0.45):
    """Draws detections on a copy of the image; the input is left untouched.

    Args:
        image_bgr: [H, W, 3] uint8, BGR.
        result: dict with "boxes" [D, 4] int (x1, y1, x2, y2) pixels, x2 / y2 exclusive;
            "classes" [D] int 0-based; "box_scores" [D]; optional "masks" [D, H, W] bool and
            "mask_scores" [D]. The displayed score is the mask score when masks are present.
        class_names: sequence, 0-based label -> name.
        score_threshold: detections with a displayed score below it are not drawn.
        top_k: draw at most this many (highest scores first); None draws all.
        alpha: mask opacity, 0..1.
    Returns:
        [H, W, 3] uint8 BGR image: masks blended first, then a 1-px box outline on the box's
        outermost pixels and a "name: 0.87" label, each in the class colour; detections are
        drawn from the lowest to the highest score, so the highest ends on top.
    """
    image = np.asarray(image_bgr)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an [H, W, 3] uint8 BGR image, got {image.dtype} {image.shape}")
    boxes = np.asarray(result["boxes"]).reshape(-1, 4).astype(np.int64)
    classes = np.asarray(result["classes"]).reshape(-1).astype(np.int64)
    scores = _display_scores(result)
    masks = result.get("masks")

    ranked = np.argsort(-scores, kind="stable")
    ranked = ranked[scores[ranked] >= score_threshold]
    if top_k is not None:
        ranked = ranked[:top_k]
    bottom_to_top = ranked[::-1]

    if masks is not None and len(bottom_to_top):
        masks = np.asarray(masks, bool)
        if masks.shape[1:] != image.shape[:2]:
            raise ValueError(f"masks {masks.shape} do not match the image {image.shape}")
        canvas = _blend_masks(image, masks, classes, bottom_to_top, alpha)
    else:
        canvas = image.copy()

    for index in bottom_to_top:
        x1, y1, x2, y2 = (int(v) for v in boxes[index])
        colour = colour_for_class(classes[index])
        cv2.rectangle(canvas, (x1, y1), (max(x2 - 1, x1), max(y2 - 1, y1)), colour, 1)
        _draw_label(canvas, x1, y1, f"{class_names[classes[index]]}: {scores[index]:.2f}", colour)
    return canvas
