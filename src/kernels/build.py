"""Compile the C++ kernels of this folder once per machine and source version.

A library is ``<cache>/<name>-<hash>.so``; the hash covers the source and the headers of this
folder, the compiler command and the CPU's model and flags (``-march=native`` code only runs
where it was built), so a changed source or another machine gets its own file. The cache is
``$YOLACT_KERNEL_CACHE`` or ``~/.cache/yolact_mindspore/kernels``. A library is written to a
temporary file and renamed, so processes compiling at once (distributed ranks) never load
half a file.
"""
import ctypes
import functools
import glob
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile

SOURCE_DIR = os.path.dirname(os.path.abspath(__file__))
COMPILE_FLAGS = ("-O3", "-march=native", "-fopenmp", "-std=c++17", "-shared", "-fPIC")


class KernelBuildError(RuntimeError):
    """The C++ kernels could not be compiled."""


def cache_dir():
    return os.environ.get("YOLACT_KERNEL_CACHE",
                          os.path.join(os.path.expanduser("~"), ".cache", "yolact_mindspore",
                                       "kernels"))


def _cpu_signature():
    """The CPU's model name and flags as the kernel sees them (Linux), else the platform."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            lines = [line for line in cpuinfo if line.startswith(("model name", "flags"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor() + platform.machine()


def find_compiler():
    """Path of the C++ compiler (``$CXX``, default ``g++``), or None when it is not on PATH."""
    return shutil.which(os.environ.get("CXX", "g++"))


def _first_error(compiler_output):
    """The compiler's first error line (the rest follows from it), or its first line."""
    lines = [line.strip() for line in compiler_output.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or ["no output"])[0]


@functools.lru_cache(maxsize=None)
def library_path(name, link_flags=()):
    """Path of the compiled ``<name>.cc`` of this folder, compiling it if needed.

    ``link_flags`` (a tuple: include and library folders, libraries) follow the source on the
    compiler's command line and are part of the library's hash.

    Raises:
        KernelBuildError: no C++ compiler, an unwritable cache folder, or the compiler failed
            (its first error line is included).
    """
    source = os.path.join(SOURCE_DIR, name + ".cc")
    compiler = find_compiler()
    if compiler is None:
        raise KernelBuildError(
            f"the CPU kernels ({source}) need a C++ compiler with OpenMP (g++): none found on "
            "PATH (or set CXX). Install one, or build the model with model.kernels=portable "
            "(MindSpore primitives only, slower on CPU).")
    code = b""
    for path in [source] + sorted(glob.glob(os.path.join(SOURCE_DIR, "*.h"))):
        with open(path, "rb") as handle:
            code += handle.read()
    digest = hashlib.sha256(code + " ".join(COMPILE_FLAGS + link_flags).encode()
                            + compiler.encode()
                            + _cpu_signature().encode()).hexdigest()[:16]
    target = os.path.join(cache_dir(), f"{name}-{digest}.so")
    if os.path.exists(target):
        return target
    try:
        os.makedirs(cache_dir(), exist_ok=True)
        handle, temporary = tempfile.mkstemp(suffix=".so", dir=cache_dir())
    except OSError as error:
        raise KernelBuildError(
            f"cannot write the compiled CPU kernels to {cache_dir()} ({error.strerror}); set "
            "YOLACT_KERNEL_CACHE to a writable folder, or use model.kernels=portable") from None
    os.close(handle)
    try:
        result = subprocess.run([compiler, *COMPILE_FLAGS, "-o", temporary, source,
                                 *link_flags],
                                capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise KernelBuildError(f"compiling {source} failed ({compiler}): "
                                   f"{_first_error(result.stderr)}; use model.kernels=portable "
                                   f"to run without the CPU kernels")
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return target


def set_kernel_threads(path, threads):
    """Run the parallel regions of the library at ``path`` on ``threads`` threads
    (``threads.h``: not OMP_NUM_THREADS, which MindSpore sets to 1 for its child processes).
    The library is the one MindSpore loads for the Custom ops: a path is loaded once per
    process."""
    ctypes.CDLL(path).SetKernelThreads(int(threads))
