"""Learning-rate schedule: linear warmup, then step decay (the authors' train.py) or cosine."""
import dataclasses

import numpy as np


def scale_for_batch_size(train_config):
    """The authors' ``--autoscale``: when the total batch (``batch_size``) differs from the
    one the schedule is stated for (``schedule_batch_size``, 8 in the authors' configs),
    scale the lr by the ratio and divide ``max_iter`` and ``lr_steps`` by it (floored); the
    warmup is not scaled. A function of the config alone, however the batch was set.

    Args:
        train_config: a ``TrainConfig``.

    Returns:
        a ``TrainConfig`` stated for ``batch_size``: ``schedule_batch_size``, ``lr``,
        ``max_iter`` and ``lr_steps`` replaced.
    """
    batch_size = train_config.batch_size
    factor = batch_size / train_config.schedule_batch_size
    if factor == 1:
        return train_config
    return dataclasses.replace(
        train_config, schedule_batch_size=batch_size, lr=train_config.lr * factor,
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


def learning_rates(train_config, num_iterations):
    """[num_iterations] float32 learning rates of the first iterations (the optimizer indexes
    it by step; a run needs the values up to the iteration it stops at)."""
    return np.array([learning_rate_at(it, train_config) for it in range(num_iterations)],
                    dtype=np.float32)
