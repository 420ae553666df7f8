"""DCNv2 (modulated deformable 3x3 convolution) for the ResNet backbone of YOLACT++.

Offset/mask layout. Our ``conv_offset_mask`` predicts 27 channels in MindSpore's order
``[9 dx | 9 dy | 9 mask logits]``, tap ``k = 3*ky + kx``; ``mask = sigmoid(logits)``.
The authors' DCNv2 (and torchvision's ``deform_conv2d``) order the first 18 channels as
``(dy, dx)`` interleaved per tap, so their conv converts with
``dcnv2_offset_channel_order()``.

Sampling. Output pixel ``(i, j)``, tap ``(ky, kx)`` reads the input at
``(y, x) = (i*stride - 1 + ky + dy, j*stride - 1 + kx + dx)`` (pixel centres at integers)
by bilinear interpolation in which every corner outside the image reads zero, and scales
it by the tap's mask.

Three implementations compute the same function:
  * ``"kernel"``: the C++ CPU kernel ``src/kernels/deform_im2col.cc`` samples the columns
    straight from the input planes, one BLAS matmul (``src/kernels/conv_gemm.py``) applies
    the 3x3 weight (CPU only; the fastest there);
  * ``"fast"``: built from primitives, for every device. The input goes channels-last with
    a 2-pixel zero border, one gather fetches the 2x2 corner patch of every tap, a batched
    matmul blends the 4 corners with bilinear weight x mask, and one matmul applies the
    3x3 weight;
  * ``"native"``: ``ops.deformable_conv2d`` (deprecated, and slow on CPU mostly because of
    its backward kernel).
"""
import numpy as np
import mindspore as ms
from mindspore import nn, ops
from mindspore.common.initializer import HeUniform, initializer

from src.kernels.conv_gemm import matmul_op
from src.kernels.deform_im2col import KERNEL_TAPS, deform_im2col_op

# 2 pixels of zeros around the input: a 2x2 patch whose start is clamped onto this border
# lies entirely in zeros, so samples far outside the image need no validity mask.
BORDER = 2
IMPLS = ("kernel", "fast", "native")


def dcnv2_offset_channel_order():
    """Permutation of the 27 offset/mask conv outputs, DCNv2 layout -> ours.

    DCNv2 / torchvision: channel ``2k`` = dy of tap k, ``2k+1`` = dx, ``18+k`` = mask logit.
    Ours: ``k`` = dx, ``9+k`` = dy, ``18+k`` = mask logit.

    Returns:
        [27] int64 ``perm`` with ``ours[c] = dcnv2[perm[c]]``: apply it to the output axis of
        the conv weight ``[27, C, 3, 3]`` and to its bias ``[27]``.
    """
    taps = np.arange(KERNEL_TAPS, dtype=np.int64)
    return np.concatenate([2 * taps + 1, 2 * taps, 2 * KERNEL_TAPS + taps])


class ModulatedDeformConv2d(nn.Cell):
    """DCNv2 3x3 conv, padding 1, dilation 1, one deformable group, with bias.

    Args:
        in_channels: C_in.
        out_channels: C_out.
        stride: stride of the conv and of its offset/mask conv.
        impl: ``"kernel"`` (C++ CPU kernel), ``"fast"`` (primitives) or ``"native"``
            (``ops.deformable_conv2d``).

    Parameters: ``weight`` [C_out, C_in, 3, 3], ``bias`` [C_out] (zeros),
    ``conv_offset_mask.weight`` [27, C_in, 3, 3] and ``.bias`` [27] (zeros: the layer starts
    as a plain conv scaled by sigmoid(0) = 0.5, as the authors').

    Inputs:
        x: [N, C_in, H, W] float32.

    Returns:
        [N, C_out, H_out, W_out], ``H_out = (H - 1) // stride + 1`` (same for W).
    """

    def __init__(self, in_channels, out_channels, stride=1, impl="fast"):
        super().__init__()
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
        self.out_channels = out_channels
        self.stride = stride
        self.impl = impl
        self.weight = ms.Parameter(
            initializer(HeUniform(), (out_channels, in_channels, 3, 3), ms.float32), name="weight")
        self.bias = ms.Parameter(initializer("zeros", (out_channels,), ms.float32), name="bias")
        self.conv_offset_mask = nn.Conv2d(in_channels, 3 * KERNEL_TAPS, 3, stride=stride,
                                          pad_mode="pad", padding=1, has_bias=True,
                                          weight_init="zeros", bias_init="zeros")
        taps = np.arange(KERNEL_TAPS)
        # Tap position in the zero-bordered frame: ky + BORDER - 1 (the conv pads by 1).
        self.tap_y = ms.Tensor((taps // 3 + BORDER - 1).astype(np.float32))
        self.tap_x = ms.Tensor((taps % 3 + BORDER - 1).astype(np.float32))
        # Corners of a 2x2 patch, in the order (y0,x0) (y0,x1) (y1,x0) (y1,x1).
        self.corner_dy = ms.Tensor(np.array([0, 0, 1, 1], np.int32))
        self.corner_dx = ms.Tensor(np.array([0, 1, 0, 1], np.int32))
        self.blend = ops.BatchMatMul()
        self.matmul_wt = ops.MatMul(transpose_b=True)
        if impl == "kernel":
            self.use_cpu_kernel()

    def use_cpu_kernel(self):
        """Switch to the C++ CPU kernel (``impl="kernel"``), keeping the parameters."""
        self.impl = "kernel"
        self.im2col = deform_im2col_op()
        self.matmul = matmul_op()
        self.stride_tensor = ms.Tensor(np.array([self.stride], np.int32))

    def construct(self, x):
        offset_mask = self.conv_offset_mask(x)
        if self.impl == "kernel":
            return self._kernel(x, offset_mask)
        if self.impl == "native":
            return self._native(x, offset_mask)
        return self._fast(x, offset_mask)

    @staticmethod
    def _modulated(offset_mask):
        """[N, 27, H, W] offsets and mask logits -> offsets and mask (sigmoid)."""
        offsets, logits = ops.split(offset_mask, (2 * KERNEL_TAPS, KERNEL_TAPS), axis=1)
        return ops.concat((offsets, ops.sigmoid(logits)), axis=1)

    def _kernel(self, x, offset_mask):
        n, h_out, w_out = x.shape[0], offset_mask.shape[2], offset_mask.shape[3]
        columns = self.im2col(x, self._modulated(offset_mask), self.stride_tensor)
        weight = ops.reshape(self.weight, (self.out_channels, -1))  # [C_out, C_in*9]
        out = self.matmul(weight, columns) + ops.reshape(self.bias, (self.out_channels, 1))
        if n == 1:  # [C_out, H*W] is already the image's NCHW layout
            return ops.reshape(out, (1, self.out_channels, h_out, w_out))
        out = ops.reshape(out, (self.out_channels, n, h_out, w_out))
        return ops.transpose(out, (1, 0, 2, 3))

    def _native(self, x, offset_mask):
        strides = (1, 1, self.stride, self.stride)
        return ops.deformable_conv2d(x, self.weight, self._modulated(offset_mask), (3, 3),
                                     strides, (1, 1, 1, 1), bias=self.bias, modulated=True)

    def _fast(self, x, offset_mask):
        n, c, h, w = x.shape
        h_out, w_out = offset_mask.shape[2], offset_mask.shape[3]
        h_pad, w_pad = h + 2 * BORDER, w + 2 * BORDER

        # [N, H+4, W+4, C] channels-last with a zero border, flattened to rows of C.
        x_nhwc = ops.transpose(x, (0, 2, 3, 1))
        zeros_rows = ops.zeros((n, BORDER, w, c), x.dtype)
        x_nhwc = ops.concat((zeros_rows, x_nhwc, zeros_rows), axis=1)
        zeros_cols = ops.zeros((n, h_pad, BORDER, c), x.dtype)
        x_nhwc = ops.concat((zeros_cols, x_nhwc, zeros_cols), axis=2)
        pixels = ops.reshape(x_nhwc, (n * h_pad * w_pad, c))

        # [N, H_out, W_out, 9] each: offsets and mask per output pixel and tap.
        offset_mask = ops.transpose(offset_mask, (0, 2, 3, 1))
        dx, dy, logits = ops.split(offset_mask, KERNEL_TAPS, axis=3)
        mask = ops.sigmoid(logits)

        # Sampling positions in the padded frame.
        grid_y = ops.arange(0, h_out, dtype=x.dtype) * self.stride
        grid_x = ops.arange(0, w_out, dtype=x.dtype) * self.stride
        pos_y = dy + ops.reshape(grid_y, (1, h_out, 1, 1)) + self.tap_y
        pos_x = dx + ops.reshape(grid_x, (1, 1, w_out, 1)) + self.tap_x
        floor_y = ops.stop_gradient(ops.floor(pos_y))
        floor_x = ops.stop_gradient(ops.floor(pos_x))
        frac_y = pos_y - floor_y
        frac_x = pos_x - floor_x

        # Patch start, clamped onto the zero border when the patch lies outside the image.
        start_y = ops.cast(ops.clamp(floor_y, 0.0, float(h_pad - 2)), ms.int32)
        start_x = ops.cast(ops.clamp(floor_x, 0.0, float(w_pad - 2)), ms.int32)
        image_start = ops.reshape(ops.arange(0, n, dtype=ms.int32) * (h_pad * w_pad), (n, 1, 1, 1))
        start = image_start + start_y * w_pad + start_x
        corners = self.corner_dy * w_pad + self.corner_dx
        rows = ops.reshape(ops.expand_dims(start, 4) + corners, (-1, 4))
        patches = ops.gather(pixels, rows, 0)  # [M, 4, C], M = N*H_out*W_out*9

        frac_y = ops.expand_dims(frac_y, 4)
        frac_x = ops.expand_dims(frac_x, 4)
        weight_y = ops.concat((1 - frac_y, 1 - frac_y, frac_y, frac_y), axis=4)
        weight_x = ops.concat((1 - frac_x, frac_x, 1 - frac_x, frac_x), axis=4)
        corner_weights = weight_y * weight_x * ops.expand_dims(mask, 4)  # [N, H_out, W_out, 9, 4]
        samples = self.blend(ops.reshape(corner_weights, (-1, 1, 4)), patches)  # [M, 1, C]

        # Columns ordered (tap, channel) to match the weight laid out as [C_out, 3, 3, C_in].
        columns = ops.reshape(samples, (n * h_out * w_out, KERNEL_TAPS * c))
        weight = ops.reshape(ops.transpose(self.weight, (0, 2, 3, 1)), (self.out_channels, -1))
        out = self.matmul_wt(columns, weight) + self.bias
        out = ops.reshape(out, (n, h_out, w_out, self.out_channels))
        return ops.transpose(out, (0, 3, 1, 2))
