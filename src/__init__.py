"""YOLACT / YOLACT++ in MindSpore.

Importing the package applies the CPU environment defaults (``src.runtime.set_cpu_env_defaults``)
before MindSpore creates its first CPU kernel, whichever module is imported first.
"""
from src.runtime import set_cpu_env_defaults

set_cpu_env_defaults()
