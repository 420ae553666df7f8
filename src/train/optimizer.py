"""SGD with momentum and weight decay on every trainable parameter."""
from mindspore import Tensor, nn


def build_optimizer(params, learning_rates, momentum, weight_decay):
    """``v <- momentum * v + g + weight_decay * w; w <- w - lr * v`` (PyTorch's SGD).

    The parameters are passed as one group on purpose: MindSpore's default (ungrouped)
    optimizer skips weight decay for names containing "gamma"/"beta", while the authors
    decay all parameters, BatchNorm and biases included.

    Args:
        params: the trainable parameters.
        learning_rates: [max_iter] float32 per-iteration values; the optimizer's
            ``global_step`` indexes them, so a restored step restores the lr.
        momentum, weight_decay: floats.
    """
    groups = [{"params": list(params), "weight_decay": weight_decay}]
    return nn.Momentum(groups, learning_rate=Tensor(learning_rates), momentum=momentum)
