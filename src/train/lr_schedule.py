"""Learning-rate schedule: linear warmup, then step decay (the authors' train.py) or cosine."""
import dataclasses

import numpy as np

LR_DECAYS = ("step", "cosine")


def scale_for_batch_size(train_config, batch_size):
    """The authors' ``--autoscale``: for a total batch other than the one the schedule is
    stated for (``train_config.batch_size``, 8 in the authors' configs), scale the lr by the
    ratio and divide ``max_iter`` and ``lr_steps`` by it (floored); the warmup is not scaled.

    Args:
        train_config: a ``TrainConfig``.
        batch_size: the total batch over all devices.

    Returns:
        a ``TrainConfig`` with ``batch_size``, ``lr``, ``max_iter`` and ``lr_steps`` replaced.
    """
    factor = batch_size / train_config.batch_size
    if factor == 1:
        return dataclasses.replace(train_config, batch_size=batch_size)
    return dataclasses.replace(
        train_config, batch_size=batch_size, lr=train_config.lr * factor,
        max_iter=int(train_config.max_iter // factor),
        lr_steps=tuple(int(step // factor) for step in train_config.lr_steps))


def learning_rate_at(iteration, train_config):
    """The lr used by the update of 0-based ``iteration``, as the authors' loop sets it.

    Each iteration their loop first sets the warmup value
    ``(lr - warmup_init) * it / warmup_iters + warmup_init`` while ``it <= warmup_iters``,
    then, at the first iteration ``>= step`` of each lr step, ``lr * gamma ** steps_passed``;
    the value persists until the next set. So after the warmup the lr is
    ``lr * gamma ** steps_passed`` when the latest step came at or after the warmup's end,
    and plain ``lr`` when every step so far fell inside the warmup (only tiny schedules
    have that).

    ``lr_decay="cosine"`` keeps the same warmup, then follows half a cosine from ``lr`` at
    ``warmup_iters`` to 0 at ``max_iter`` (``lr_steps`` unused).
    """
    cfg = train_config
    if cfg.lr_decay not in LR_DECAYS:
        raise ValueError(f"train.lr_decay '{cfg.lr_decay}': expected one of {', '.join(LR_DECAYS)}")
    in_warmup = cfg.warmup_iters > 0 and iteration <= cfg.warmup_iters
    warmup_lr = (cfg.warmup_init_lr
                 + (cfg.lr - cfg.warmup_init_lr) * iteration / max(cfg.warmup_iters, 1))
    if cfg.lr_decay == "cosine":
        if in_warmup:
            return warmup_lr
        progress = (iteration - cfg.warmup_iters) / max(cfg.max_iter - cfg.warmup_iters, 1)
        return cfg.lr * 0.5 * (1.0 + np.cos(np.pi * progress))
    passed = [step for step in cfg.lr_steps if step <= iteration]
    decayed = cfg.lr * cfg.lr_gamma ** len(passed)
    if in_warmup:
        return decayed if iteration in cfg.lr_steps else warmup_lr
    if passed and (cfg.warmup_iters <= 0 or max(passed) >= cfg.warmup_iters):
        return decayed
    return cfg.lr


def learning_rates(train_config):
    """[max_iter] float32 per-iteration learning rates (the optimizer indexes it by step)."""
    return np.array([learning_rate_at(it, train_config) for it in range(train_config.max_iter)],
                    dtype=np.float32)
