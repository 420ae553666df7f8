"""The training loop over a ``build_training`` set-up: data, logging, checkpoints, resume and
the non-finite guard. ``train.py`` only parses arguments; every setting comes from the config
(``train`` for the optimisation, ``run`` for files, saving and logging)."""
import logging
import os
import time

import numpy as np

from src.checkpoint import (checkpoint_path, list_checkpoints, resume_training,
                            rotate_checkpoints, save_training_checkpoint)
from src.data.dataset import create_train_dataset, epoch_schedule
from src.data.mindrecord import read_dataset_info
from src.model.build import prior_boxes
from src.train.lr_schedule import learning_rate_at
from src.train.setup import TrainingError, build_training
from src.utils.logger import format_duration

logger = logging.getLogger("yolact")

# Iterations and epochs served by one data pipeline; a new one (cheap) takes over after.
PIPELINE_ITERATIONS = 5000
PIPELINE_EPOCHS = 20


def output_dir(config):
    """``run.output_dir``, or ``output/<config name>`` when it is empty."""
    return config.run.output_dir or os.path.join("output", config.name)


def train(config, context):
    """Train ``config`` and return the path of the last checkpoint written.

    Raises:
        TrainingError: ``run.mindrecord_dir`` is not set, the batch does not divide over the
            devices, or the loss stayed non-finite.
    """
    run = config.run
    if not run.mindrecord_dir:
        raise TrainingError("run.mindrecord_dir is not set: pass --mindrecord_dir, the "
                            "--output_dir of create_mindrecord.py")
    setup = build_training(config, context)
    schedule, last_iter, per_device_batch = setup.schedule, setup.last_iter, setup.per_device_batch
    num_images = read_dataset_info(run.mindrecord_dir, "train")["num_images"]
    _, samples_per_epoch = epoch_schedule(num_images, per_device_batch, run.seed,
                                          context.rank, context.group_size)
    segment = max(1, min(PIPELINE_ITERATIONS,
                         PIPELINE_EPOCHS * samples_per_epoch // per_device_batch))
    folder = output_dir(config)

    start_iter = 0
    resume_path = _resume_path(run.resume, folder, config.name)
    if resume_path:
        start_iter = resume_training(resume_path, setup.state())
        logger.info("resumed from %s at iteration %d", resume_path, start_iter)
    decay = (f"steps {list(schedule.lr_steps)}" if schedule.lr_decay == "step"
             else f"{schedule.lr_decay} decay")
    stop = f", stopping at {last_iter}" if last_iter < schedule.max_iter else ""
    logger.info("%s: %d images, batch %d (%d per device, BN %s), %d iterations%s, lr %.2e, %s",
                config.name, num_images, schedule.batch_size, per_device_batch,
                "frozen" if setup.freeze_bn else "trained", schedule.max_iter, stop,
                schedule.lr, decay)

    writer = _CheckpointWriter(run, folder, config.name, setup, context.rank)
    priors = prior_boxes(config)
    iteration = start_iter
    nonfinite = 0
    clock = _Throughput(schedule.batch_size)
    steps_run = setup.global_step()   # the optimizer's step counter after the counted iterations
    try:
        while iteration < last_iter:
            dataset = create_train_dataset(
                config, run.mindrecord_dir, per_device_batch, priors, seed=run.seed,
                start_iteration=iteration, num_iterations=min(segment, last_iter - iteration),
                rank=context.rank, group_size=context.group_size)
            for batch in dataset.create_tuple_iterator(num_epochs=1):
                total, terms, finite, scale = setup.step(*batch)
                is_finite = bool(finite.asnumpy())
                iteration, steps_run = iteration + 1, steps_run + 1
                nonfinite = 0 if is_finite else nonfinite + 1
                if nonfinite > run.max_nonfinite_steps:
                    raise TrainingError(
                        f"the loss or its gradients were not finite for {nonfinite} steps in a "
                        f"row (iteration {iteration}); stopped. The last good checkpoint is "
                        f"{writer.last_path or 'none (no checkpoint was written yet)'}")
                clock.tick()
                if iteration % run.log_every == 0 or iteration == last_iter:
                    _log_step(iteration, schedule, last_iter, terms, total, scale, clock,
                              setup.loss_fn.TERM_NAMES, nonfinite)
                if iteration % run.save_every == 0 and nonfinite == 0:
                    writer.save(iteration)
                if iteration >= last_iter:
                    break
    except KeyboardInterrupt:
        if setup.global_step() > steps_run:
            # Ctrl+C landed after the step's graph had run (and updated the weights) but
            # before the loop counted the step: count it, so that the checkpoint resumes exactly.
            iteration, nonfinite = iteration + 1, 0
        if nonfinite == 0 and iteration > start_iter:
            writer.save(iteration)
        logger.warning("interrupted at iteration %d; resume with --resume auto", iteration)
        raise
    if iteration > start_iter and nonfinite == 0 and writer.last_iteration != iteration:
        writer.save(iteration)
    return writer.last_path


def _resume_path(resume, folder, name):
    if resume != "auto":
        return resume
    found = list_checkpoints(folder, name)
    return found[-1] if found else ""


class _CheckpointWriter:
    """Saves on rank 0 only (the ranks hold identical weights), then rotates old files;
    with ``run.save_all_ranks`` rank r > 0 also saves, in ``<output_dir>/rank_r``."""

    def __init__(self, run, folder, name, setup, rank):
        self.run, self.name, self.setup = run, name, setup
        self.writes = rank == 0 or run.save_all_ranks
        self.folder = (os.path.join(folder, f"rank_{rank}") if rank > 0 and run.save_all_ranks
                       else folder)
        self.last_path, self.last_iteration = None, None

    def save(self, iteration):
        path = checkpoint_path(self.folder, self.name, iteration)
        if self.writes:
            save_training_checkpoint(path, self.setup.state(), iteration)
            rotate_checkpoints(self.folder, self.name, self.run.keep_last)
            logger.info("saved %s", path)
        self.last_path, self.last_iteration = path, iteration


class _Throughput:
    """Seconds per step over the recent steps (the first step includes graph compilation)."""

    def __init__(self, batch_size, window=20):
        self.batch_size, self.window = batch_size, window
        self.stamps = [time.time()]

    def tick(self):
        self.stamps = (self.stamps + [time.time()])[-(self.window + 1):]

    def seconds_per_step(self):
        if len(self.stamps) < 2:
            return float("nan")
        return (self.stamps[-1] - self.stamps[0]) / (len(self.stamps) - 1)


def _log_step(iteration, schedule, last_iter, terms, total, scale, clock, names, nonfinite):
    values = terms.asnumpy()
    parts = " ".join(f"{name} {value:.3f}" for name, value in zip(names, values))
    lr = learning_rate_at(iteration - 1, schedule)
    sec = clock.seconds_per_step()
    eta = format_duration(sec * (last_iter - iteration)) if np.isfinite(sec) else "?"
    skipped = f" | skipped {nonfinite}" if nonfinite else ""
    logger.info("iter %d/%d | %s | total %.3f | lr %.2e | scale %g | %.2f s/step | %.1f img/s | "
                "ETA %s%s", iteration, last_iter, parts, float(total.asnumpy()), lr,
                float(scale.asnumpy()), sec, clock.batch_size / sec, eta, skipped)
