"""Semantic segmentation head (training only: an auxiliary loss on P3)."""
from mindspore import nn

from src.model.layers import head_conv


class SemanticHead(nn.Cell):
    """1x1 conv on P3 giving one logit map per foreground class.

    Inputs:
        p3: [B, F, s, s] float32 (s = 69 at max_size 550).

    Returns:
        [B, num_fg_classes, s, s] float32 logits.
    """

    def __init__(self, in_channels, num_fg_classes):
        super().__init__()
        self.semantic_seg_conv = head_conv(in_channels, num_fg_classes, 1)

    def construct(self, p3):
        return self.semantic_seg_conv(p3)
