"""The training loop over a ``build_training`` set-up: data, logging, checkpoints, resume and
the non-finite guard. ``train.py`` only parses arguments; every setting comes from the config
(``train`` for the optimisation, ``run`` for files, saving and logging)."""
import logging
import os
import re
import time

import numpy as np

from src.checkpoint import (checkpoint_path, list_checkpoints, read_checkpoint, resume_training,
                            rotate_checkpoints, save_training_checkpoint)
from src.config.schema import replace
from src.data.dataset import create_train_dataset, epoch_schedule
from src.data.mindrecord import read_dataset_info
from src.model.build import prior_boxes
from src.runtime import usable_cpus
from src.train.lr_schedule import learning_rate_at
from src.train.output_folder import best_checkpoint_path, prepare_output_folder
from src.train.run_record import MetricsLog, write_run_config
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

    Any error in the loop (a bad image, a full disk, ...) first saves where training is,
    as Ctrl+C does, then stops with one line naming the error and the checkpoint.

    Raises:
        TrainingError: ``run.mindrecord_dir`` is not set, the data set does not fit the
            config, the batch does not divide over the devices, the loss stayed non-finite,
            or the loop stopped on an error.
        OutputFolderError: the output folder holds another run or cannot hold a checkpoint.
    """
    run = config.run
    if not run.mindrecord_dir:
        raise TrainingError("run.mindrecord_dir is not set: pass --mindrecord_dir, the "
                            "--output_dir of create_mindrecord.py")
    info = read_dataset_info(run.mindrecord_dir, "train")
    check_dataset_classes(config, info, run.mindrecord_dir)
    settings = config    # as given: config.yaml records these, not this host's worker cap
    config = fit_workers(config, context)
    validator = None
    if run.eval_every and context.rank == 0:
        from src.evaluation.validation import TrainingValidator
        validator = TrainingValidator(config, run.mindrecord_dir, run.eval_images,
                                      context.device_target)
    setup = build_training(config, context)
    schedule, last_iter, per_device_batch = setup.schedule, setup.last_iter, setup.per_device_batch
    num_images = info["num_images"]
    _, samples_per_epoch = epoch_schedule(num_images, per_device_batch, run.seed,
                                          context.rank, context.group_size)
    segment = max(1, min(PIPELINE_ITERATIONS,
                         PIPELINE_EPOCHS * samples_per_epoch // per_device_batch))
    folder = output_dir(config)
    writer = _CheckpointWriter(run, folder, config.name, setup, context.rank)
    start_iter = 0
    resume_path = _resume_path(run.resume, folder, config.name)
    if resume_path:
        start_iter = resume_training(resume_path, setup.state())
        writer.last_path, writer.last_iteration = resume_path, start_iter
    if writer.writes:
        checkpoint_bytes = sum(param.nbytes for _, param in setup.state())
        moved_to = prepare_output_folder(writer.folder, config.name, run.resume, run.overwrite,
                                         checkpoint_bytes)
        if moved_to:
            logger.info("the earlier run's files were moved to %s", moved_to)
    metrics_log = None
    if context.rank == 0:
        moved_to = write_run_config(folder, settings, start_iter)
        if moved_to:
            logger.info("the settings changed: the earlier config.yaml was moved to %s", moved_to)
        metrics_log = MetricsLog(folder)
    best = _BestCheckpoint(validator, folder, config.name, setup, metrics_log)
    if resume_path:
        logger.info("resumed from %s at iteration %d", resume_path, start_iter)
    decay = (f"steps {list(schedule.lr_steps)}" if schedule.lr_decay == "step"
             else f"{schedule.lr_decay} decay")
    stop = f", stopping at {last_iter}" if last_iter < schedule.max_iter else ""
    logger.info("%s: %d images, batch %d (%d per device, BN %s), %d iterations%s, lr %.2e, %s",
                config.name, num_images, schedule.batch_size, per_device_batch,
                "frozen" if setup.freeze_bn else "trained", schedule.max_iter, stop,
                schedule.lr, decay)

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
                              setup.loss_fn.TERM_NAMES, nonfinite, metrics_log)
                if iteration % run.save_every == 0 and nonfinite == 0:
                    writer.save(iteration)
                if validator and nonfinite == 0 and (iteration % run.eval_every == 0
                                                     or iteration == last_iter):
                    best.evaluate(iteration)
                    clock.restart()
                if iteration >= last_iter:
                    break
        writer.save_unsaved(iteration, nonfinite)
    except TrainingError:
        raise
    except (KeyboardInterrupt, Exception) as error:
        if setup.global_step() > steps_run:
            # The stop landed after the step's graph had run (and updated the weights) but
            # before the loop counted the step: count it, so that the checkpoint resumes exactly.
            iteration, nonfinite = iteration + 1, 0
        saved = _save_on_stop(writer, iteration, nonfinite)
        if isinstance(error, KeyboardInterrupt):
            logger.warning("interrupted at iteration %d; resume with --resume auto", iteration)
            raise
        raise TrainingError(f"training stopped at iteration {iteration}: {one_line(error)}; "
                            f"{saved}") from error
    return writer.last_path


def check_dataset_classes(config, info, mindrecord_dir):
    """The data set's classes must be the config's, in order: labels index both."""
    names = tuple(info.get("class_names", ()))
    if names != config.data.class_names:
        raise TrainingError(
            f"{mindrecord_dir}: its train split has the classes {_listed(names)}, config "
            f"'{config.name}' has data.class_names {_listed(config.data.class_names)}; train "
            f"with a config of this data set's classes (src.config.variants.for_dataset)")


def pipeline_workers(requested, cpus, local_size):
    """``data.num_parallel_workers`` capped by this rank's share of ``cpus`` (``local_size``
    ranks share them), at least 1. More workers than CPUs only contend (and MindSpore refuses
    more than the host has); the augmentation draws follow the sample, not the worker, so the
    data are the same whatever the count."""
    return max(1, min(requested, cpus // local_size))


def fit_workers(config, context):
    """``config`` with ``data.num_parallel_workers`` fitted to this rank's CPUs; logs a cap."""
    requested, cpus = config.data.num_parallel_workers, usable_cpus()
    workers = pipeline_workers(requested, cpus, context.local_size)
    if workers == requested:
        return config
    shared = f", shared by {context.local_size} ranks" if context.local_size > 1 else ""
    logger.info("data.num_parallel_workers %d capped to %d: this process may use %d CPU(s)%s",
                requested, workers, cpus, shared)
    return replace(config, **{"data.num_parallel_workers": workers})


def _listed(names):
    shown = ", ".join(names[:4]) + (f", ... ({len(names)} in all)" if len(names) > 4 else "")
    return f"[{shown}]"


def one_line(error):
    """One line for an error that stopped training. A data pipeline error comes wrapped in
    MindSpore's report: its Python error line (e.g. ``DatasetError: x.jpg: ...``) is kept."""
    text = str(error) or type(error).__name__
    raised = re.findall(r"^\s*([\w.]*Error): (.+)$", text, re.MULTILINE)
    if len(text.splitlines()) > 1 and raised:
        return raised[-1][1].strip()
    return text.splitlines()[0].strip()


def _save_on_stop(writer, iteration, nonfinite):
    """Save where a stopped run is, when there is something new and sound to save; returns
    what the user should know about the checkpoints."""
    try:
        writer.save_unsaved(iteration, nonfinite)
    except OSError as error:
        return (f"saving iteration {iteration} failed too ({error.strerror}); the last "
                f"checkpoint is {writer.last_path or 'none'}")
    if writer.last_path:
        return f"the last checkpoint is {writer.last_path}; continue with --resume auto"
    return "no checkpoint was written"


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
        # The last checkpoint written or resumed from, and its iteration (0: none yet).
        self.last_path, self.last_iteration = None, 0

    def save_unsaved(self, iteration, nonfinite):
        """Save ``iteration`` unless it is the last checkpoint's, or its step was skipped as
        not finite (``nonfinite`` > 0)."""
        if nonfinite == 0 and iteration != self.last_iteration:
            self.save(iteration)

    def save(self, iteration):
        path = checkpoint_path(self.folder, self.name, iteration)
        if self.writes:
            save_training_checkpoint(path, self.setup.state(), iteration)
            rotate_checkpoints(self.folder, self.name, self.run.keep_last)
            logger.info("saved %s", path)
        self.last_path, self.last_iteration = path, iteration


class _BestCheckpoint:
    """Validation while training: evaluates, logs the AP table and its metrics line, and
    keeps the training state of the best mask AP as ``<name>_best.ckpt`` (with the AP in the
    file, so a resumed run knows the best so far)."""

    AP_KEY = "best_mask_ap"

    def __init__(self, validator, folder, name, setup, metrics_log):
        self.validator, self.setup, self.metrics_log = validator, setup, metrics_log
        self.path = best_checkpoint_path(folder, name)
        self.best_ap = -1.0
        if validator and os.path.isfile(self.path):
            self.best_ap = float(read_checkpoint(self.path)[self.AP_KEY].asnumpy())

    def evaluate(self, iteration):
        from src.evaluation.validation import mask_ap
        metrics, table, seconds = self.validator.evaluate(self.setup.state())
        count = len(self.validator.image_ids)
        logger.info("validation at iteration %d (%d images, %.1f s):\n%s", iteration, count,
                    seconds, table)
        self.metrics_log.evaluation(iteration, count, metrics, seconds)
        score = mask_ap(metrics)
        if score > self.best_ap:
            save_training_checkpoint(self.path, self.setup.state(), iteration,
                                     **{self.AP_KEY: score})
            logger.info("best mask AP so far (%.2f, was %s): saved %s", score * 100,
                        f"{self.best_ap * 100:.2f}" if self.best_ap >= 0 else "none", self.path)
            self.best_ap = score


class _Throughput:
    """Seconds per step over the recent steps (the first step includes graph compilation)."""

    def __init__(self, batch_size, window=20):
        self.batch_size, self.window = batch_size, window
        self.restart()

    def restart(self):
        """Forget the steps so far (after an evaluation, which is no step's time)."""
        self.stamps = [time.time()]

    def tick(self):
        self.stamps = (self.stamps + [time.time()])[-(self.window + 1):]

    def seconds_per_step(self):
        if len(self.stamps) < 2:
            return float("nan")
        return (self.stamps[-1] - self.stamps[0]) / (len(self.stamps) - 1)


def _log_step(iteration, schedule, last_iter, terms, total, scale, clock, names, nonfinite,
              metrics_log):
    values = terms.asnumpy()
    parts = " ".join(f"{name} {value:.3f}" for name, value in zip(names, values))
    lr = learning_rate_at(iteration - 1, schedule)
    sec = clock.seconds_per_step()
    eta = format_duration(sec * (last_iter - iteration)) if np.isfinite(sec) else "?"
    skipped = f" | skipped {nonfinite}" if nonfinite else ""
    total, scale = float(total.asnumpy()), float(scale.asnumpy())
    logger.info("iter %d/%d | %s | total %.3f | lr %.2e | scale %g | %.2f s/step | %.1f img/s | "
                "ETA %s%s", iteration, last_iter, parts, total, lr, scale, sec,
                clock.batch_size / sec, eta, skipped)
    if metrics_log:
        metrics_log.training(iteration, values, total, lr, scale, sec, clock.batch_size)
