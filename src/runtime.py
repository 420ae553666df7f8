"""Where a process runs: CPU environment defaults, device, graph mode and the distributed
group. Importing the ``src`` package applies the CPU defaults (``set_cpu_env_defaults``);
MindSpore is imported inside the functions, so that they apply before it runs anything."""
import glob
import os
import sys
import warnings
from dataclasses import dataclass

DEVICE_TARGETS = ("Ascend", "GPU", "CPU")
ISA_VARIABLE, ISA_CAP = "ONEDNN_MAX_CPU_ISA", "AVX2"
WAIT_POLICY_VARIABLE, WAIT_POLICY = "OMP_WAIT_POLICY", "passive"
# oneDNN's dnnl_cpu_isa_t values carry this bit for every AVX-512 (and AVX10/AMX) level.
_AVX512_BIT = 0x20
_isa_warning_given = False
_wait_policy_came_late = False
_wait_policy_warning_given = False


def set_cpu_env_defaults():
    """Default ``ONEDNN_MAX_CPU_ISA=AVX2`` and ``OMP_WAIT_POLICY=passive`` without overriding
    a value the user set.

    On AVX-512 CPUs, MindSpore's oneDNN convolutions were measured 30-100x slower unless the
    ISA is capped at AVX2 (their plain NCHW layouts get a reference kernel); on AVX2-only CPUs
    the setting changes nothing. oneDNN reads the variable when MindSpore creates its first
    CPU kernel, after which it is too late: that case (MindSpore ran before ``src`` was
    imported) is detected and warned about once, with the fix.

    The C++ CPU kernels (``src/kernels``) run on OpenMP threads between MindSpore's kernels,
    which run on MindSpore's own pool. By default libgomp's threads spin after each parallel
    region and take the cores MindSpore's next kernels need; passive waiting was measured
    (2 cores, one process) to take R-50++'s forward at 550 from 0.94 to 0.81 s and the demo
    model's forward at batch 8 from 0.28 to 0.20 s. libgomp reads the variable when it is
    loaded, which ``import mindspore`` does: when it was loaded first,
    ``warn_if_wait_policy_came_late`` warns once the kernels are chosen.
    """
    global _wait_policy_came_late
    os.environ.setdefault(ISA_VARIABLE, ISA_CAP)
    if "mindspore" in sys.modules and os.environ[ISA_VARIABLE] == ISA_CAP:
        _warn_if_isa_is_above_the_cap()
    if WAIT_POLICY_VARIABLE not in os.environ:
        os.environ[WAIT_POLICY_VARIABLE] = WAIT_POLICY
        _wait_policy_came_late = _openmp_runtime_loaded()


def _openmp_runtime_loaded():
    """Whether the OpenMP runtime the kernels link (libgomp.so.1) is in the process."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            return any("/libgomp.so" in line for line in maps)
    except OSError:
        return "mindspore" in sys.modules


def warn_if_wait_policy_came_late():
    """Warn once when ``set_cpu_env_defaults`` set ``OMP_WAIT_POLICY`` after libgomp had read
    the environment (``import mindspore`` before ``import src``)."""
    global _wait_policy_warning_given
    if _wait_policy_came_late and not _wait_policy_warning_given:
        _wait_policy_warning_given = True
        warnings.warn(
            f"{WAIT_POLICY_VARIABLE}={WAIT_POLICY} came too late: the OpenMP runtime was "
            f"loaded (by importing mindspore) before src, so the C++ CPU kernels' threads "
            f"spin between kernels and slow MindSpore's own (R-50++ forward ~15% slower on 2 "
            f"cores); import src before mindspore, or set {WAIT_POLICY_VARIABLE}={WAIT_POLICY} "
            f"in the environment before starting Python", RuntimeWarning, stacklevel=4)


def effective_onednn_isa():
    """oneDNN's ``dnnl_cpu_isa_t`` in effect in this process (fixed from the first call on),
    or None when MindSpore's oneDNN library cannot be found."""
    import ctypes

    import mindspore

    path = os.path.join(os.path.dirname(mindspore.__file__), "lib", "libdnnl.so.3")
    try:
        library = ctypes.CDLL(path)
    except OSError:
        return None
    return int(library.dnnl_get_effective_cpu_isa())


def _warn_if_isa_is_above_the_cap():
    global _isa_warning_given
    isa = effective_onednn_isa()
    if isa is not None and isa & _AVX512_BIT and not _isa_warning_given:
        _isa_warning_given = True
        warnings.warn(
            f"{ISA_VARIABLE}={ISA_CAP} came too late: MindSpore already runs its CPU kernels "
            f"with AVX-512 in this process, where its convolutions are 30-100x slower; set "
            f"{ISA_VARIABLE}={ISA_CAP} in the environment before starting Python, or import "
            f"src before running any MindSpore op", RuntimeWarning, stacklevel=3)


def usable_cpus():
    """CPUs this process may run on (its affinity: a container's or taskset's share), which
    can be fewer than the host's."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def kernel_threads():
    """Threads of the C++ CPU kernels' parallel regions: this rank's share of the usable CPUs,
    the ranks of this host being LOCAL_WORKER_NUM (``scripts/run_distribute_train.sh`` exports
    it; a bad value is ``init_context``'s error to report, here it counts as 1)."""
    value = os.environ.get("LOCAL_WORKER_NUM", "")
    ranks = int(value) if value.isdigit() and int(value) > 0 else 1
    return max(1, usable_cpus() // ranks)


def add_device_argument(parser):
    """The ``--device_target`` flag every entry script takes."""
    parser.add_argument("--device_target", default="CPU", choices=DEVICE_TARGETS,
                        help="device; on GPU/Ascend DEVICE_ID picks the card")


class CompileDumps:
    """MindSpore writes ``rank_<r>/om/analyze_fail.ir`` into the working directory when a
    graph compile ends early, Ctrl+C included. Made before the run, ``remove_new`` removes
    the dumps that appeared since (and the folders they made), so an interrupt leaves
    nothing behind; dumps that were there before are kept."""

    PATTERN = os.path.join("rank_*", "om", "analyze_fail.ir")

    def __init__(self):
        self.before = set(glob.glob(self.PATTERN))

    def remove_new(self):
        for path in set(glob.glob(self.PATTERN)) - self.before:
            os.remove(path)
            for folder in (os.path.dirname(path), os.path.dirname(os.path.dirname(path))):
                if not os.listdir(folder):
                    os.rmdir(folder)


@dataclass(frozen=True)
class RunContext:
    """Where this process runs: its rank among ``group_size`` data-parallel workers, of which
    ``local_size`` share this host (and its CPUs)."""
    device_target: str
    distributed: bool
    rank: int = 0
    group_size: int = 1
    local_size: int = 1


def device_id_from_env(device_target):
    """The device chosen with DEVICE_ID (a rank-table launcher sets it per rank) on
    GPU/Ascend; None lets MindSpore pick (0, or msrun's choice).

    Raises:
        ValueError: DEVICE_ID is not a number.
    """
    value = os.environ.get("DEVICE_ID", "")
    if device_target == "CPU" or not value:
        return None
    if not value.isdigit():
        raise ValueError(f"DEVICE_ID '{value}': expected a device number")
    return int(value)


def local_size_from_env(group_size):
    """Ranks on this host: LOCAL_WORKER_NUM (msrun's --local_worker_num, which
    scripts/run_distribute_train.sh exports), else all ``group_size`` ranks.

    Raises:
        ValueError: LOCAL_WORKER_NUM is not a number from 1 to ``group_size``.
    """
    value = os.environ.get("LOCAL_WORKER_NUM", "")
    if not value:
        return group_size
    if not value.isdigit() or not 1 <= int(value) <= group_size:
        raise ValueError(f"LOCAL_WORKER_NUM '{value}': expected the number of ranks on this "
                         f"host, 1 to {group_size}")
    return int(value)


def init_context(device_target="CPU", distributed=False):
    """Graph mode on ``device_target`` (the card of ``DEVICE_ID`` on GPU/Ascend); with
    ``distributed``, join the collective group (HCCL with a rank table on Ascend, NCCL or the
    CPU collective under ``msrun``) and set data parallelism with averaged gradients.

    Raises:
        ValueError: an unknown device target or a bad DEVICE_ID.
    """
    if device_target not in DEVICE_TARGETS:
        raise ValueError(f"--device_target '{device_target}': expected one of "
                         f"{', '.join(DEVICE_TARGETS)}")
    import mindspore as ms
    from mindspore.communication import GlobalComm, get_group_size, get_rank, init

    if GlobalComm.INITED:
        # Joined earlier in this process (eval.py --distribute, before its Detector asks
        # again): the device is set, and MindSpore refuses to set it a second time.
        group_size = get_group_size()
        return RunContext(device_target, True, get_rank(), group_size,
                          local_size_from_env(group_size))
    ms.set_context(mode=ms.GRAPH_MODE)
    device_id = device_id_from_env(device_target)
    try:
        if device_id is None:
            ms.set_device(device_target)
        else:
            ms.set_device(device_target, device_id)
    except RuntimeError as error:
        # MindSpore's report runs to dozens of lines; its first says what is missing.
        raise ValueError(f"--device_target {device_target}: cannot use the device "
                         f"({str(error).strip().splitlines()[0]})") from None
    if not distributed:
        return RunContext(device_target, False)
    init()
    rank, group_size = get_rank(), get_group_size()
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL,
                                 gradients_mean=True, device_num=group_size)
    return RunContext(device_target, True, rank, group_size, local_size_from_env(group_size))
