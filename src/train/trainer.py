"""The training loop: data, model, loss, optimizer and the jitted step, with logging,
checkpoints, resume and the non-finite guard. ``train.py`` only parses arguments."""
import dataclasses
import logging
import os
import time

import numpy as np
import mindspore as ms

from src.data.dataset import create_train_dataset, epoch_schedule
from src.data.mindrecord import read_dataset_info
from src.losses.build import build_loss
from src.model.build import build_model, prior_boxes
from src.train.checkpoint import (checkpoint_path, list_checkpoints, load_backbone_weights,
                                  resume_training, rotate_checkpoints, save_training_checkpoint)
from src.train.ema import WeightAverage
from src.train.lr_schedule import learning_rate_at, learning_rates, scale_for_batch_size
from src.train.optimizer import build_optimizer
from src.train.train_step import build_grad_reducer, build_loss_scaler, make_train_step
from src.utils.logger import format_duration

logger = logging.getLogger("yolact")

# Iterations and epochs served by one data pipeline; a new one (cheap) takes over after.
PIPELINE_ITERATIONS = 5000
PIPELINE_EPOCHS = 20


class TrainingError(RuntimeError):
    """Training cannot go on (bad input, diverged); the message says why and what was kept."""


@dataclasses.dataclass(frozen=True)
class TrainOptions:
    """Run options that are not part of the model config (``train.py`` flags)."""
    mindrecord_dir: str
    output_dir: str = "output"
    batch_size: int = 8                 # total over all devices
    max_iter: int = 0                   # 0: the config's (scaled) schedule
    backbone_ckpt: str = ""
    resume: str = ""                    # a checkpoint path, or "auto": the newest in output_dir
    save_every: int = 10000
    keep_last: int = 3
    log_every: int = 10
    seed: int = 0
    num_workers: int = 0                # 0: the config's data.num_parallel_workers
    loss_scale: str = "dynamic"
    amp_level: str = "O0"
    max_nonfinite_steps: int = 20       # consecutive skipped steps before giving up
    save_all_ranks: bool = False        # every rank saves (rank r > 0 in output_dir/rank_r),
                                        # to check that data-parallel replicas agree


def resolve_freeze_bn(setting, per_device_batch):
    """The authors freeze BatchNorm when the per-device batch is below 6."""
    if setting == "auto":
        return per_device_batch < 6
    if setting in ("yes", "no"):
        return setting == "yes"
    raise TrainingError(f"train.freeze_bn '{setting}': expected auto, yes or no")


def train(config, options, context):
    """Train ``config`` and return the path of the last checkpoint written."""
    if options.batch_size % context.group_size:
        raise TrainingError(f"--batch_size {options.batch_size} is not divisible by the "
                            f"{context.group_size} devices")
    per_device_batch = options.batch_size // context.group_size
    schedule = scale_for_batch_size(config.train, options.batch_size)
    if options.max_iter:
        schedule = dataclasses.replace(schedule, max_iter=options.max_iter)
    freeze_bn = resolve_freeze_bn(config.train.freeze_bn, per_device_batch)
    num_images = read_dataset_info(options.mindrecord_dir, "train")["num_images"]
    _, samples_per_epoch = epoch_schedule(num_images, per_device_batch, options.seed,
                                          context.rank, context.group_size)
    segment = max(1, min(PIPELINE_ITERATIONS,
                         PIPELINE_EPOCHS * samples_per_epoch // per_device_batch))

    ms.set_seed(options.seed)
    model = build_model(config, freeze_bn=freeze_bn)
    if options.amp_level != "O0":
        model = ms.amp.auto_mixed_precision(model, options.amp_level)
    if options.backbone_ckpt:
        loaded = load_backbone_weights(model, options.backbone_ckpt)
        logger.info("backbone initialised from %s (%d tensors)", options.backbone_ckpt, loaded)
    model.set_train(True)
    loss_fn = build_loss(config, model)
    optimizer = build_optimizer(model.trainable_params(), learning_rates(schedule),
                                schedule.momentum, schedule.weight_decay, schedule.optimizer)
    scaler = build_loss_scaler(options.loss_scale)
    weight_average = WeightAverage(model, schedule.ema_decay) if schedule.ema_decay else None
    step = make_train_step(model, loss_fn, optimizer, scaler,
                           build_grad_reducer(optimizer.parameters, context.distributed,
                                              context.group_size),
                           schedule.grad_clip_norm, weight_average)

    start_iter = 0
    resume_path = _resume_path(options, config.name)
    if resume_path:
        start_iter = resume_training(resume_path, model, optimizer, scaler, weight_average)
        logger.info("resumed from %s at iteration %d", resume_path, start_iter)
    decay = (f"steps {list(schedule.lr_steps)}" if schedule.lr_decay == "step"
             else f"{schedule.lr_decay} decay")
    logger.info("%s: %d images, batch %d (%d per device, BN %s), %d iterations, lr %.2e, %s",
                config.name, num_images, options.batch_size, per_device_batch,
                "frozen" if freeze_bn else "trained", schedule.max_iter, schedule.lr, decay)

    writer = _CheckpointWriter(options, config.name, model, optimizer, scaler, weight_average,
                               context.rank)
    priors = prior_boxes(config)
    iteration = start_iter
    nonfinite = 0
    clock = _Throughput(options.batch_size)
    steps_run = _global_step(optimizer)   # the optimizer's step counter after the counted iterations
    try:
        while iteration < schedule.max_iter:
            dataset = create_train_dataset(
                config, options.mindrecord_dir, per_device_batch, priors, seed=options.seed,
                start_iteration=iteration,
                num_iterations=min(segment, schedule.max_iter - iteration),
                rank=context.rank, group_size=context.group_size,
                num_workers=options.num_workers or None)
            for batch in dataset.create_tuple_iterator(num_epochs=1):
                total, terms, finite, scale = step(*batch)
                is_finite = bool(finite.asnumpy())
                iteration, steps_run = iteration + 1, steps_run + 1
                nonfinite = 0 if is_finite else nonfinite + 1
                if nonfinite > options.max_nonfinite_steps:
                    raise TrainingError(
                        f"the loss or its gradients were not finite for {nonfinite} steps in a "
                        f"row (iteration {iteration}); stopped. The last good checkpoint is "
                        f"{writer.last_path or 'none (no checkpoint was written yet)'}")
                clock.tick()
                if iteration % options.log_every == 0 or iteration == schedule.max_iter:
                    _log_step(iteration, schedule, terms, total, scale, clock,
                              loss_fn.TERM_NAMES, nonfinite)
                if iteration % options.save_every == 0 and nonfinite == 0:
                    writer.save(iteration)
                if iteration >= schedule.max_iter:
                    break
    except KeyboardInterrupt:
        if _global_step(optimizer) > steps_run:
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


def _global_step(optimizer):
    return int(optimizer.global_step.asnumpy().reshape(-1)[0])


def _resume_path(options, name):
    if options.resume != "auto":
        return options.resume
    found = list_checkpoints(options.output_dir, name)
    return found[-1] if found else ""


class _CheckpointWriter:
    """Saves on rank 0 only (the ranks hold identical weights), then rotates old files;
    with ``save_all_ranks`` rank r > 0 also saves, in ``output_dir/rank_r``."""

    def __init__(self, options, name, model, optimizer, scaler, weight_average, rank):
        self.options, self.name = options, name
        self.model, self.optimizer, self.scaler = model, optimizer, scaler
        self.weight_average = weight_average
        self.writes = rank == 0 or options.save_all_ranks
        self.output_dir = (os.path.join(options.output_dir, f"rank_{rank}")
                           if rank > 0 and options.save_all_ranks else options.output_dir)
        self.last_path, self.last_iteration = None, None

    def save(self, iteration):
        path = checkpoint_path(self.output_dir, self.name, iteration)
        if self.writes:
            save_training_checkpoint(path, self.model, self.optimizer, self.scaler, iteration,
                                     self.weight_average)
            rotate_checkpoints(self.output_dir, self.name, self.options.keep_last)
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


def _log_step(iteration, schedule, terms, total, scale, clock, names, nonfinite):
    values = terms.asnumpy()
    parts = " ".join(f"{name} {value:.3f}" for name, value in zip(names, values))
    lr = learning_rate_at(iteration - 1, schedule)
    sec = clock.seconds_per_step()
    eta = format_duration(sec * (schedule.max_iter - iteration)) if np.isfinite(sec) else "?"
    skipped = f" | skipped {nonfinite}" if nonfinite else ""
    logger.info("iter %d/%d | %s | total %.3f | lr %.2e | scale %g | %.2f s/step | %.1f img/s | "
                "ETA %s%s", iteration, schedule.max_iter, parts, float(total.asnumpy()), lr,
                float(scale.asnumpy()), sec, clock.batch_size / sec, eta, skipped)
