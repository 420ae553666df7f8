"""Semantic segmentation loss of the training-only semantic head."""
from mindspore import nn, ops


class SemanticLoss(nn.Cell):
    """Per-pixel sigmoid BCE, summed over classes and pixels, divided by s*s.

    Inputs:
        segm: [B, C-1, s, s] float32 logits of the semantic head.
        semantic_t: [B, C-1, s, s] float32 0/1 targets (channel = 0-based class; per class
            the max over that class's non-crowd GT masks resized to s*s, > 0.5).

    Returns:
        [] float32 sum over the batch of each image's BCE sum / (s*s); the caller divides
        by B (the authors' normalisation).
    """

    def construct(self, segm, semantic_t):
        height, width = segm.shape[2], segm.shape[3]
        # Stable BCE-with-logits: max(x, 0) - x*t + log(1 + exp(-|x|)).
        per_pixel = ops.relu(segm) - segm * semantic_t + ops.log1p(ops.exp(-ops.abs(segm)))
        return per_pixel.sum() / (height * width)
