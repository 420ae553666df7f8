"""What a training run leaves besides checkpoints, for people and tools: ``metrics.jsonl`` (one
JSON object per log interval and per evaluation; ``tools/plot_metrics.py`` draws it) and
``config.yaml`` (every setting of the run, loadable again with ``--config``).

Both are only ever added to: a resumed run appends its lines after the earlier ones (so an
iteration logged after the checkpoint it resumed from appears twice; readers keep the later
line), and a config that changed on resume moves the earlier ``config.yaml`` aside.
"""
import json
import os
import time

from src.config.load import config_to_yaml
from src.config.schema import replace
from src.utils.files import write_text_atomic

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.yaml"
# Every file of these names in an output folder is a run's record (moved with its checkpoints).
RECORD_PATTERNS = (METRICS_FILE, CONFIG_FILE, "config.before_*.yaml")
# The loss terms in the order of ``MultiBoxLoss.TERM_NAMES`` (B, C, M, S, I), spelled out.
LOSS_KEYS = ("box", "class", "mask", "semantic", "maskiou")


class MetricsLog:
    """Appends records to ``<folder>/metrics.jsonl``, one line each, flushed as written."""

    def __init__(self, folder):
        self.path = os.path.join(folder, METRICS_FILE)

    def _append(self, record):
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({**record, "time": round(time.time(), 3)}) + "\n")

    def training(self, iteration, terms, total, lr, loss_scale, seconds_per_step, batch_size):
        """A log interval: the five weighted loss terms ([5], ``TERM_NAMES`` order), their
        total, the lr of the last step, the loss scale and the recent speed."""
        self._append({
            "kind": "train", "iteration": int(iteration),
            "losses": {key: float(value) for key, value in zip(LOSS_KEYS, terms)},
            "total": float(total), "lr": float(lr), "loss_scale": float(loss_scale),
            "sec_per_step": _finite(seconds_per_step),
            "img_per_sec": _finite(batch_size / seconds_per_step)})

    def evaluation(self, iteration, num_images, metrics, seconds):
        """An evaluation: ``{"bbox": {AP, ...}, "segm": {...}}`` as fractions (-1: undefined)."""
        self._append({"kind": "eval", "iteration": int(iteration), "images": int(num_images),
                      "bbox": metrics["bbox"], "segm": metrics["segm"],
                      "seconds": round(float(seconds), 3)})


def _finite(value):
    """JSON has no NaN: the speed of a run's first step (no interval yet) is null."""
    value = float(value)
    return value if value == value and abs(value) != float("inf") else None


def write_run_config(folder, config, start_iteration):
    """Write ``<folder>/config.yaml`` for ``config`` (with ``run.resume`` and ``run.overwrite``
    cleared: they say how this process started, not what the run is).

    An existing file with other settings (a resume with changed options) is moved to
    ``config.before_<start_iteration>.yaml`` first, never overwritten.

    Returns:
        the path the earlier file was moved to, or None.
    """
    path = os.path.join(folder, CONFIG_FILE)
    text = config_to_yaml(replace(config, **{"run.resume": "", "run.overwrite": False}))
    moved_to = None
    if os.path.exists(path):
        with open(path, encoding="utf-8") as handle:
            if handle.read() == text:
                return None
        moved_to = _unused_name(os.path.join(folder, f"config.before_{start_iteration}"), ".yaml")
        os.replace(path, moved_to)
    write_text_atomic(path, text)
    return moved_to


def _unused_name(stem, suffix):
    path, number = stem + suffix, 1
    while os.path.exists(path):
        number += 1
        path = f"{stem}_{number}{suffix}"
    return path
