"""3x3 convolution (stride 1, padding 1) by Winograd F(2x2, 3x3) on C++ CPU transforms.

MindSpore's CPU conv computes a 3x3 conv directly; Winograd F(2x2, 3x3) needs 16 products
per 2x2 output tile instead of 36, so the 16 batched matrix products between the C++ input
and output transforms (``winograd.cc``) do 2.25x fewer multiply-adds; they run on the BLAS
sgemm of ``conv_gemm.py``. The result equals the direct conv up to float32 rounding.
"""
import functools

import numpy as np
import mindspore as ms
from mindspore import nn, ops

from src.kernels.build import library_path
from src.kernels.conv_gemm import matmul_op

TILE_ELEMENTS = 16
# Kernel transform G of F(2x2, 3x3): U = G g G^T for a 3x3 kernel g.
KERNEL_TRANSFORM = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]],
                            np.float32)


def num_tiles(side):
    """2x2 output tiles along a side."""
    return (side + 1) // 2


def _shape_reference(x):
    """A small [N, H, W] tensor that tells the output transform the image size."""
    return ops.zeros((x.shape[0], x.shape[2], x.shape[3]), ms.int8)


@functools.lru_cache(maxsize=None)
def winograd_ops():
    """(input transform, output transform) Custom ops, both differentiable.

    input transform: x [N, C, H, W] -> V [16, C, N*T], T = ceil(H/2) * ceil(W/2);
    output transform: (M [16, O, N*T], shape reference [N, H, W]) -> y [N, O, H, W].
    """
    library = library_path("winograd")
    input_grad = ops.Custom(f"{library}:WinogradInputGrad",
                            out_shape=lambda dv, shape: (shape[0], dv[1], shape[1], shape[2]),
                            out_dtype=lambda dv, shape: dv, func_type="aot")
    output_grad = ops.Custom(f"{library}:WinogradOutputGrad",
                             out_shape=lambda dy: (TILE_ELEMENTS, dy[1],
                                                   dy[0] * num_tiles(dy[2]) * num_tiles(dy[3])),
                             out_dtype=lambda dy: dy, func_type="aot")

    def input_bprop(x, out, dout):
        return (input_grad(dout, _shape_reference(x)),)

    def output_bprop(m, shape, out, dout):
        return output_grad(dout), ops.zeros_like(shape)

    input_transform = ops.Custom(
        f"{library}:WinogradInput",
        out_shape=lambda x: (TILE_ELEMENTS, x[1], x[0] * num_tiles(x[2]) * num_tiles(x[3])),
        out_dtype=lambda x: x, func_type="aot", bprop=input_bprop)
    output_transform = ops.Custom(
        f"{library}:WinogradOutput",
        out_shape=lambda m, shape: (shape[0], m[1], shape[1], shape[2]),
        out_dtype=lambda m, shape: m, func_type="aot", bprop=output_bprop)
    return input_transform, output_transform


class WinogradConv2d(nn.Cell):
    """A 3x3 conv, stride 1, padding 1, with bias: ``nn.Conv2d``'s function on the same
    parameters, computed by Winograd F(2x2, 3x3). Made from a built conv by ``from_conv``.

    Args:
        weight: Parameter [C_out, C_in, 3, 3].
        bias: Parameter [C_out].

    Inputs:
        x: [N, C_in, H, W] float32.

    Returns:
        [N, C_out, H, W] float32.
    """

    def __init__(self, weight, bias):
        super().__init__()
        self.out_channels, self.in_channels = weight.shape[0], weight.shape[1]
        self.weight = weight
        self.bias = bias
        self.kernel_transform = ms.Tensor(np.kron(KERNEL_TRANSFORM, KERNEL_TRANSFORM))  # [16, 9]
        self.input_transform, self.output_transform = winograd_ops()
        self.batch_matmul = matmul_op()

    @staticmethod
    def fits(conv):
        """Whether ``conv`` (an ``nn.Conv2d``) is a 3x3, stride 1, padding 1 conv with bias,
        ungrouped and undilated: what this cell computes."""
        return (isinstance(conv, nn.Conv2d) and conv.has_bias and conv.group == 1
                and tuple(conv.kernel_size) == (3, 3) and tuple(conv.stride) == (1, 1)
                and tuple(conv.dilation) == (1, 1) and conv.pad_mode == "pad"
                and _symmetric_padding(conv.padding) == 1)

    @classmethod
    def from_conv(cls, conv):
        """The Winograd form of ``conv`` (see ``fits``), sharing its Parameters."""
        return cls(conv.weight, conv.bias)

    def construct(self, x):
        taps = ops.reshape(ops.transpose(self.weight, (2, 3, 0, 1)), (9, -1))  # [9, O*C]
        transformed_weight = ops.reshape(ops.matmul(self.kernel_transform, taps),
                                         (TILE_ELEMENTS, self.out_channels, self.in_channels))
        products = self.batch_matmul(transformed_weight, self.input_transform(x))  # [16, O, N*T]
        return ops.bias_add(self.output_transform(products, _shape_reference(x)), self.bias)


def _symmetric_padding(padding):
    """The padding of every side when all sides are equal, else None."""
    sides = set(padding) if isinstance(padding, (tuple, list)) else {padding}
    return sides.pop() if len(sides) == 1 else None
