"""Mask re-scoring network of YOLACT++ (the authors' ``FastMaskIoUNet``)."""
from mindspore import nn, ops

from src.model.layers import head_conv


class MaskIoUNet(nn.Cell):
    """Predicts the IoU of each soft instance mask with its (unknown) ground truth, per class.

    Five stride-2 3x3 convs without padding and a 1x1 conv, each followed by ReLU, then a
    global max pool. The children live in ``maskiou_net`` (a SequentialCell) so that the
    parameter names match the authors' ``maskiou_net.maskiou_net.{0,2,4,6,8,10}``.

    Args:
        num_fg_classes: C - 1, classes without background (80 on COCO).
        channels: output channels of the stride-2 convs.

    Inputs:
        masks: [N, 1, S, S] float32 cropped soft masks (S = 138 at max_size 550).

    Returns:
        [N, num_fg_classes] float32 predicted mask IoU per class (>= 0).
    """

    def __init__(self, num_fg_classes, channels=(8, 16, 32, 64, 128)):
        super().__init__()
        layers = []
        in_channels = 1
        for out_channels in channels:
            layers += [head_conv(in_channels, out_channels, 3, stride=2), nn.ReLU()]
            in_channels = out_channels
        layers += [head_conv(in_channels, num_fg_classes, 1), nn.ReLU()]
        self.maskiou_net = nn.SequentialCell(layers)

    def construct(self, masks):
        features = self.maskiou_net(masks)
        return ops.amax(features, axis=(2, 3))
