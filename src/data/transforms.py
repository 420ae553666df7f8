"""Per-sample numpy transforms: train augmentation, eval preprocessing, mask targets.

Conventions while augmenting: image [H, W, 3] float32 BGR 0-255 (never clipped), masks
[G, H, W] uint8 0/1, boxes_abs [G, 4] float32 (x1, y1, x2, y2) in pixels, labels [G] int
0-based classes, is_crowd [G] bool. Randomness comes only from the `rng` argument.
"""
from typing import NamedTuple, Optional

import cv2
import numpy as np

MEAN_BGR = np.array((103.94, 116.78, 123.68), dtype=np.float32)
STD_BGR = np.array((57.38, 57.12, 58.40), dtype=np.float32)
# The authors' threshold is relative (4/550, the same for every max_size) but they compare it
# with box sizes in pixels after the resize, so in effect only degenerate boxes are dropped.
# We keep their behaviour: it produced the published numbers.
DISCARD_BOX_SIZE = 4 / 550
# OpenCV resizes at most CV_CN_MAX channels per call.
_CV_MAX_CHANNELS = 512


class TrainSample(NamedTuple):
    """One augmented training sample.

    image: [3, S, S] float32 normalised RGB.
    masks: [G', S, S] uint8 0/1.
    boxes: [G', 4] float32 (x1, y1, x2, y2), relative to the S x S image.
    labels: [G'] int 0-based classes.
    is_crowd: [G'] bool.
    """
    image: np.ndarray
    masks: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    is_crowd: np.ndarray


def _coin(rng):
    """True with probability 1/2."""
    return bool(rng.integers(2))


def _random_contrast(image, rng):
    if _coin(rng):
        image *= rng.uniform(0.5, 1.5)
    return image


def _random_saturation_hue(image, rng):
    """BGR -> HSV (float32: H in [0, 360]), saturation x U(0.5, 1.5), hue + U(-18, 18), -> BGR."""
    hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
    if _coin(rng):
        hsv[:, :, 1] *= rng.uniform(0.5, 1.5)
    if _coin(rng):
        hue = hsv[:, :, 0]
        hue += rng.uniform(-18.0, 18.0)
        # The spec's wrap; OpenCV's HSV -> BGR wraps the hue as well, so the output agrees
        # either way.
        hue[hue > 360.0] -= 360.0
        hue[hue < 0.0] += 360.0
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


def photometric_distort(image, rng):
    """Brightness, then contrast before or after the HSV changes (each step with p 1/2).

    image: [H, W, 3] float32 BGR. Returns a new [H, W, 3] float32 BGR array (no clipping;
    the HSV round trip always happens, as in the authors' code).
    """
    image = np.array(image, dtype=np.float32, copy=True)
    if _coin(rng):
        image += rng.uniform(-32.0, 32.0)
    contrast_first = _coin(rng)
    if contrast_first:
        image = _random_contrast(image, rng)
    image = _random_saturation_hue(image, rng)
    if not contrast_first:
        image = _random_contrast(image, rng)
    return image


def expand(image, masks, boxes_abs, rng, mean=MEAN_BGR):
    """With p 1/2 paste the image into a mean-filled canvas int(H r) x int(W r), r ~ U(1, 4).

    The offset is (int(U(0, W r - W)), int(U(0, H r - H))); masks are zero-padded and boxes
    shifted by it. Returns (image, masks, boxes_abs).
    """
    if _coin(rng):
        return image, masks, boxes_abs
    height, width = image.shape[:2]
    ratio = rng.uniform(1.0, 4.0)
    left = rng.uniform(0.0, width * ratio - width)
    top = rng.uniform(0.0, height * ratio - height)
    canvas_h, canvas_w = int(height * ratio), int(width * ratio)
    # Guards the float edge case where int(offset + size) would pass the canvas.
    x0 = min(int(left), canvas_w - width)
    y0 = min(int(top), canvas_h - height)

    canvas = np.empty((canvas_h, canvas_w, image.shape[2]), dtype=np.float32)
    canvas[:] = mean
    canvas[y0:y0 + height, x0:x0 + width] = image
    canvas_masks = np.zeros((masks.shape[0], canvas_h, canvas_w), dtype=masks.dtype)
    canvas_masks[:, y0:y0 + height, x0:x0 + width] = masks
    shifted = boxes_abs + np.array([x0, y0, x0, y0], dtype=boxes_abs.dtype)
    return canvas, canvas_masks, shifted


def _crop_offset(rng, full, crop):
    """The authors call numpy's uniform(full - crop), whose high defaults to 1.0: the offset is
    uniform between 1 and full - crop (not 0 and full - crop). Kept for fidelity."""
    low = full - crop
    return low + (1.0 - low) * rng.random()


def random_sample_crop(image, masks, boxes_abs, labels, is_crowd, rng):
    """The SSD crop as it behaves in the authors' code (its min-IoU test never rejects).

    Repeat: with p 1/6 return the sample uncropped; else up to 50 trials of w ~ U(0.3 W, W),
    h ~ U(0.3 H, H) (rejected unless 0.5 <= h/w <= 2), offset per `_crop_offset`, integer
    corners; a trial succeeds when the GTs whose box centre is strictly inside the crop
    (crowds included) contain a non-crowd one. Kept boxes are clipped to the crop.
    Returns (image, masks, boxes_abs, labels, is_crowd).
    """
    uncropped = (image, masks, boxes_abs, labels, is_crowd)
    if is_crowd.all():
        # No trial can succeed; the authors' loop ends only by drawing "no crop".
        return uncropped
    height, width = image.shape[:2]
    centres = (boxes_abs[:, :2] + boxes_abs[:, 2:]) / 2.0
    while True:
        if rng.integers(6) == 0:
            return uncropped
        for _ in range(50):
            w = rng.uniform(0.3 * width, width)
            h = rng.uniform(0.3 * height, height)
            if h / w < 0.5 or h / w > 2.0:
                continue
            left = _crop_offset(rng, width, w)
            top = _crop_offset(rng, height, h)
            x1, y1, x2, y2 = int(left), int(top), int(left + w), int(top + h)
            keep = ((centres[:, 0] > x1) & (centres[:, 0] < x2)
                    & (centres[:, 1] > y1) & (centres[:, 1] < y2))
            if not (keep & ~is_crowd).any():
                continue
            corner = np.array([x1, y1, x1, y1], dtype=boxes_abs.dtype)
            clipped = np.clip(boxes_abs[keep], corner, np.array([x2, y2, x2, y2], boxes_abs.dtype))
            return (image[y1:y2, x1:x2], masks[keep][:, y1:y2, x1:x2], clipped - corner,
                    labels[keep], is_crowd[keep])


def random_mirror(image, masks, boxes_abs, rng):
    """With p 1/2 flip left-right: x1' = W - x2, x2' = W - x1. Returns (image, masks, boxes_abs)."""
    if not _coin(rng):
        return image, masks, boxes_abs
    width = image.shape[1]
    flipped = boxes_abs.copy()
    flipped[:, 0] = width - boxes_abs[:, 2]
    flipped[:, 2] = width - boxes_abs[:, 0]
    return (np.ascontiguousarray(image[:, ::-1]), np.ascontiguousarray(masks[:, :, ::-1]),
            flipped)


def resize_masks(masks, size):
    """[G, H, W] uint8 0/1 -> [G, size, size] uint8 0/1 by cv2 INTER_LINEAR.

    OpenCV's fixed-point uint8 path keeps the result exactly 0/1, as in the authors' code. It is
    not a clean "bilinear > 0.5": its 8-bit vertical pass truncates, so with 0/1 inputs some
    values up to ~0.75 come out 0 (measured with OpenCV 4.11), and edges shift inward by up
    to a quarter of a source pixel.
    """
    out = np.empty((masks.shape[0], size, size), dtype=np.uint8)
    for start in range(0, masks.shape[0], _CV_MAX_CHANNELS):
        chunk = np.ascontiguousarray(masks[start:start + _CV_MAX_CHANNELS].transpose(1, 2, 0))
        resized = cv2.resize(chunk, (size, size), interpolation=cv2.INTER_LINEAR)
        out[start:start + chunk.shape[2]] = resized.reshape(size, size, -1).transpose(2, 0, 1)
    return out


def resize_sample(image, masks, boxes_abs, labels, is_crowd, max_size,
                  discard_box_size=DISCARD_BOX_SIZE):
    """Resize to max_size x max_size (aspect not kept), scale boxes, drop degenerate boxes.

    A box is kept when its width and height in pixels exceed `discard_box_size` (see
    DISCARD_BOX_SIZE). Returns (image [S, S, 3], masks [G', S, S], boxes_abs at S, labels,
    is_crowd).
    """
    height, width = image.shape[:2]
    image = cv2.resize(image, (max_size, max_size), interpolation=cv2.INTER_LINEAR)
    masks = resize_masks(masks, max_size)
    scale = np.array([max_size / width, max_size / height] * 2, dtype=np.float32)
    boxes_abs = (boxes_abs * scale).astype(np.float32)
    sizes = boxes_abs[:, 2:] - boxes_abs[:, :2]
    keep = (sizes[:, 0] > discard_box_size) & (sizes[:, 1] > discard_box_size)
    return image, masks[keep], boxes_abs[keep], labels[keep], is_crowd[keep]


def normalize_image(image):
    """[H, W, 3] float32 BGR 0-255 -> [3, H, W] float32 (x - mean) / std, in RGB order.

    Each output plane is computed in place from its input channel, in float32: the same
    operations as on the whole image, without the temporaries and the transposing copy
    (15x faster at 550 px, which matters on evaluation's host side).
    """
    height, width = image.shape[:2]
    planes = np.empty((3, height, width), np.float32)
    for plane, channel in zip(planes, (2, 1, 0)):
        np.subtract(image[:, :, channel], MEAN_BGR[channel], out=plane, dtype=np.float32)
        np.divide(plane, STD_BGR[channel], out=plane)
    return planes


def eval_transform(image, max_size):
    """The authors' BaseTransform: float32, cv2 INTER_LINEAR to max_size^2, normalise, RGB.

    image: [H, W, 3] uint8 or float BGR. Returns [3, max_size, max_size] float32.
    """
    resized = cv2.resize(image.astype(np.float32), (max_size, max_size),
                         interpolation=cv2.INTER_LINEAR)
    return normalize_image(resized)



def train_transform(image, masks, boxes_abs, labels, is_crowd, max_size, rng,
                    discard_box_size=DISCARD_BOX_SIZE, augmentation="ssd") -> Optional[TrainSample]:
    """The authors' SSDAugmentation: photometric, expand, crop, mirror, resize, normalise.

    image: [H, W, 3] uint8 or float BGR; masks: [G, H, W] uint8 0/1; boxes_abs: [G, 4]
    (x1, y1, x2, y2) pixels; labels: [G] int; is_crowd: [G] bool.
    augmentation: "ssd", the authors' whole chain, or "light": photometric and mirror only,
    no expand and crop (for schedules of a few thousand iterations, where the zoom-out and
    crops slow learning more than they help).
    Returns a TrainSample, or None when no non-crowd box survives (sample another image).
    """
    image = photometric_distort(image, rng)
    masks = np.asarray(masks, dtype=np.uint8)
    boxes_abs = np.asarray(boxes_abs, dtype=np.float32)
    labels = np.asarray(labels)
    is_crowd = np.asarray(is_crowd, dtype=bool)
    if augmentation == "ssd":
        image, masks, boxes_abs = expand(image, masks, boxes_abs, rng)
        image, masks, boxes_abs, labels, is_crowd = random_sample_crop(
            image, masks, boxes_abs, labels, is_crowd, rng)
    image, masks, boxes_abs = random_mirror(image, masks, boxes_abs, rng)
    image, masks, boxes_abs, labels, is_crowd = resize_sample(
        image, masks, boxes_abs, labels, is_crowd, max_size, discard_box_size)
    if is_crowd.all():
        return None
    return TrainSample(normalize_image(image), masks, boxes_abs / np.float32(max_size),
                       labels, is_crowd)


def _linear_taps(in_size, out_size):
    """Source indices and weights of bilinear resampling, align_corners=False, no antialias.

    Float32 arithmetic in PyTorch's order (scale = in/out, src = max(scale (i + .5) - .5, 0)).
    Returns (i0, i1, w0, w1), each [out_size].
    """
    scale = np.float32(in_size) / np.float32(out_size)
    centres = np.arange(out_size, dtype=np.float32) + np.float32(0.5)
    # PyTorch's CPU build fuses scale * centre - 0.5 into one FMA (a single rounding); the
    # float64 product of two float32 values is exact, so rounding once to float32 matches it.
    src = (np.float64(scale) * centres.astype(np.float64) - 0.5).astype(np.float32)
    src = np.maximum(src, np.float32(0.0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    w1 = np.clip(src - i0.astype(np.float32), np.float32(0.0), np.float32(1.0))
    i1 = np.minimum(i0 + 1, in_size - 1)
    return i0, i1, np.float32(1.0) - w1, w1


def downsample_masks(masks, size):
    """[G, H, W] uint8 0/1 -> [G, size, size] float32, torch F.interpolate bilinear semantics.

    Two-tap interpolation with half-pixel centres, along x then along y (PyTorch's order), no
    antialias. Used for the 138^2 GT masks and the semantic target (then > 0.5).
    """
    x0, x1, wx0, wx1 = _linear_taps(masks.shape[2], size)
    y0, y1, wy0, wy1 = _linear_taps(masks.shape[1], size)
    along_x = masks[:, :, x0] * wx0 + masks[:, :, x1] * wx1                       # [G, H, size]
    return along_x[:, y0, :] * wy0[:, None] + along_x[:, y1, :] * wy1[:, None]    # [G, size, size]


def semantic_target(masks, labels, is_crowd, num_fg_classes, size):
    """Semantic-head target: per class, the max over its non-crowd masks downsampled > 0.5.

    masks: [G, S, S] uint8 0/1 at the network input size; labels: [G] 0-based classes;
    is_crowd: [G] bool. Returns [num_fg_classes, size, size] float32 0/1.
    """
    target = np.zeros((num_fg_classes, size, size), dtype=np.float32)
    solid = ~np.asarray(is_crowd, dtype=bool)
    if not solid.any():
        return target
    binary = downsample_masks(masks[solid], size) > 0.5
    solid_labels = np.asarray(labels)[solid]
    for label in np.unique(solid_labels):
        target[label] = binary[solid_labels == label].any(axis=0)
    return target
