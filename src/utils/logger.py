"""Rank-aware logging for the entry scripts."""
import logging
import sys


def setup_logger(rank=0, level=logging.INFO):
    """Log to stdout as ``[time] [rank N] message``; ranks other than 0 log warnings only,
    so a distributed run prints one progress stream."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(f"[%(asctime)s] [rank {rank}] %(message)s",
                                           datefmt="%Y-%m-%d %H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(level if rank == 0 else logging.WARNING)
    return logging.getLogger("yolact")


def format_duration(seconds):
    """12345 -> '3:25:45'; days shown as '1d 2:03:04'."""
    seconds = int(max(seconds, 0))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{days}d {clock}" if days else clock
