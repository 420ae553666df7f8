"""Box conversions, pairwise overlaps and mask cropping: numpy and MindSpore forms side by side.

Conventions: boxes are ``(x1, y1, x2, y2)`` and priors ``(cx, cy, w, h)``, both relative to
the image (0..1). The numpy functions serve the data pipeline and tests; the ``*_tensor``
forms use ``mindspore.ops`` only, run in graph mode and accept any leading (batch) dims.
Overlaps follow the authors' ``jaccard``: no +1 on widths, no epsilon, so a degenerate
pair gives 0/0 = nan exactly as theirs does.
"""
import mindspore as ms
import numpy as np
from mindspore import ops


def coordinate_columns(boxes):
    """[..., 4] -> four [...] views, one per coordinate.

    numpy runs elementwise ops over a length-2 innermost axis (``boxes[..., :2]``) ~10x
    slower than over whole coordinate columns, which matters at 57,744 priors per image.
    """
    return boxes[..., 0], boxes[..., 1], boxes[..., 2], boxes[..., 3]


def point_form(priors):
    """``(cx, cy, w, h)`` -> ``(x1, y1, x2, y2)``.

    Args:
        priors: [..., 4] float (cx, cy, w, h).

    Returns:
        [..., 4] same dtype (x1, y1, x2, y2).
    """
    cx, cy, w, h = coordinate_columns(priors)
    return np.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), axis=-1)


def center_size(boxes):
    """``(x1, y1, x2, y2)`` -> ``(cx, cy, w, h)``; the inverse of :func:`point_form`.

    Args:
        boxes: [..., 4] float (x1, y1, x2, y2).

    Returns:
        [..., 4] same dtype (cx, cy, w, h).
    """
    x1, y1, x2, y2 = coordinate_columns(boxes)
    return np.stack(((x2 + x1) / 2, (y2 + y1) / 2, x2 - x1, y2 - y1), axis=-1)


# Rows of the [N, M] result computed per chunk: ~64k float32 elements (256 KB) keep the working
# set in L2. At N = 20 GT x M = 57,744 priors, whole-matrix temporaries (4.6 MB each) were
# measured 2-5x slower, worse while other processes compete for the cache.
_CHUNK_ELEMENTS = 1 << 16


def _pairwise_overlap(boxes_a, boxes_b, over_union):
    """[N, 4] x [M, 4] (x1, y1, x2, y2) -> [N, M] intersection / union, or / area(boxes_b).

    The arithmetic follows the authors' ``jaccard`` exactly (clamped width x height, then
    ``inter / (area_a + area_b - inter)``) so float32 results agree bit for bit.
    """
    ax1, ay1, ax2, ay2 = (column[:, None] for column in coordinate_columns(boxes_a))   # [N, 1]
    bx1, by1, bx2, by2 = (np.ascontiguousarray(c) for c in coordinate_columns(boxes_b))  # [M]
    area_a = (ax2 - ax1) * (ay2 - ay1)                                       # [N, 1]
    area_b = (bx2 - bx1) * (by2 - by1)                                       # [M]
    num_a, num_b = len(boxes_a), len(boxes_b)
    out = np.empty((num_a, num_b), np.result_type(boxes_a, boxes_b))
    rows = max(1, min(num_a, _CHUNK_ELEMENTS // max(num_b, 1)))
    scratch = np.empty((rows, num_b), out.dtype)
    height_buffer = np.empty((rows, num_b), out.dtype)
    for start in range(0, num_a, rows):
        stop = min(start + rows, num_a)
        overlap, tmp, height = out[start:stop], scratch[:stop - start], height_buffer[:stop - start]
        np.minimum(ax2[start:stop], bx2, out=overlap)                        # width
        overlap -= np.maximum(ax1[start:stop], bx1, out=tmp)
        np.maximum(overlap, 0, out=overlap)
        np.minimum(ay2[start:stop], by2, out=height)
        height -= np.maximum(ay1[start:stop], by1, out=tmp)
        np.maximum(height, 0, out=height)
        overlap *= height                                                    # intersection
        if over_union:
            np.add(area_a[start:stop], area_b, out=tmp)
            tmp -= overlap
            overlap /= tmp
        else:
            overlap /= area_b
    return out


def pairwise_iou(boxes_a, boxes_b):
    """Intersection over union of every pair.

    Args:
        boxes_a: [N, 4] float (x1, y1, x2, y2).
        boxes_b: [M, 4] float (x1, y1, x2, y2), same dtype.

    Returns:
        [N, M] same dtype; entry (n, m) is IoU(boxes_a[n], boxes_b[m]).
    """
    return _pairwise_overlap(boxes_a, boxes_b, over_union=True)


def intersection_over_area(boxes_a, boxes_b):
    """Intersection of every pair divided by the area of the SECOND box (``boxes_b``).

    The crowd test of the matcher calls it as ``intersection_over_area(crowd_boxes, priors)``:
    the fraction of each prior covered by a crowd box (the authors' ``jaccard(priors, crowds,
    iscrowd=True)``, transposed).

    Args:
        boxes_a: [N, 4] float (x1, y1, x2, y2), e.g. crowd boxes.
        boxes_b: [M, 4] float (x1, y1, x2, y2), e.g. priors in point form; their areas divide.

    Returns:
        [N, M] same dtype; entry (n, m) is area(a_n ∩ b_m) / area(b_m).
    """
    return _pairwise_overlap(boxes_a, boxes_b, over_union=False)


def _crop_limits(low, high, size, padding):
    """Relative coordinates -> the kept pixel range [start, stop) on a grid of ``size``."""
    low, high = low * size, high * size
    start = np.maximum(np.minimum(low, high) - padding, 0)
    stop = np.minimum(np.maximum(low, high) + padding, size)
    return start, stop


def crop_masks(masks, boxes, padding=1):
    """Zero every pixel outside its box (the spec's Protonet crop rule), numpy form.

    On an H x W grid, column c is kept when ``max(min(x1, x2)·W − padding, 0) <= c <
    min(max(x1, x2)·W + padding, W)``, in real numbers (no rounding); rows likewise with H.

    Args:
        masks: [..., N, H, W] float.
        boxes: [..., N, 4] float (x1, y1, x2, y2), relative; may be unordered.
        padding: pixels added on each side.

    Returns:
        [..., N, H, W] same dtype as masks.
    """
    height, width = masks.shape[-2:]
    x_start, x_stop = _crop_limits(boxes[..., 0], boxes[..., 2], width, padding)   # [..., N]
    y_start, y_stop = _crop_limits(boxes[..., 1], boxes[..., 3], height, padding)
    cols = np.arange(width, dtype=x_start.dtype)
    rows = np.arange(height, dtype=y_start.dtype)
    keep_x = (cols >= x_start[..., None]) & (cols < x_stop[..., None])            # [..., N, W]
    keep_y = (rows >= y_start[..., None]) & (rows < y_stop[..., None])            # [..., N, H]
    keep = keep_y[..., :, None] & keep_x[..., None, :]                            # [..., N, H, W]
    return masks * keep.astype(masks.dtype)


def point_form_tensor(priors):
    """MindSpore form of :func:`point_form`: [..., 4] (cx, cy, w, h) -> (x1, y1, x2, y2)."""
    centres, sizes = ops.split(priors, 2, axis=-1)
    return ops.concat((centres - sizes / 2, centres + sizes / 2), axis=-1)


def center_size_tensor(boxes):
    """MindSpore form of :func:`center_size`: [..., 4] (x1, y1, x2, y2) -> (cx, cy, w, h)."""
    top_left, bottom_right = ops.split(boxes, 2, axis=-1)
    return ops.concat(((bottom_right + top_left) / 2, bottom_right - top_left), axis=-1)


def pairwise_iou_tensor(boxes_a, boxes_b):
    """MindSpore form of :func:`pairwise_iou`, batched (used by Fast NMS).

    Args:
        boxes_a: [B, N, 4] float32 (x1, y1, x2, y2); any leading dims shared with boxes_b.
        boxes_b: [B, M, 4] float32 (x1, y1, x2, y2).

    Returns:
        [B, N, M] float32 IoU.
    """
    num_a, num_b = boxes_a.shape[-2], boxes_b.shape[-2]
    # Expand both sides to [B, N, M] before the element-wise ops: MindSpore's CPU minimum /
    # maximum with implicit broadcasting ran ~10x slower than on equal shapes.
    shape_nm = boxes_a.shape[:-2] + (num_a, num_b)
    ax1, ay1, ax2, ay2 = [ops.broadcast_to(ops.expand_dims(c, -1), shape_nm)
                          for c in ops.unstack(boxes_a, axis=-1)]
    bx1, by1, bx2, by2 = [ops.broadcast_to(ops.expand_dims(c, -2), shape_nm)
                          for c in ops.unstack(boxes_b, axis=-1)]
    width = ops.relu(ops.minimum(ax2, bx2) - ops.maximum(ax1, bx1))                    # [B, N, M]
    height = ops.relu(ops.minimum(ay2, by2) - ops.maximum(ay1, by1))
    inter = width * height
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    return inter / union


def _crop_limits_tensor(low, high, size, padding):
    """MindSpore form of :func:`_crop_limits`."""
    low, high = low * size, high * size
    start = ops.maximum(ops.minimum(low, high) - padding, 0.0)
    stop = ops.minimum(ops.maximum(low, high) + padding, float(size))
    return start, stop


def crop_masks_tensor(masks, boxes, padding=1):
    """MindSpore form of :func:`crop_masks` (same rule, graph mode).

    Args:
        masks: [B, N, H, W] float32 (any leading dims).
        boxes: [B, N, 4] float32 (x1, y1, x2, y2), relative; may be unordered.
        padding: pixels added on each side.

    Returns:
        [B, N, H, W] float32, zero outside each padded box.
    """
    height, width = masks.shape[-2], masks.shape[-1]
    lead = masks.shape[:-2]
    x1, y1, x2, y2 = ops.unstack(boxes, axis=-1)                                   # [B, N]
    x_start, x_stop = _crop_limits_tensor(x1, x2, width, padding)
    y_start, y_stop = _crop_limits_tensor(y1, y2, height, padding)
    cols = ops.arange(width, dtype=ms.float32)                                     # [W]
    rows = ops.arange(height, dtype=ms.float32)                                    # [H]
    keep_x = ops.logical_and(cols >= ops.expand_dims(x_start, -1),
                             cols < ops.expand_dims(x_stop, -1))                   # [B, N, W]
    keep_y = ops.logical_and(rows >= ops.expand_dims(y_start, -1),
                             rows < ops.expand_dims(y_stop, -1))                   # [B, N, H]
    # The [H, W] keep mask of each box is the outer product of its row and column masks;
    # a batched matmul builds it ~3x faster on CPU than broadcasting logical_and.
    count = 1
    for dim in lead:
        count *= dim
    keep = ops.BatchMatMul()(ops.cast(keep_y, masks.dtype).reshape(count, height, 1),
                             ops.cast(keep_x, masks.dtype).reshape(count, 1, width))
    return masks * keep.reshape(masks.shape)
