"""The optimizers against their update formulas written out in numpy, and their state in
training checkpoints."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import nn

from src.checkpoint import resume_training, save_training_checkpoint
from src.train.optimizer import build_optimizer, optimizer_state
from src.train.setup import training_state
from src.train.train_step import build_loss_scaler
from src.checkpoint import CheckpointError

START = np.array([1.0, -2.0, 3.0], np.float32)
GRADIENTS = (np.array([0.5, -1.0, 2.0], np.float32), np.array([-0.25, 0.75, 1.0], np.float32))
LEARNING_RATES = np.array([0.1, 0.2, 0.3], np.float32)
WEIGHT_DECAY = 0.01


class TinyModel(nn.Cell):
    """One parameter named like a BatchNorm scale: MindSpore's default grouping would not
    decay it, the authors do."""

    def __init__(self):
        super().__init__()
        self.gamma = ms.Parameter(ms.Tensor(START), name="bn.gamma")

    def construct(self, x):
        return x * self.gamma


def run_two_steps(kind, model=None):
    model = model or TinyModel()
    optimizer = build_optimizer(model.trainable_params(), LEARNING_RATES, 0.9, WEIGHT_DECAY, kind)
    for gradient in GRADIENTS:
        optimizer((ms.Tensor(gradient),))
    return model, optimizer


def test_momentum_is_pytorch_sgd_with_decay_on_every_parameter():
    model, optimizer = run_two_steps("momentum")
    weights, velocity = START.astype(np.float64), 0.0
    for gradient, lr in zip(GRADIENTS, LEARNING_RATES):
        velocity = 0.9 * velocity + gradient + WEIGHT_DECAY * weights
        weights = weights - lr * velocity
    np.testing.assert_allclose(model.gamma.asnumpy(), weights, rtol=1e-6)
    assert int(optimizer.global_step.asnumpy().reshape(-1)[0]) == 2


def test_adamw_is_decoupled_decay_without_bias_correction():
    model, _ = run_two_steps("adamw")
    weights, first, second = START.astype(np.float64), 0.0, 0.0
    for gradient, lr in zip(GRADIENTS, LEARNING_RATES):
        first = 0.9 * first + 0.1 * gradient
        second = 0.999 * second + 0.001 * gradient.astype(np.float64) ** 2
        weights = weights - lr * (first / (np.sqrt(second) + 1e-8) + WEIGHT_DECAY * weights)
    np.testing.assert_allclose(model.gamma.asnumpy(), weights, rtol=1e-5)


@pytest.mark.parametrize("kind, buffers", [("momentum", 1), ("adamw", 2)])
def test_checkpoint_restores_the_optimizer_state(kind, buffers, tmp_path):
    """Two steps, save, restore into a fresh model and optimizer: weights, every moment
    buffer and the step counter come back, and the next step is the same in both."""
    model, optimizer = run_two_steps(kind)
    assert len(optimizer_state(optimizer)) == buffers
    scaler = build_loss_scaler("dynamic")
    path = str(tmp_path / "state.ckpt")
    save_training_checkpoint(path, training_state(model, optimizer, scaler), iteration=2)

    fresh = TinyModel()
    fresh_optimizer = build_optimizer(fresh.trainable_params(), LEARNING_RATES, 0.9,
                                      WEIGHT_DECAY, kind)
    assert resume_training(path, training_state(fresh, fresh_optimizer,
                                                build_loss_scaler("dynamic"))) == 2
    for saved, restored in zip(optimizer_state(optimizer), optimizer_state(fresh_optimizer)):
        assert np.abs(saved.asnumpy()).sum() > 0
        np.testing.assert_array_equal(restored.asnumpy(), saved.asnumpy())
    np.testing.assert_array_equal(fresh_optimizer.global_step.asnumpy(),
                                  optimizer.global_step.asnumpy())
    step = (ms.Tensor(np.array([1.0, 1.0, -1.0], np.float32)),)
    optimizer(step)
    fresh_optimizer(step)
    np.testing.assert_array_equal(fresh.gamma.asnumpy(), model.gamma.asnumpy())


def test_checkpoint_of_the_other_optimizer_does_not_resume(tmp_path):
    model, optimizer = run_two_steps("momentum")
    path = str(tmp_path / "sgd.ckpt")
    save_training_checkpoint(path, training_state(model, optimizer, build_loss_scaler("dynamic")),
                             iteration=2)
    fresh = TinyModel()
    adamw = build_optimizer(fresh.trainable_params(), LEARNING_RATES, 0.9, WEIGHT_DECAY, "adamw")
    with pytest.raises(CheckpointError, match="does not fit this model/optimizer"):
        resume_training(path, training_state(fresh, adamw, build_loss_scaler("dynamic")))
