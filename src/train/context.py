"""Device, execution mode and distributed set-up for the entry scripts."""
from dataclasses import dataclass

import mindspore as ms
from mindspore.communication import get_group_size, get_rank, init

DEVICE_TARGETS = ("Ascend", "GPU", "CPU")


@dataclass(frozen=True)
class RunContext:
    """Where this process runs: its rank among ``group_size`` data-parallel workers."""
    device_target: str
    distributed: bool
    rank: int = 0
    group_size: int = 1


def init_context(device_target="CPU", distributed=False, device_id=None):
    """Graph mode on ``device_target``; with ``distributed``, join the collective group
    (HCCL with a rank table on Ascend, NCCL or the CPU collective under ``msrun``) and set
    data parallelism with averaged gradients.

    Raises:
        ValueError: an unknown device target.
    """
    if device_target not in DEVICE_TARGETS:
        raise ValueError(f"--device_target '{device_target}': expected one of "
                         f"{', '.join(DEVICE_TARGETS)}")
    ms.set_context(mode=ms.GRAPH_MODE)
    if device_id is None:
        ms.set_device(device_target)
    else:
        ms.set_device(device_target, device_id)
    if not distributed:
        return RunContext(device_target, False)
    init()
    rank, group_size = get_rank(), get_group_size()
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL,
                                 gradients_mean=True, device_num=group_size)
    return RunContext(device_target, True, rank, group_size)
