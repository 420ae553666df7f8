"""ResNet v1.5 backbone in torchvision layout, with DCNv2 in the 3x3 conv of chosen blocks.

Layout: conv1 7x7/2 (pad 3, no bias), bn1, ReLU, maxpool 3x3/2 (pad 1), then 4 stages of
Bottleneck blocks (1x1 -> 3x3 -> 1x1 x4, the stride on the 3x3 conv). Parameter names follow
torchvision with ``layerN`` renamed ``layers.{N-1}``, as in the authors' checkpoints:
``conv1.weight``, ``bn1.{gamma,beta,moving_mean,moving_variance}``,
``layers.{s}.{b}.{conv1,bn1,conv2,bn2,conv3,bn3}.*``, ``layers.{s}.0.downsample.{0,1}.*``;
a DCN block has ``conv2.{weight,bias}`` and ``conv2.conv_offset_mask.{weight,bias}``.
"""
from mindspore import nn, ops

from src.model.dcn import ModulatedDeformConv2d

EXPANSION = 4
BN_EPS = 1e-5
BN_MOMENTUM = 0.9  # MindSpore's convention: PyTorch's momentum 0.1


def batch_norm(channels, frozen):
    """BatchNorm2d; ``frozen``: always the moving statistics, gamma/beta not trainable."""
    bn = nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM,
                        use_batch_statistics=False if frozen else None)
    if frozen:
        bn.gamma.requires_grad = False
        bn.beta.requires_grad = False
    return bn


def plain_conv(in_channels, out_channels, kernel_size, stride=1, padding=0):
    """Bias-free conv with PyTorch's explicit symmetric padding."""
    pad_mode = "pad" if padding else "valid"
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, pad_mode=pad_mode,
                     padding=padding, has_bias=False)


def uses_dcn(block_index, num_blocks, dcn_layers, dcn_interval):
    """The authors' rule: DCN in the last ``dcn_layers`` blocks of a stage, every
    ``dcn_interval``-th by index; the first block only when the whole stage is DCN."""
    if block_index == 0:
        return dcn_layers >= num_blocks
    return block_index + dcn_layers >= num_blocks and block_index % dcn_interval == 0


class StemMaxPool(nn.Cell):
    """3x3 max pool, stride 2, padding 1 (PyTorch's), for inputs >= 0 such as the stem's
    ReLU output: there a zero border gives the same maximum as PyTorch's -inf border.

    MindSpore's padded max pool (``pad_mode="pad"``, a MaxPool3DWithArgmax kernel) took
    ~50 ms at 550 on the project's CPU, 12 % of a ResNet-50 forward; concatenating zeros
    and pooling without padding is 3x faster.

    Inputs: [B, C, H, W] >= 0. Returns: [B, C, ceil(H/2), ceil(W/2)].
    """

    def __init__(self):
        super().__init__()
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, pad_mode="valid")

    def construct(self, x):
        n, c, h, w = x.shape
        zero_rows = ops.zeros((n, c, 1, w), x.dtype)
        x = ops.concat((zero_rows, x, zero_rows), axis=2)
        zero_cols = ops.zeros((n, c, h + 2, 1), x.dtype)
        return self.pool(ops.concat((zero_cols, x, zero_cols), axis=3))


class Bottleneck(nn.Cell):
    """1x1 (planes) -> 3x3 stride s (planes; DCNv2 or plain) -> 1x1 (4*planes), + shortcut.

    Inputs: [B, in_channels, H, W]. Returns: [B, 4*planes, ceil(H/s), ceil(W/s)].
    """

    def __init__(self, in_channels, planes, stride=1, use_dcn=False, dcn_impl="fast",
                 freeze_bn=False):
        super().__init__()
        out_channels = planes * EXPANSION
        self.conv1 = plain_conv(in_channels, planes, 1)
        self.bn1 = batch_norm(planes, freeze_bn)
        if use_dcn:
            self.conv2 = ModulatedDeformConv2d(planes, planes, stride=stride, impl=dcn_impl)
        else:
            self.conv2 = plain_conv(planes, planes, 3, stride=stride, padding=1)
        self.bn2 = batch_norm(planes, freeze_bn)
        self.conv3 = plain_conv(planes, out_channels, 1)
        self.bn3 = batch_norm(out_channels, freeze_bn)
        self.relu = nn.ReLU()
        self.has_downsample = stride != 1 or in_channels != out_channels
        if self.has_downsample:
            self.downsample = nn.SequentialCell([plain_conv(in_channels, out_channels, 1, stride),
                                                 batch_norm(out_channels, freeze_bn)])

    def construct(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = self.downsample(x) if self.has_downsample else x
        return self.relu(out + shortcut)


class ResNet(nn.Cell):
    """ResNet backbone returning the outputs of stages 2-4.

    Args:
        layers: blocks per stage, (3, 4, 6, 3) ResNet-50, (3, 4, 23, 3) ResNet-101.
        base_width: stem channels and planes of stage 1; stage i has ``base_width * 2**i``
            planes and ``4x`` that many output channels (64 for the COCO models).
        dcn_layers: per stage, how many of its last blocks may use DCNv2.
        dcn_interval: of those, blocks whose index is a multiple of it do.
        dcn_impl: ``"kernel"``, ``"fast"`` or ``"native"``, see ``src.model.dcn``.
        freeze_bn: BatchNorm uses its moving statistics in training too and gamma/beta are
            not trainable (the authors' setting when the per-device batch is below 6).

    Inputs:
        x: [B, 3, H, W] float32, normalised RGB.

    Returns:
        (C3, C4, C5): [B, 8w, H/8, W/8], [B, 16w, H/16, W/16], [B, 32w, H/32, W/32] with
        w = base_width and sizes rounded up per stride-2 step (550 -> 69, 35, 18).
    """

    def __init__(self, layers=(3, 4, 6, 3), base_width=64, dcn_layers=(0, 0, 0, 0),
                 dcn_interval=1, dcn_impl="fast", freeze_bn=False):
        super().__init__()
        if len(layers) != 4 or len(dcn_layers) != 4:
            raise ValueError(f"need 4 stages, got layers={layers} dcn_layers={dcn_layers}")
        self.conv1 = plain_conv(3, base_width, 7, stride=2, padding=3)
        self.bn1 = batch_norm(base_width, freeze_bn)
        self.relu = nn.ReLU()
        self.maxpool = StemMaxPool()
        stages = []
        in_channels = base_width
        for stage, (num_blocks, stage_dcn) in enumerate(zip(layers, dcn_layers)):
            planes = base_width * 2 ** stage
            blocks = []
            for index in range(num_blocks):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(Bottleneck(in_channels, planes, stride,
                                         uses_dcn(index, num_blocks, stage_dcn, dcn_interval),
                                         dcn_impl, freeze_bn))
                in_channels = planes * EXPANSION
            stages.append(nn.SequentialCell(blocks))
        self.layers = nn.CellList(stages)

    def construct(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layers[0](x)
        c3 = self.layers[1](c2)
        c4 = self.layers[2](c3)
        c5 = self.layers[3](c4)
        return c3, c4, c5
