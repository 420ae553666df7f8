"""Convolutions and matrix products on a BLAS sgemm, forward and backward (``conv_gemm.cc``).

Why: on the CPU, MindSpore's convolutions and matmuls run on oneDNN, which has to be capped
at AVX2 (``ONEDNN_MAX_CPU_ISA``, ``src.runtime``) because its AVX-512 kernels for plain NCHW
layouts are 30-100x slower. On an AVX-512 host that cap halves the vector width of every
GEMM. These ops hand the products to an sgemm that picks its kernel for the host at run
time, so every conv and matmul of the model runs at the host's full width: a stride-1 conv
as one product per kernel tap on the zero-padded input (no copies of the input), a strided
one on im2col columns built in C++ (``conv_gemm.cc`` explains both).

The BLAS: OpenBLAS from the ``scipy-openblas32`` wheel (``scipy_cblas_sgemm``). It is the
build numpy and SciPy ship (maintained with them, ~20 MB, no compiler needed), built with
DYNAMIC_ARCH, so one wheel carries Haswell/Zen (AVX2) and SkylakeX (AVX-512) kernels and
chooses at load; its symbols carry a ``scipy_`` prefix, so it cannot clash with another
BLAS in the process (MindSpore's, torch's). Its sgemm ran the [256x2304]x[2304x4761] GEMM of
a 3x3 FPN conv at 140 GMAC/s on an AVX-512 Xeon where oneDNN capped at AVX2 ran 72-80
(issue 19). MKL is x86-only, large and slow on AMD unless tricked; BLIS has no wheel
kept for numpy's ABI; oneDNN's own sgemm is what the cap limits. The library is linked
into ``conv_gemm.cc``'s shared object (``-l`` + rpath to the wheel's folder).
"""
import functools

import numpy as np
import mindspore as ms
from mindspore import nn, ops

from src.kernels.build import KernelBuildError, library_path

BLAS_PACKAGE = "scipy-openblas32"
BLAS_REQUIREMENT = "scipy-openblas32>=0.3.28,<0.4"


@functools.lru_cache(maxsize=None)
def blas_link_flags():
    """Compiler flags that compile and link against the wheel's OpenBLAS.

    Raises:
        KernelBuildError: the wheel is not installed.
    """
    try:
        import scipy_openblas32
    except ImportError:
        raise KernelBuildError(
            f"the CPU kernels need the OpenBLAS of the {BLAS_PACKAGE} wheel, which is not "
            f"installed: pip install '{BLAS_REQUIREMENT}', or build the model with "
            "model.kernels=portable (MindSpore primitives only, slower on CPU).") from None
    lib_dir = scipy_openblas32.get_lib_dir()
    return (f"-I{scipy_openblas32.get_include_dir()}", f"-L{lib_dir}",
            f"-l{scipy_openblas32.get_library()}", f"-Wl,-rpath,{lib_dir}")


def conv_gemm_library():
    """Path of the compiled ``conv_gemm.cc`` (see ``library_path``)."""
    return library_path("conv_gemm", blas_link_flags())


def _conv_out_side(side, kernel, stride, padding):
    return (side + 2 * padding - kernel) // stride + 1


@functools.lru_cache(maxsize=None)
def conv_op(stride, padding):
    """The differentiable Custom op ``(x, w, geometry) -> y`` of a conv with ``stride``
    (sh, sw) and symmetric ``padding`` (ph, pw), groups 1, dilation 1, no bias.

    Inputs:
        x: [N, C, H, W] float32.
        w: [O, C, Kh, Kw] float32.
        geometry: [4] int32 ``(sh, sw, ph, pw)``: what the C++ side reads.

    Returns:
        y [N, O, Ho, Wo] float32, ``Ho = (H + 2*ph - Kh) // sh + 1`` (same for W), as
        ``nn.Conv2d``. Gradients flow to x and w.
    """
    library = conv_gemm_library()

    def out_shape(x, w, geometry):
        return (x[0], w[0], _conv_out_side(x[2], w[2], stride[0], padding[0]),
                _conv_out_side(x[3], w[3], stride[1], padding[1]))

    grad_input = ops.Custom(f"{library}:ConvGemmGradInput",
                            out_shape=lambda dy, w, x, geometry: x,
                            out_dtype=lambda dy, w, x, geometry: x, func_type="aot")
    grad_weight = ops.Custom(f"{library}:ConvGemmGradWeight",
                             out_shape=lambda x, dy, w, geometry: w,
                             out_dtype=lambda x, dy, w, geometry: w, func_type="aot")

    def bprop(x, w, geometry, out, dout):
        return (grad_input(dout, w, x, geometry), grad_weight(x, dout, w, geometry),
                ops.zeros_like(geometry))

    return ops.Custom(f"{library}:ConvGemm", out_shape=out_shape,
                      out_dtype=lambda x, w, geometry: x, func_type="aot", bprop=bprop)


def _product_shape(a, b, trans_a, trans_b):
    m = a[-1] if trans_a else a[-2]
    n = b[-2] if trans_b else b[-1]
    return tuple(a[:-2]) + (m, n)


@functools.lru_cache(maxsize=None)
def matmul_op():
    """The differentiable Custom op ``(a, b) -> a @ b`` on the BLAS.

    Inputs:
        a: [..., M, K] float32.
        b: [..., K, N] float32, the same leading (batch) dimensions as ``a``.

    Returns:
        [..., M, N] float32; gradients ``dout @ b^T`` and ``a^T @ dout``.
    """
    library = conv_gemm_library()
    products = {
        (trans_a, trans_b): ops.Custom(
            f"{library}:MatMul{'T' if trans_a else 'N'}{'T' if trans_b else 'N'}",
            out_shape=functools.partial(_product_shape, trans_a=trans_a, trans_b=trans_b),
            out_dtype=lambda a, b: a, func_type="aot")
        for trans_a, trans_b in ((False, True), (True, False))}

    def bprop(a, b, out, dout):
        return products[False, True](dout, b), products[True, False](a, dout)

    return ops.Custom(f"{library}:MatMulNN",
                      out_shape=functools.partial(_product_shape, trans_a=False, trans_b=False),
                      out_dtype=lambda a, b: a, func_type="aot", bprop=bprop)


def _side_pairs(conv):
    """(stride, padding) of ``conv`` as (h, w) pairs, or None when its padding is not the
    same on both sides of an axis (``nn.Conv2d`` pads top, bottom, left, right)."""
    padding = conv.padding if conv.pad_mode == "pad" else 0
    if isinstance(padding, int):
        padding = (padding,) * 4
    if padding[0] != padding[1] or padding[2] != padding[3]:
        return None
    return tuple(conv.stride), (padding[0], padding[2])


class GemmConv2d(nn.Cell):
    """``nn.Conv2d``'s function on the same Parameters (groups 1, dilation 1, padding
    "valid" or symmetric "pad"), computed by BLAS sgemm products (see the module
    docstring). Made from a built conv by ``from_conv``.

    Args:
        weight: Parameter [C_out, C_in, Kh, Kw].
        bias: Parameter [C_out] or None.
        stride: (sh, sw).
        padding: (ph, pw), both sides of each axis.

    Inputs:
        x: [N, C_in, H, W] float32.

    Returns:
        [N, C_out, Ho, Wo] float32, ``Ho = (H + 2*ph - Kh) // sh + 1`` (same for W).
    """

    def __init__(self, weight, bias, stride, padding):
        super().__init__()
        self.weight = weight
        self.has_bias = bias is not None
        if self.has_bias:
            self.bias = bias
        self.conv = conv_op(tuple(stride), tuple(padding))
        self.geometry = ms.Tensor(np.array([*stride, *padding], np.int32))

    @staticmethod
    def fits(conv):
        """Whether ``conv`` is an ``nn.Conv2d`` this cell computes: NCHW, groups 1,
        dilation 1, "valid" or symmetric "pad" padding."""
        return (isinstance(conv, nn.Conv2d) and conv.group == 1
                and tuple(conv.dilation) == (1, 1) and conv.data_format == "NCHW"
                and conv.pad_mode in ("valid", "pad") and _side_pairs(conv) is not None)

    @classmethod
    def from_conv(cls, conv):
        """The GEMM form of ``conv`` (see ``fits``), sharing its Parameters."""
        stride, padding = _side_pairs(conv)
        return cls(conv.weight, conv.bias if conv.has_bias else None, stride, padding)

    def construct(self, x):
        y = self.conv(x, self.weight, self.geometry)
        if self.has_bias:
            return ops.bias_add(y, self.bias)
        return y
