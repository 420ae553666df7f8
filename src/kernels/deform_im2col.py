"""Modulated deformable im2col on the C++ CPU kernel (``deform_im2col.cc``), differentiable.

The fast primitives DCN (``src.model.dcn``) spends most of its time building and blending
4 corner patches per tap in memory; this kernel samples straight from the input planes.
"""
import functools

from mindspore import ops

from src.kernels.build import library_path

KERNEL_TAPS = 9


@functools.lru_cache(maxsize=None)
def deform_im2col_op():
    """The Custom op ``(x, offset_mask, stride) -> columns``.

    Inputs:
        x: [N, C, H, W] float32.
        offset_mask: [N, 27, H_out, W_out] float32: 9 dx, 9 dy, 9 modulation scalars
            (after the sigmoid), tap ``k = 3*ky + kx``.
        stride: [1] int32.

    Returns:
        columns [9*C, N*H_out*W_out] float32, row ``9*c + k`` (tap k of channel c), column
        ``n*H_out*W_out + p``: sampled bilinearly (corners outside the image read zero) and
        modulated. Gradients flow to x and offset_mask.
    """
    library = library_path("deform_im2col")
    grad_input = ops.Custom(f"{library}:DeformIm2colGradInput",
                            out_shape=lambda x, offset_mask, stride, grad: x,
                            out_dtype=lambda x, offset_mask, stride, grad: x, func_type="aot")
    grad_offset_mask = ops.Custom(f"{library}:DeformIm2colGradOffsetMask",
                                  out_shape=lambda x, offset_mask, stride, grad: offset_mask,
                                  out_dtype=lambda x, offset_mask, stride, grad: offset_mask,
                                  func_type="aot")

    def bprop(x, offset_mask, stride, out, dout):
        return (grad_input(x, offset_mask, stride, dout),
                grad_offset_mask(x, offset_mask, stride, dout), ops.zeros_like(stride))

    return ops.Custom(f"{library}:DeformIm2col",
                      out_shape=lambda x, offset_mask, stride: (
                          KERNEL_TAPS * x[1], x[0] * offset_mask[2] * offset_mask[3]),
                      out_dtype=lambda x, offset_mask, stride: x, func_type="aot", bprop=bprop)
