"""``build_training``: everything a training step needs, built from the config in one place
(``train()``, the train-step benchmark and the tests all start here)."""
import dataclasses
import logging
from typing import Any, Optional

import mindspore as ms

from src.checkpoint import (GLOBAL_STEP_KEY, fit_summary, load_backbone_weights,
                            load_pretrained_weights)
from src.config.schema import TrainConfig
from src.losses.build import build_loss
from src.model.build import build_model
from src.train.ema import LIVE_PREFIX, WeightAverage
from src.train.lr_schedule import learning_rates, scale_for_batch_size
from src.train.optimizer import build_optimizer, optimizer_state
from src.train.train_step import build_grad_reducer, build_loss_scaler, make_train_step

logger = logging.getLogger("yolact")

# Checkpoint names of a dynamic loss scaler's Parameters.
SCALE_KEYS = ("loss_scale.value", "loss_scale.counter")


class TrainingError(RuntimeError):
    """Training cannot go on (bad input, diverged); the message says why and what was kept."""


@dataclasses.dataclass
class TrainingSetup:
    """The parts of a training run and the schedule they were built for.

    ``step(images, *targets) -> (total, terms, finite, scale)`` is the jitted train step
    (``src.train.train_step.make_train_step``).
    """
    schedule: TrainConfig        # config.train scaled to its batch_size
    last_iter: int               # the run stops at this iteration (run.stop_iter or max_iter)
    per_device_batch: int
    freeze_bn: bool
    model: Any
    loss_fn: Any
    optimizer: Any
    scaler: Any
    weight_average: Optional[WeightAverage]
    step: Any

    def state(self):
        """``training_state`` of this set-up, for checkpoints."""
        return training_state(self.model, self.optimizer, self.scaler, self.weight_average)

    def global_step(self):
        """The optimizer's step counter (it counts skipped steps too)."""
        return int(self.optimizer.global_step.asnumpy().reshape(-1)[0])


def training_state(model, optimizer, loss_scaler, weight_average=None):
    """(name, Parameter) pairs that together define where training is, for checkpoints
    (``src.checkpoint.save_training_checkpoint`` / ``resume_training``).

    With a weight average the model's names hold the average (what evaluation loads) and
    ``live.<name>`` the weights being trained.
    """
    model_params = list(model.parameters_and_names())
    if weight_average is None:
        state = model_params
    else:
        state = weight_average.named_averages()
        state += [(LIVE_PREFIX + name, param) for name, param in model_params]
        state.append((weight_average.num_updates.name, weight_average.num_updates))
    state += [(param.name, param) for param in optimizer_state(optimizer)]
    state.append((GLOBAL_STEP_KEY, optimizer.global_step))
    for key, param in zip(SCALE_KEYS, (getattr(loss_scaler, "scale_value", None),
                                       getattr(loss_scaler, "counter", None))):
        if isinstance(param, ms.Parameter):
            state.append((key, param))
    return state


def freezes_bn(setting, per_device_batch):
    """``train.freeze_bn``: the authors freeze BatchNorm when the per-device batch is below 6."""
    return setting == "yes" or (setting == "auto" and per_device_batch < 6)


def build_training(config, context):
    """Model, loss, optimizer, loss scaler, weight average and jitted step of ``config`` on
    the device and data-parallel group of ``context`` (a ``src.runtime.RunContext``).

    Seeds MindSpore with ``run.seed`` first, so the initial weights follow from it; loads
    ``run.backbone_ckpt``, then ``run.pretrained`` (which wins where both hold a weight) when
    set, before the weight average copies the weights. Loading draws no random numbers:
    the parameters it skips keep the init of a run without it.

    Raises:
        TrainingError: ``train.batch_size`` does not divide over the devices.
        CheckpointError: the backbone checkpoint does not fit, or the pretrained one
            matches no parameter.
    """
    total_batch = config.train.batch_size
    if total_batch % context.group_size:
        raise TrainingError(f"train.batch_size {total_batch} is not divisible by the "
                            f"{context.group_size} devices")
    per_device_batch = total_batch // context.group_size
    schedule = scale_for_batch_size(config.train)
    freeze_bn = freezes_bn(config.train.freeze_bn, per_device_batch)
    run = config.run
    last_iter = min(run.stop_iter, schedule.max_iter) if run.stop_iter else schedule.max_iter

    ms.set_seed(run.seed)
    model = build_model(config, context.device_target, freeze_bn=freeze_bn)
    if run.amp_level != "O0":
        model = ms.amp.auto_mixed_precision(model, run.amp_level)
    if run.backbone_ckpt:
        loaded = load_backbone_weights(model, run.backbone_ckpt)
        logger.info("backbone initialised from %s (%d tensors)", run.backbone_ckpt, loaded)
    if run.pretrained:
        fit = load_pretrained_weights(model, run.pretrained)
        for line in fit_summary(fit, run.pretrained):
            logger.info(line)
    model.set_train(True)
    loss_fn = build_loss(config, model)
    optimizer = build_optimizer(model.trainable_params(), learning_rates(schedule, last_iter),
                                schedule.momentum, schedule.weight_decay, schedule.optimizer)
    scaler = build_loss_scaler(run.loss_scale)
    weight_average = WeightAverage(model, schedule.ema_decay) if schedule.ema_decay else None
    reducer = build_grad_reducer(optimizer.parameters, context.distributed, context.group_size)
    step = make_train_step(model, loss_fn, optimizer, scaler, reducer, schedule.grad_clip_norm,
                           weight_average)
    return TrainingSetup(schedule, last_iter, per_device_batch, freeze_bn, model, loss_fn,
                         optimizer, scaler, weight_average, step)
