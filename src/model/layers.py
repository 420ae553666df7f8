"""Convolution factory for the layers outside the backbone."""
from mindspore import nn
from mindspore.common.initializer import XavierUniform


def head_conv(in_channels, out_channels, kernel_size, stride=1, padding=0):
    """A conv with bias, xavier-uniform weight and zero bias (the authors' init for every
    non-backbone conv: FPN, protonet, prediction head, semantic head, maskiou net).

    ``padding == 0`` uses MindSpore's "valid" mode, otherwise explicit symmetric padding,
    so the output size is ``floor((H + 2*padding - kernel_size) / stride) + 1`` as in PyTorch.
    """
    pad_mode = "pad" if padding else "valid"
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, pad_mode=pad_mode,
                     padding=padding, has_bias=True, weight_init=XavierUniform(), bias_init="zeros")
