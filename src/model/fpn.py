"""Feature pyramid P3-P7 on the backbone's C3-C5."""
from mindspore import nn, ops

from src.model.layers import head_conv


class FPN(nn.Cell):
    """YOLACT's FPN: lateral 1x1 convs, top-down bilinear sums, 3x3 convs + ReLU, and two
    stride-2 3x3 convs (no ReLU) for P6 and P7.

    ``lat_layers`` and ``pred_layers`` are stored C5-first, as in the authors' checkpoints.

    Args:
        in_channels: channels of (C3, C4, C5), e.g. (512, 1024, 2048).
        channels: F, the channels of every pyramid level (256).
        num_downsample: extra stride-2 levels after P5 (2: P6, P7).

    Inputs:
        c3, c4, c5: [B, in_channels[i], H_i, W_i] float32 (strides 8, 16, 32).

    Returns:
        tuple (P3, P4, P5, P6, P7) of [B, F, H_k, W_k] float32 (69, 35, 18, 9, 5 at 550).
    """

    def __init__(self, in_channels, channels=256, num_downsample=2):
        super().__init__()
        self.lat_layers = nn.CellList([head_conv(c, channels, 1) for c in reversed(in_channels)])
        self.pred_layers = nn.CellList([head_conv(channels, channels, 3, padding=1)
                                        for _ in in_channels])
        self.downsample_layers = nn.CellList([head_conv(channels, channels, 3, stride=2, padding=1)
                                              for _ in range(num_downsample)])
        self.relu = nn.ReLU()

    def construct(self, c3, c4, c5):
        m5 = self.lat_layers[0](c5)
        m4 = self.lat_layers[1](c4) + self._upsample_to(m5, c4)
        m3 = self.lat_layers[2](c3) + self._upsample_to(m4, c3)
        p5 = self.relu(self.pred_layers[0](m5))
        p4 = self.relu(self.pred_layers[1](m4))
        p3 = self.relu(self.pred_layers[2](m3))
        outs = (p3, p4, p5)
        last = p5
        for downsample in self.downsample_layers:
            last = downsample(last)
            outs = outs + (last,)
        return outs

    @staticmethod
    def _upsample_to(x, reference):
        return ops.interpolate(x, size=(reference.shape[2], reference.shape[3]), mode="bilinear",
                               align_corners=False)
