"""Instance masks from detections: assembly, mask re-scoring, and the host-side final step.

In the graph (MindSpore): prototypes x coefficients -> sigmoid -> crop to the detection's
box on the prototype grid (S = 138 at max_size 550), then the YOLACT++ mask score. On the
host (numpy / OpenCV): masks resized to the original image and binarised, boxes turned into
integer pixel corners — the authors' ``postprocess`` in ``layers/output_utils.py``.
"""
import cv2
import numpy as np
from mindspore import nn, ops

from src.box.ops import crop_masks_tensor

# OpenCV's resize accepts at most this many channels (CV_CN_MAX).
_MAX_RESIZE_CHANNELS = 512


def assemble_masks_tensor(proto, coeffs, boxes):
    """Soft instance masks ``sigmoid(proto @ coeff)`` cropped to their boxes (padding 1).

    Args:
        proto: [B, S, S, K] float32 prototypes (rows, columns, prototype).
        coeffs: [B, D, K] float32 mask coefficients of the detections.
        boxes: [B, D, 4] float32 (x1, y1, x2, y2), relative, unclamped (may be unordered).

    Returns:
        [B, D, S, S] float32 in [0, 1], zero outside each box (the spec's crop rule).
    """
    batch, height, width, num_protos = proto.shape
    num_dets = coeffs.shape[1]
    proto_flat = proto.reshape(batch, height * width, num_protos)
    # [B, D, K] x [B, S*S, K]^T -> [B, D, S*S]: already detection-major, no transpose.
    logits = ops.BatchMatMul(transpose_b=True)(coeffs, proto_flat)
    masks = ops.sigmoid(logits).reshape(batch, num_dets, height, width)
    return crop_masks_tensor(masks, boxes, padding=1)


class MaskRescoring(nn.Cell):
    """YOLACT++ mask score: box score x the maskiou net's prediction for the detection's class.

    Args:
        maskiou_net: a Cell mapping [N, 1, S, S] soft masks to [N, C - 1] predicted IoUs
            (``src.model.maskiou_net.MaskIoUNet``).

    Inputs:
        masks: [B, D, S, S] float32 cropped soft masks (``assemble_masks_tensor``).
        classes: [B, D] int32 0-based foreground class.
        scores: [B, D] float32 box scores.

    Returns:
        [B, D] float32 mask scores ``scores * maskiou[class]`` (not clamped, as the authors).
    """

    def __init__(self, maskiou_net):
        super().__init__()
        self.maskiou_net = maskiou_net

    def construct(self, masks, classes, scores):
        batch, num_dets, height, width = masks.shape
        per_class = self.maskiou_net(masks.reshape(batch * num_dets, 1, height, width))   # [B*D, C-1]
        maskiou = ops.gather_elements(per_class, 1, classes.reshape(batch * num_dets, 1))
        return scores * maskiou.reshape(batch, num_dets)


def resize_masks(masks, height, width):
    """Bilinear resize of soft masks to the image (``align_corners=False``, no antialias).

    OpenCV's INTER_LINEAR uses the same source coordinates as PyTorch's bilinear
    ``interpolate(align_corners=False)`` that the authors call, for shrinking too.

    Args:
        masks: [D, S, S] float32 soft masks.
        height, width: output size in pixels.

    Returns:
        [D, height, width] float32.
    """
    masks = np.asarray(masks, np.float32)
    out = np.empty((masks.shape[0], height, width), np.float32)
    for start in range(0, masks.shape[0], _MAX_RESIZE_CHANNELS):
        chunk = masks[start:start + _MAX_RESIZE_CHANNELS].transpose(1, 2, 0)           # [S, S, n]
        resized = cv2.resize(chunk, (width, height), interpolation=cv2.INTER_LINEAR)
        out[start:start + chunk.shape[2]] = resized.reshape(height, width, -1).transpose(2, 0, 1)
    return out


def masks_to_image(masks, height, width, threshold=0.5):
    """Soft masks on the prototype grid -> binary masks of the original image.

    Args:
        masks: [D, S, S] float32 cropped soft masks.
        height, width: original image size in pixels.
        threshold: a pixel is foreground when its resized value is strictly above.

    Returns:
        [D, height, width] bool.
    """
    return resize_masks(masks, height, width) > threshold


def _sanitize_interval(low, high, size):
    """The authors' ``sanitize_coordinates(cast=False)``: scale, order, clamp the outer ends.

    Only the lower end is clamped at 0 and only the upper end at ``size``, so a box lying
    wholly outside the image keeps an empty or inverted interval (zero or negative area).
    Arithmetic in float32, as theirs.
    """
    low, high = low * np.float32(size), high * np.float32(size)
    start = np.maximum(np.minimum(low, high), np.float32(0))
    stop = np.minimum(np.maximum(low, high), np.float32(size))
    return start, stop


def boxes_to_image(boxes, width, height):
    """Relative boxes -> integer pixel corners of the original image.

    Args:
        boxes: [D, 4] float32 (x1, y1, x2, y2), relative, unclamped, possibly unordered.
        width, height: original image size in pixels.

    Returns:
        [D, 4] int64 (x1, y1, x2, y2) absolute pixels: ends ordered, x1 >= 0 and x2 <= width
        (y likewise), truncated toward zero (PyTorch ``.long()``).
    """
    boxes = np.asarray(boxes, np.float32)
    x1, x2 = _sanitize_interval(boxes[:, 0], boxes[:, 2], width)
    y1, y2 = _sanitize_interval(boxes[:, 1], boxes[:, 3], height)
    return np.stack((x1, y1, x2, y2), axis=1).astype(np.int64)
