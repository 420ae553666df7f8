"""SSD-style box coder with variances (the authors' non-YOLO regressors).

``encode`` and ``decode`` are an inverse pair: ``decode(encode(b, p), p) == b`` and
``encode(decode(d, p), p) == d`` up to float rounding. With variances (v0, v1):

    dcx = (cx_box − cx_p) / (v0 · w_p)        dw = log(w_box / w_p) / v1
    dcy = (cy_box − cy_p) / (v0 · h_p)        dh = log(h_box / h_p) / v1

The variances scale the regression targets to a comfortable range for the smooth-L1 loss;
they are not learned. The arithmetic follows the authors' operation order so that float32
results agree with theirs bit for bit where possible (``x2 = x1 + w``, not ``cx + w/2``).
"""
import numpy as np
from mindspore import ops

from src.box.ops import coordinate_columns

DEFAULT_VARIANCES = (0.1, 0.2)


def encode(matched_boxes, priors, variances=DEFAULT_VARIANCES):
    """Boxes -> regression targets relative to their priors.

    Args:
        matched_boxes: [P, 4] float32 (x1, y1, x2, y2), relative; the box assigned to each prior.
        priors: [P, 4] float32 (cx, cy, w, h), relative.
        variances: (centre variance, size variance).

    Returns:
        [P, 4] float32 (dcx, dcy, dw, dh). Inverse of :func:`decode`.
    """
    x1, y1, x2, y2 = coordinate_columns(matched_boxes)
    prior_cx, prior_cy, prior_w, prior_h = coordinate_columns(priors)
    return np.stack((((x1 + x2) / 2 - prior_cx) / (variances[0] * prior_w),
                    ((y1 + y2) / 2 - prior_cy) / (variances[0] * prior_h),
                    np.log((x2 - x1) / prior_w) / variances[1],
                    np.log((y2 - y1) / prior_h) / variances[1]), axis=-1)


def decode(loc, priors, variances=DEFAULT_VARIANCES):
    """Regressions -> boxes, numpy form.

    Args:
        loc: [..., P, 4] float32 (dcx, dcy, dw, dh).
        priors: [P, 4] float32 (cx, cy, w, h), relative.
        variances: (centre variance, size variance).

    Returns:
        [..., P, 4] float32 (x1, y1, x2, y2), relative, unclamped. Inverse of :func:`encode`.
    """
    prior_cx, prior_cy, prior_w, prior_h = coordinate_columns(priors)
    dcx, dcy, dw, dh = coordinate_columns(loc)
    width = prior_w * np.exp(dw * variances[1])
    height = prior_h * np.exp(dh * variances[1])
    x1 = (prior_cx + dcx * variances[0] * prior_w) - width / 2
    y1 = (prior_cy + dcy * variances[0] * prior_h) - height / 2
    return np.stack((x1, y1, width + x1, height + y1), axis=-1)


def decode_tensor(loc, priors, variances=DEFAULT_VARIANCES):
    """Regressions -> boxes, MindSpore form (graph mode), same arithmetic as :func:`decode`.

    Args:
        loc: [B, P, 4] float32 Tensor (dcx, dcy, dw, dh).
        priors: [P, 4] float32 Tensor (cx, cy, w, h), relative.
        variances: (centre variance, size variance).

    Returns:
        [B, P, 4] float32 Tensor (x1, y1, x2, y2), relative, unclamped.
    """
    prior_centres, prior_sizes = ops.split(priors, 2, axis=-1)       # [P, 2] each
    loc_centres, loc_sizes = ops.split(loc, 2, axis=-1)              # [B, P, 2] each
    centres = prior_centres + loc_centres * variances[0] * prior_sizes
    sizes = prior_sizes * ops.exp(loc_sizes * variances[1])
    top_left = centres - sizes / 2
    return ops.concat((top_left, sizes + top_left), axis=-1)
