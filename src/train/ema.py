"""Exponential moving average (EMA) of the model's weights, updated after every applied step.

Evaluating the average instead of the last weights smooths out the noise of the late
updates (mindyolo and YOLOv5 train with it); the authors' yolact does not use it, so it is
off unless ``train.ema_decay`` > 0. Training checkpoints then store the average under the
model's parameter names, which is what eval.py, export.py and ``Detector`` load, and the
live weights under ``live.<name>`` for resuming.
"""
import mindspore as ms
from mindspore import nn, ops

LIVE_PREFIX = "live."

_blend = ops.MultitypeFuncGraph("blend")


@_blend.register("Tensor", "Tensor", "Tensor")
def _blend_into_average(decay, average, weight):
    return ops.assign(average, average * decay + weight * (1.0 - decay))


class WeightAverage(nn.Cell):
    """``average = d * average + (1 - d) * weight`` for every model Parameter, with the
    BatchNorm moving statistics included; ``d = min(decay, (1 + n) / (10 + n))`` after n
    updates, so the first updates follow the fast-changing weights closely (TensorFlow's
    ``ExponentialMovingAverage(num_updates=n)``).

    Args:
        model: the Cell being trained; its Parameters are averaged in
            ``model.parameters_and_names()`` order.
        decay: the long-run decay, in (0, 1).
    """

    def __init__(self, model, decay):
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ValueError(f"train.ema_decay {decay}: expected a value in (0, 1), or 0 for off")
        self.decay = decay
        named = list(model.parameters_and_names())
        self.names = [name for name, _ in named]
        self.weights = ms.ParameterTuple([param for _, param in named])
        self.averages = ms.ParameterTuple([
            ms.Parameter(ms.Tensor(param.asnumpy()), name=f"ema.{name}", requires_grad=False)
            for name, param in named])
        self.num_updates = ms.Parameter(ms.Tensor(0.0, ms.float32), name="ema.num_updates",
                                        requires_grad=False)
        self.hyper_map = ops.HyperMap()

    def construct(self):
        count = self.num_updates + 1.0
        decay = ops.minimum((1.0 + count) / (10.0 + count), self.decay)
        updated = self.hyper_map(ops.partial(_blend, decay), self.averages, self.weights)
        return ops.depend(ops.assign(self.num_updates, count), updated)

    def named_averages(self):
        """(model parameter name, average Parameter) pairs."""
        return list(zip(self.names, self.averages))
