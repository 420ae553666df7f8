"""Prior (anchor) boxes for the FPN levels P3..P7; their count is derived, never typed in.

Priors are constants of the input size: compute them once on the host.
"""
import numpy as np


def _conv_output_size(size, kernel, stride, padding):
    """Spatial output size of a conv / pool layer (floor rounding, as in PyTorch and MindSpore)."""
    return (size + 2 * padding - kernel) // stride + 1


def feature_map_sizes(max_size, num_levels=5):
    """Side lengths of the square FPN maps P3, P4, ... for a ``max_size`` x ``max_size`` input.

    Follows the ResNet arithmetic: conv1 7x7/2 pad 3, maxpool 3x3/2 pad 1, layer1 at stride 1,
    then one stride-2 3x3 pad-1 conv per stage (C3, C4, C5 = P3, P4, P5 sizes), and P6, P7 as
    stride-2 3x3 pad-1 convs.

    Args:
        max_size: input side in pixels.
        num_levels: number of FPN levels from P3 up.

    Returns:
        tuple of ``num_levels`` ints, e.g. 550 -> (69, 35, 18, 9, 5), 256 -> (32, 16, 8, 4, 2).
    """
    size = _conv_output_size(max_size, kernel=7, stride=2, padding=3)
    size = _conv_output_size(size, kernel=3, stride=2, padding=1)
    sizes = []
    for _ in range(num_levels):
        size = _conv_output_size(size, kernel=3, stride=2, padding=1)
        sizes.append(size)
    return tuple(sizes)


def prototype_size(max_size):
    """Side of the prototype grid for a ``max_size`` input: twice the P3 side (138 at 550,
    64 at 256)."""
    return 2 * feature_map_sizes(max_size)[0]


def _level_priors(grid_size, max_size, scales, aspect_ratios, square_anchors):
    """[grid_size² · len(scales) · len(aspect_ratios), 4] float64 priors of one level.

    Arithmetic in float64 in the authors' order (``w = scale·√r / max_size``, ``h = scale / √r /
    max_size``), so the float32 cast equals theirs.
    """
    steps = (np.arange(grid_size, dtype=np.float64) + 0.5) / grid_size
    roots = np.sqrt(np.asarray(aspect_ratios, dtype=np.float64))               # [R]
    scales = np.asarray(scales, dtype=np.float64)[:, None]                      # [S, 1]
    widths = scales * roots / max_size                                         # [S, R]
    heights = widths if square_anchors else scales / roots / max_size          # [S, R]
    anchors_per_cell = widths.size
    cy, cx = np.meshgrid(steps, steps, indexing="ij")                          # [H, W] (row j, col i)
    centres = np.stack((cx, cy), -1).reshape(-1, 1, 2)                         # [H·W, 1, 2]
    sizes = np.stack((widths, heights), -1).reshape(1, anchors_per_cell, 2)    # [1, S·R, 2]
    cells = grid_size * grid_size
    return np.concatenate((np.broadcast_to(centres, (cells, anchors_per_cell, 2)),
                           np.broadcast_to(sizes, (cells, anchors_per_cell, 2))), -1).reshape(-1, 4)


def make_priors(max_size, scales, aspect_ratios, square_anchors=False):
    """All priors of the model, in the prediction head's output order.

    Order: level by level (P3 first); within a level, locations row-major (row j, then column
    i); within a location, scale-major then aspect ratio, matching the head's flattening
    ``[H·W·A]`` with anchor index ``a = scale_index · len(aspect_ratios) + ratio_index``.

    Args:
        max_size: input side in pixels (scales are in pixels of this input).
        scales: one tuple of pixel scales per FPN level, e.g. ((24, 30.2, 38.1), (48, ...), ...).
        aspect_ratios: width / height ratios used at every level, e.g. (1, 0.5, 2).
        square_anchors: YOLACT v1's legacy bug: ``h = w`` for every ratio.

    Returns:
        [P, 4] float32 (cx, cy, w, h), relative;
        P = Σ_k size_k² · len(scales[k]) · len(aspect_ratios).
    """
    grid_sizes = feature_map_sizes(max_size, num_levels=len(scales))
    levels = [_level_priors(size, max_size, level_scales, aspect_ratios, square_anchors)
              for size, level_scales in zip(grid_sizes, scales)]
    return np.concatenate(levels, 0).astype(np.float32)

