"""The prediction head shared by all pyramid levels: boxes, classes, mask coefficients."""
from mindspore import nn, ops

from src.model.layers import head_conv


class PredictionHead(nn.Cell):
    """A 3x3 conv + ReLU, then three 3x3 convs predicting, for each of A anchors per location,
    4 box regressions, C class logits and K mask coefficients (tanh).

    One set of weights serves every level (the authors' ``prediction_layers.0``). Outputs are
    flattened in (row j, column i, anchor) order per level and concatenated over levels,
    matching the prior order of ``src.box.priors.make_priors``.

    Args:
        in_channels: F, the FPN channels.
        num_anchors: A, anchors per location (9 for YOLACT++, 3 for YOLACT).
        num_classes: C, including background.
        num_prototypes: K.

    Inputs:
        features: tuple of [B, F, H_k, W_k] float32, one per level.

    Returns:
        loc [B, P, 4], conf [B, P, C] logits, coeff [B, P, K] in (-1, 1); P = sum_k H_k W_k A.
    """

    def __init__(self, in_channels, num_anchors, num_classes, num_prototypes):
        super().__init__()
        self.num_classes = num_classes
        self.num_prototypes = num_prototypes
        self.upfeature = nn.SequentialCell([
            head_conv(in_channels, in_channels, 3, padding=1), nn.ReLU()])
        self.bbox_layer = head_conv(in_channels, num_anchors * 4, 3, padding=1)
        self.conf_layer = head_conv(in_channels, num_anchors * num_classes, 3, padding=1)
        self.mask_layer = head_conv(in_channels, num_anchors * num_prototypes, 3, padding=1)

    def construct(self, features):
        locs, confs, coeffs = (), (), ()
        for level in features:
            x = self.upfeature(level)
            locs += (self._flatten(self.bbox_layer(x), 4),)
            confs += (self._flatten(self.conf_layer(x), self.num_classes),)
            coeffs += (self._flatten(self.mask_layer(x), self.num_prototypes),)
        loc = ops.concat(locs, axis=1)
        conf = ops.concat(confs, axis=1)
        coeff = ops.tanh(ops.concat(coeffs, axis=1))
        return loc, conf, coeff

    @staticmethod
    def _flatten(x, width):
        """[B, A*width, H, W] -> [B, H*W*A, width]."""
        batch = x.shape[0]
        return ops.reshape(ops.transpose(x, (0, 2, 3, 1)), (batch, -1, width))
