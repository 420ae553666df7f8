"""Instance masks from detections: assembly, mask re-scoring, and the host-side final step.

In the graph (MindSpore): prototypes x coefficients -> sigmoid -> crop to the detection's
box on the prototype grid (S = 138 at max_size 550), then the YOLACT++ mask score. On the
host (numpy / OpenCV): masks resized to the original image and binarised, boxes turned into
integer pixel corners — the authors' ``postprocess`` in ``layers/output_utils.py``.
"""
import cv2
import numpy as np
from mindspore import nn, ops
from pycocotools import mask as mask_utils

from src.box.ops import crop_masks_tensor

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


def _linear_taps(out_size, in_size, clamp_weights):
    """OpenCV's INTER_LINEAR taps along one axis (its float path, with its roundings).

    The source coordinate of output pixel ``d`` is ``float32((d + 0.5) * scale - 0.5)`` with
    ``scale = 1 / (out_size / in_size)`` in float64 (PyTorch's ``align_corners=False``);
    its floor and fraction give the two taps. OpenCV clamps the columns differently from the
    rows: a column left of the first or right of the last source column copies that column
    (weights 1, 0), while a row outside only has its indices clipped, keeping both weights.

    Returns:
        (low [out], high [out]) int64 source indices, (w_low [out], w_high [out]) float32.
    """
    scale = 1.0 / (out_size / in_size)
    coords = ((np.arange(out_size) + 0.5) * scale - 0.5).astype(np.float32)
    low = np.floor(coords).astype(np.int64)
    w_high = coords - low.astype(np.float32)
    if clamp_weights:
        outside = (low < 0) | (low >= in_size - 1)
        w_high[outside] = 0
    high = np.clip(low + 1, 0, in_size - 1)
    low = np.clip(low, 0, in_size - 1)
    return low, high, np.float32(1) - w_high, w_high


class MaskWindows:
    """Binary instance masks of one image, each stored only inside its window.

    A cropped soft mask is zero outside its box, so its upsampled mask is False outside the
    output pixels whose source taps reach a non-zero cell (``mask_windows``). The windows
    are kept column by column (column-major, the order of COCO RLE runs) in one flat bool
    buffer, each window column framed by a False above and below: the runs of every mask
    then come from one comparison of neighbours over the buffer.

    Attributes:
        height, width: image size in pixels.
        corners: [D, 4] int64 (x1, y1, x2, y2) absolute pixels of each window, ends
            exclusive; an empty mask has an empty window (x2 == x1 or y2 == y1).
        buffer: flat bool, window ``i`` at ``offsets[i]:offsets[i + 1]`` as
            [x2 - x1, y2 - y1 + 2] (image columns x rows with the two guard rows).
        offsets: [D + 1] int64.
    """

    def __init__(self, height, width, corners):
        """An all-False set of masks with these windows; fill them through ``columns``."""
        self.height, self.width = int(height), int(width)
        self.corners = np.asarray(corners, np.int64).reshape(-1, 4)
        self._rows = self.corners[:, 3] - self.corners[:, 1]
        self._cols = self.corners[:, 2] - self.corners[:, 0]
        sizes = np.where(self._rows > 0, self._cols * (self._rows + 2), 0)
        self.offsets = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
        self.buffer = np.zeros(int(self.offsets[-1]), bool)

    def __len__(self):
        return len(self.corners)

    def columns(self, index):
        """Writable [x2 - x1, y2 - y1] bool view of window ``index``: image columns x rows."""
        rows, cols = int(self._rows[index]), int(self._cols[index])
        block = self.buffer[self.offsets[index]:self.offsets[index + 1]]
        return block.reshape(cols, rows + 2)[:, 1:-1] if rows > 0 else np.zeros((cols, 0), bool)

    def window(self, index):
        """[y2 - y1, x2 - x1] bool view of mask ``index`` inside its window."""
        return self.columns(index).T

    @classmethod
    def from_dense(cls, masks):
        """[D, H, W] bool (or 0/1) masks -> MaskWindows with the tight box of each mask."""
        masks = np.asarray(masks, bool)
        count, height, width = masks.shape
        y1, y2 = _true_spans(masks.any(2))
        x1, x2 = _true_spans(masks.any(1))
        windows = cls(height, width, np.stack((x1, y1, x2, y2), axis=1))
        for index, mask in enumerate(masks):
            windows.columns(index)[...] = mask[y1[index]:y2[index], x1[index]:x2[index]].T
        return windows

    def to_dense(self):
        """[D, height, width] bool full-image masks."""
        dense = np.zeros((len(self), self.height, self.width), bool)
        for index, (x1, y1, x2, y2) in enumerate(self.corners):
            dense[index, y1:y2, x1:x2] = self.window(index)
        return dense

    def rle_counts(self):
        """The uncompressed COCO RLE of each mask, from the windows alone.

        Returns:
            list of D int64 arrays: run lengths over the image in column-major order (the
            first run counts zeros), as pycocotools ``mask.encode`` of the dense mask has.
        """
        total = self.height * self.width
        # First element of every run in the buffer: the guards make each one a change
        # inside a window column.
        change = np.flatnonzero(self.buffer[1:] != self.buffer[:-1]) + 1
        owner = np.searchsorted(self.offsets, change, side="right") - 1
        col, row = np.divmod(change - self.offsets[owner], self._rows[owner] + 2)
        starts = (self.corners[owner, 0] + col) * self.height + self.corners[owner, 1] + row - 1
        # A run leaving the bottom of a full-height column and one entering the top of the
        # next are one run of the column-major image: drop both ends.
        # A run reaching the last pixel ends with the image, not with a run of 0 zeros.
        joined = np.flatnonzero((starts[1:] == starts[:-1]) & (owner[1:] == owner[:-1]))
        keep = starts < total
        keep[joined] = keep[joined + 1] = False
        starts, owner = starts[keep], owner[keep]
        # Mask i's runs: its starts' differences from 0, then the rest of the image; laid
        # out one mask after the other (each has one run more than starts).
        count = len(self)
        group = np.searchsorted(owner, np.arange(count + 1))           # [D + 1] into starts
        previous = np.concatenate(([0], starts))[:-1]
        previous[group[:-1][group[:-1] < group[1:]]] = 0
        runs = np.empty(len(starts) + count, np.int64)
        runs[np.arange(len(starts)) + owner] = starts - previous
        last_start = np.where(group[1:] > group[:-1], np.append(starts, 0)[group[1:] - 1], 0)
        ends = group[1:] + np.arange(count)
        runs[ends] = total - last_start
        return np.split(runs, ends[:-1] + 1)

    def to_rle(self):
        """Compressed COCO RLEs ``{"size": [height, width], "counts": bytes}``, one per mask,
        equal to pycocotools ``mask.encode`` of the dense masks."""
        if not len(self):
            return []
        size = [self.height, self.width]
        return mask_utils.frPyObjects(
            [{"size": size, "counts": counts} for counts in self.rle_counts()],
            self.height, self.width)


def _true_spans(flags):
    """[D, N] bool -> (first, last + 1) [D] int64 of each row's True entries; (0, 0) for a
    row without any."""
    found = flags.any(1)
    size = flags.shape[1]
    first = np.where(found, np.argmax(flags, 1), 0)
    stop = np.where(found, size - np.argmax(flags[:, ::-1], 1), 0)
    return first.astype(np.int64), stop.astype(np.int64)


def mask_windows(masks, height, width, threshold=0.5):
    """Soft masks on the prototype grid -> binary masks of the original image, as windows.

    Each output pixel is computed as OpenCV's ``cv2.resize(INTER_LINEAR)`` of float32 masks
    computes it on its generic path, bit for bit (horizontal pass, then vertical, each
    product and sum rounded to float32; for an exact halving of both sides, where OpenCV
    switches to its 2x2 area average, that average), then compared with ``threshold``. The
    coordinates are PyTorch's bilinear ``align_corners=False`` that the authors use. Only
    the window whose taps reach a non-zero source cell is computed: outside it every tap is
    zero, so the resized value is 0, never above a threshold >= 0.

    The generic path is the one OpenCV runs on 2 or 5 and more channels; on 1, 3 or 4 it
    runs Intel IPP or other SIMD kernels whose roundings differ by up to ~1e-5, so resizing
    the stack of masks at once made a mask's pixels depend on the number of detections of
    its image. Here every mask gets the generic path.

    Args:
        masks: [D, S, S] float32 cropped soft masks (zero outside their boxes).
        height, width: original image size in pixels.
        threshold: >= 0; a pixel is foreground when its resized value is strictly above.

    Returns:
        MaskWindows of D masks.
    """
    if threshold < 0:
        raise ValueError(f"mask threshold {threshold}: expected >= 0 (zero pixels would be set)")
    masks = np.asarray(masks, np.float32)
    src_height, src_width = masks.shape[1:]
    halving = 2 * height == src_height and 2 * width == src_width
    if halving:
        x_low, y_low = 2 * np.arange(width), 2 * np.arange(height)
        x_high, y_high = x_low + 1, y_low + 1
    else:
        x_low, x_high, x_w0, x_w1 = _linear_taps(width, src_width, clamp_weights=True)
        y_low, y_high, y_w0, y_w1 = _linear_taps(height, src_height, clamp_weights=False)
        y_w0, y_w1 = y_w0[:, None], y_w1[:, None]
    # Non-zero source cells -> output pixels with a tap on one of them.
    nonzero = masks != 0
    r1, r2 = _true_spans(nonzero.any(2))
    c1, c2 = _true_spans(nonzero.any(1))
    found = r2 > 0
    x1, x2 = np.searchsorted(x_high, c1), np.searchsorted(x_low, c2 - 1, side="right")
    y1, y2 = np.searchsorted(y_high, r1), np.searchsorted(y_low, r2 - 1, side="right")
    corners = np.where(found[:, None], np.stack((x1, y1, x2, y2), axis=1), 0)
    windows = MaskWindows(height, width, corners)
    todo = np.flatnonzero(found & (x2 > x1) & (y2 > y1))
    # Work arrays reused by every window: fresh large arrays would cost their page faults
    # on every mask, more than the arithmetic.
    largest = max((int((x2[i] - x1[i]) * (y2[i] - y1[i])) for i in todo), default=0)
    work = np.empty((2, largest), np.float32)
    binary = np.empty(largest, np.uint8)
    for index in todo:
        cols, rows = slice(x1[index], x2[index]), slice(y1[index], y2[index])
        top = y_low[rows.start]
        # Source columns x source rows: the column taps become row gathers (fast).
        source = cv2.transpose(masks[index, top:y_high[rows.stop - 1] + 1])
        left, right = source[x_low[cols]], source[x_high[cols]]   # [columns, source rows]
        low, high = y_low[rows] - top, y_high[rows] - top
        shape = (rows.stop - rows.start, cols.stop - cols.start)
        values, lower = (w[:shape[0] * shape[1]].reshape(shape) for w in work)
        if halving:
            left, right = left.T, right.T
            # OpenCV's order: top-left + top-right + bottom-left + bottom-right, then x 1/4.
            np.add(left[low], right[low], out=values)
            values += left[high]
            values += right[high]
            values *= np.float32(0.25)
        else:
            left *= x_w0[cols, None]
            right *= x_w1[cols, None]
            left += right
            left = cv2.transpose(left)                  # [source rows, columns] horizontal pass
            np.take(left, low, axis=0, out=values, mode="clip")
            values *= y_w0[rows]
            np.take(left, high, axis=0, out=lower, mode="clip")
            lower *= y_w1[rows]
            values += lower                             # [rows, columns]
        above = binary[:values.size].reshape(shape)
        np.greater(values, threshold, out=above.view(bool))
        # OpenCV's blocked transpose: numpy's strided one costs more than the arithmetic.
        windows.columns(index)[...] = cv2.transpose(above).view(bool)
    return windows


def masks_to_image(masks, height, width, threshold=0.5):
    """Soft masks on the prototype grid -> binary masks of the original image.

    Args:
        masks: [D, S, S] float32 cropped soft masks.
        height, width: original image size in pixels.
        threshold: >= 0; a pixel is foreground when its resized value is strictly above.

    Returns:
        [D, height, width] bool (``mask_windows(...).to_dense()``).
    """
    return mask_windows(masks, height, width, threshold).to_dense()


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
