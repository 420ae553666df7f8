"""Process environment defaults that must be set before MindSpore is imported."""
import os


def set_cpu_env_defaults():
    """Default ``ONEDNN_MAX_CPU_ISA=AVX2`` without overriding a value the user set.

    On AVX-512 CPUs, MindSpore's oneDNN convolutions were measured 30-100x slower
    unless the ISA is capped at AVX2; on AVX2-only CPUs the setting changes nothing.
    oneDNN reads the variable once, when MindSpore loads, so entry points call this
    before ``import mindspore``.
    """
    os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
