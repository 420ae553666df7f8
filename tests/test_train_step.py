"""make_train_step on a one-parameter model: gradient clipping and loss scaling against
hand-computed updates (the full model's step is tested in test_train.py)."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import nn, ops

from src.train.ema import WeightAverage
from src.train.optimizer import build_optimizer
from src.train.train_step import build_grad_reducer, build_loss_scaler, make_train_step


class Scale(nn.Cell):
    def __init__(self, start):
        super().__init__()
        self.weight = ms.Parameter(ms.Tensor(np.array(start, np.float32)), name="weight")

    def construct(self, x):
        return (x * self.weight,)


def dot_loss(output, target):
    """sum(output * target): its gradient with respect to the weight is x * target."""
    total = ops.reduce_sum(output * target)
    return total, ops.stack([total])


@pytest.mark.parametrize("clip, expected_factor", [(0.0, 1.0), (1.0, 0.2), (10.0, 1.0)])
def test_clipping_rescales_to_the_global_norm(clip, expected_factor):
    """The gradient is (3, 4), norm 5: clip 1 scales it by 1/5, clip 10 and 0 leave it."""
    model = Scale([1.0, 1.0])
    optimizer = build_optimizer(model.trainable_params(), np.full(4, 0.5, np.float32), 0.9,
                                0.0)
    step = make_train_step(model, dot_loss, optimizer, build_loss_scaler("static"),
                           build_grad_reducer(optimizer.parameters, False), clip)
    total, _, finite, scale = step(ms.Tensor(np.array([3.0, 4.0], np.float32)),
                                   ms.Tensor(np.ones(2, np.float32)))
    assert bool(finite.asnumpy()) and float(scale.asnumpy()) == 1024.0
    assert float(total.asnumpy()) == pytest.approx(7.0)
    expected = 1.0 - 0.5 * np.array([3.0, 4.0]) * expected_factor
    np.testing.assert_allclose(model.weight.asnumpy(), expected, rtol=1e-6)


def test_weight_average_follows_the_applied_updates():
    """After n applied updates the average is d * average + (1 - d) * weight with
    d = min(decay, (1 + n) / (10 + n)); a skipped (non-finite) step leaves it alone."""
    model = Scale([1.0, 1.0])
    optimizer = build_optimizer(model.trainable_params(), np.full(4, 0.5, np.float32), 0.9, 0.0)
    average = WeightAverage(model, decay=0.2)
    step = make_train_step(model, dot_loss, optimizer, build_loss_scaler("static"),
                           build_grad_reducer(optimizer.parameters, False),
                           weight_average=average)
    target = ms.Tensor(np.ones(2, np.float32))
    step(ms.Tensor(np.array([3.0, 4.0], np.float32)), target)
    first = np.array([-0.5, -1.0])                      # 1 - 0.5 * (3, 4)
    np.testing.assert_allclose(model.weight.asnumpy(), first, rtol=1e-6)
    expected = 2 / 11 * np.ones(2) + 9 / 11 * first     # d = min(0.2, 2 / 11)
    np.testing.assert_allclose(average.averages[0].asnumpy(), expected, rtol=1e-6)

    step(ms.Tensor(np.array([3.0, 4.0], np.float32)), target)
    second = model.weight.asnumpy()                     # momentum: 1 - 0.5 * (1 + 1.9) * (3, 4)
    np.testing.assert_allclose(second, 1.0 - 1.45 * np.array([3.0, 4.0]), rtol=1e-6)
    expected = 0.2 * expected + 0.8 * second            # d = min(0.2, 3 / 12)
    np.testing.assert_allclose(average.averages[0].asnumpy(), expected, rtol=1e-6)

    _, _, finite, _ = step(ms.Tensor(np.array([np.inf, 4.0], np.float32)), target)
    assert not bool(finite.asnumpy())
    np.testing.assert_allclose(average.averages[0].asnumpy(), expected, rtol=1e-6)
    assert float(average.num_updates.asnumpy()) == 2.0
    assert [name for name, _ in average.named_averages()] == ["weight"]


@pytest.mark.parametrize("decay", [1.0, -0.1])
def test_weight_average_rejects_a_decay_outside_0_1(decay):
    with pytest.raises(ValueError, match=r"train.ema_decay .*: expected a value in \(0, 1\)"):
        WeightAverage(Scale([1.0]), decay)
