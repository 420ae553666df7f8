"""The one place where the C++ CPU kernels are chosen and put into a built model.

Models are built from plain cells (``nn.Conv2d``, the primitives DCN). ``resolve_kernels``
decides from ``model.kernels`` and the device whether the kernels are used (compiling them
first, so that a failure is known before anything is built, a missing BLAS included), and
``apply_cpu_kernels`` then swaps them in: every DCN switches to the C++ sampling kernel and
the BLAS matmul, every 3x3 stride-1 conv with bias outside the backbone becomes a
``WinogradConv2d`` and every other conv a ``GemmConv2d`` (BLAS sgemm products), both on the
same Parameters, except in the mask re-scoring net (``KEEPS_MINDSPORE_CONVS``). Names and
parameters stay those of the portable model, results equal it within float32 rounding.
"""
import functools
import warnings

from src.kernels.build import KernelBuildError, library_path, set_kernel_threads
from src.kernels.conv_gemm import GemmConv2d, conv_gemm_library
from src.kernels.winograd import WinogradConv2d
from src.model.dcn import ModulatedDeformConv2d
from src.runtime import kernel_threads, warn_if_wait_policy_came_late

LIBRARIES = ("winograd", "deform_im2col")
# The mask re-scoring net's convs (1-128 channels, stride 2, on ~100 small masks) are a
# hundred tiny products each: 1.2-5x slower as per-image sgemms than MindSpore's conv
# (bench/conv_gemm.py), so it keeps MindSpore's.
KEEPS_MINDSPORE_CONVS = ("maskiou_net",)


def resolve_kernels(setting, device_target):
    """Whether a model with ``model.kernels = setting`` runs the C++ CPU kernels on
    ``device_target``.

    ``auto``: on the CPU device when the kernels compile; any build failure (no compiler, no
    OpenMP, no BLAS wheel, a compile error) warns once and gives the portable model. ``cpu``:
    the kernels or an error. ``portable``: never. The kernels then run on
    ``src.runtime.kernel_threads()`` threads.

    Raises:
        KernelBuildError: ``cpu`` on another device, or the kernels failed to build.
    """
    if setting == "portable" or (setting == "auto" and device_target != "CPU"):
        return False
    if device_target != "CPU":
        raise KernelBuildError(f"model.kernels=cpu needs --device_target CPU, got "
                               f"{device_target}; use model.kernels=auto or portable")
    try:
        libraries = [library_path(name) for name in LIBRARIES] + [conv_gemm_library()]
    except KernelBuildError as error:
        if setting == "cpu":
            raise
        _warn_fallback(str(error).splitlines()[0])
        return False
    for path in libraries:
        set_kernel_threads(path, kernel_threads())
    warn_if_wait_policy_came_late()
    return True


@functools.lru_cache(maxsize=None)
def _warn_fallback(reason):
    warnings.warn(f"model.kernels=auto: the C++ CPU kernels are off, the model runs on "
                  f"MindSpore primitives (slower on CPU, same results): {reason}", stacklevel=3)


def apply_cpu_kernels(model):
    """Swap the C++ CPU kernels into a built ``Yolact`` in place (see the module docstring).

    Returns:
        the number of cells switched or replaced.
    """
    count = 0
    for _, cell in model.backbone.cells_and_names():
        if isinstance(cell, ModulatedDeformConv2d):
            cell.use_cpu_kernel()
            count += 1
    for child_name, child in model.name_cells().items():
        if child_name not in KEEPS_MINDSPORE_CONVS:
            count += _replace_convs(child, winograd=child_name != "backbone")
    return count


def _replace_convs(parent, winograd):
    """Replace every conv below ``parent`` by its Winograd form (when ``winograd`` and it
    fits) or its GEMM form (when it fits)."""
    count = 0
    for name, child in list(parent.name_cells().items()):
        if winograd and WinogradConv2d.fits(child):
            set_child(parent, name, WinogradConv2d.from_conv(child))
            count += 1
        elif GemmConv2d.fits(child):
            set_child(parent, name, GemmConv2d.from_conv(child))
            count += 1
        else:
            count += _replace_convs(child, winograd)
    return count


def set_child(parent, name, cell):
    """``parent.<name> = cell`` keeping the full names of the cell's Parameters (MindSpore
    renames them to ``<name>.<leaf>`` when a cell is assigned as an attribute)."""
    names = [(param, param.name) for param in cell.get_parameters()]
    if name.isdigit():
        parent[int(name)] = cell
    else:
        setattr(parent, name, cell)
    for param, full_name in names:
        param.name = full_name
