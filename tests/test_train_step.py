"""make_train_step on a one-parameter model: gradient clipping and loss scaling against
hand-computed updates (the full model's step is tested in test_train.py)."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import nn, ops

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
