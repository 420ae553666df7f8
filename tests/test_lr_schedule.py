"""The lr schedule against a replay of the authors' training loop, and batch-size scaling."""
import dataclasses

import numpy as np
import pytest

from src.config.schema import TrainConfig
from src.train.lr_schedule import learning_rate_at, learning_rates, scale_for_batch_size


def _authors_loop(cfg, num_iters):
    """The authors' per-iteration lr updates (train.py), replayed step by step."""
    lr, step_index, history = cfg.lr, 0, []  # the optimizer is created with lr
    for iteration in range(num_iters):
        if cfg.warmup_iters > 0 and iteration <= cfg.warmup_iters:
            lr = (cfg.lr - cfg.warmup_init_lr) * (iteration / cfg.warmup_iters) + cfg.warmup_init_lr
        while step_index < len(cfg.lr_steps) and iteration >= cfg.lr_steps[step_index]:
            step_index += 1
            lr = cfg.lr * cfg.lr_gamma ** step_index
        history.append(lr)
    return np.array(history)


def test_default_schedule_values():
    cfg = TrainConfig()
    assert learning_rate_at(0, cfg) == pytest.approx(1e-4)
    assert learning_rate_at(250, cfg) == pytest.approx(5.5e-4)
    assert learning_rate_at(500, cfg) == pytest.approx(1e-3)
    assert learning_rate_at(279_999, cfg) == pytest.approx(1e-3)
    assert learning_rate_at(280_000, cfg) == pytest.approx(1e-4)
    assert learning_rate_at(700_000, cfg) == pytest.approx(1e-6)
    assert learning_rate_at(799_999, cfg) == pytest.approx(1e-7)


@pytest.mark.parametrize("steps, warmup", [((30, 60), 10), ((5, 8, 40), 10), ((10, 12), 10),
                                           ((3,), 0), ((), 10)])
def test_matches_authors_loop(steps, warmup):
    cfg = TrainConfig(lr_steps=steps, warmup_iters=warmup, max_iter=80)
    np.testing.assert_allclose(learning_rates(cfg, 80), _authors_loop(cfg, 80), rtol=1e-6)


def test_batch_size_scaling():
    scaled = scale_for_batch_size(TrainConfig(batch_size=2))
    assert scaled.lr == pytest.approx(2.5e-4)
    assert scaled.max_iter == 3_200_000
    assert scaled.lr_steps == (1_120_000, 2_400_000, 2_800_000, 3_000_000)
    assert scaled.warmup_iters == 500 and scaled.warmup_init_lr == 1e-4
    assert (scaled.batch_size, scaled.schedule_batch_size) == (2, 2)
    odd = scale_for_batch_size(TrainConfig(batch_size=16, max_iter=1001, lr_steps=(501,)))
    assert (odd.max_iter, odd.lr_steps, odd.lr) == (500, (250,), pytest.approx(2e-3))
    assert scale_for_batch_size(TrainConfig()) == TrainConfig()


def test_scaling_is_relative_to_the_batch_the_schedule_is_stated_for():
    stated_for_4 = TrainConfig(batch_size=4, schedule_batch_size=4, lr=5e-4, max_iter=3000,
                               lr_steps=(2400, 2840))
    assert scale_for_batch_size(stated_for_4) == stated_for_4
    doubled = scale_for_batch_size(dataclasses.replace(stated_for_4, batch_size=8))
    assert (doubled.lr, doubled.max_iter, doubled.lr_steps) == (pytest.approx(1e-3), 1500,
                                                                 (1200, 1420))


def test_cosine_decay_values():
    cfg = TrainConfig(lr=8e-4, warmup_init_lr=1e-4, warmup_iters=100, max_iter=1100,
                      lr_decay="cosine", lr_steps=(500,))
    assert learning_rate_at(0, cfg) == pytest.approx(1e-4)
    assert learning_rate_at(50, cfg) == pytest.approx(4.5e-4)
    assert learning_rate_at(100, cfg) == pytest.approx(8e-4)          # end of warmup: the peak
    # a quarter of the way: cos 45°
    assert learning_rate_at(350, cfg) == pytest.approx(4e-4 * (1 + 0.5 ** 0.5))
    assert learning_rate_at(600, cfg) == pytest.approx(4e-4)           # half way: lr / 2, no step
    assert learning_rate_at(1099, cfg) == pytest.approx(4e-4 * (1 + np.cos(np.pi * 0.999)))
    rates = learning_rates(cfg, cfg.max_iter)
    assert np.all(np.diff(rates[100:]) < 0)
    no_warmup = dataclasses.replace(cfg, warmup_iters=0)
    assert learning_rate_at(0, no_warmup) == pytest.approx(8e-4)
