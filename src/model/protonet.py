"""Protonet: the prototype masks shared by all instances."""
from mindspore import nn, ops

from src.model.layers import head_conv


class Upsample2x(nn.Cell):
    """Bilinear x2 upsampling, ``align_corners=False`` (PyTorch ``F.interpolate`` semantics)."""

    def construct(self, x):
        height, width = x.shape[2], x.shape[3]
        return ops.interpolate(x, size=(2 * height, 2 * width), mode="bilinear",
                               align_corners=False)


class ProtoNet(nn.Cell):
    """Three 3x3 convs, bilinear x2, a 3x3 conv and a 1x1 conv to K prototypes, all + ReLU.

    The layers are one SequentialCell in the authors' order (conv, ReLU, conv, ReLU, conv,
    ReLU, upsample, ReLU, conv, ReLU, conv) so the conv indices 0, 2, 4, 8, 10 match the
    authors' ``proto_net`` keys; the final ReLU is their prototype activation.

    Inputs:
        p3: [B, F, s, s] float32.

    Returns:
        [B, 2s, 2s, K] float32 prototypes, channels last (138 x 138 x 32 at max_size 550).
    """

    def __init__(self, in_channels, hidden_channels=256, num_prototypes=32):
        super().__init__()
        self.proto_net = nn.SequentialCell([
            head_conv(in_channels, hidden_channels, 3, padding=1), nn.ReLU(),
            head_conv(hidden_channels, hidden_channels, 3, padding=1),
            nn.ReLU(),
            head_conv(hidden_channels, hidden_channels, 3, padding=1),
            nn.ReLU(),
            Upsample2x(), nn.ReLU(),
            head_conv(hidden_channels, hidden_channels, 3, padding=1),
            nn.ReLU(),
            head_conv(hidden_channels, num_prototypes, 1),
        ])
        self.relu = nn.ReLU()

    def construct(self, p3):
        prototypes = self.relu(self.proto_net(p3))
        return ops.transpose(prototypes, (0, 2, 3, 1))
