"""The optimizers: SGD with momentum (the authors') or AdamW, weight decay on every parameter."""
from mindspore import Tensor, nn



def build_optimizer(params, learning_rates, momentum, weight_decay, kind="momentum"):
    """One optimizer over ``params``.

    ``"momentum"``: ``v <- momentum * v + g + weight_decay * w; w <- w - lr * v`` (PyTorch's
    SGD, the authors' optimizer). ``"adamw"``: MindSpore's ``AdamWeightDecay``,
    ``m <- 0.9 m + 0.1 g; v <- 0.999 v + 0.001 g^2;
    w <- w - lr * (m / (sqrt(v) + 1e-8) + weight_decay * w)`` (decoupled decay, no bias
    correction); it trains a network from scratch in far fewer steps (the CPU demo), and
    ``momentum`` is unused.

    The parameters are passed as one group on purpose: MindSpore's default (ungrouped)
    optimizer skips weight decay for names containing "gamma"/"beta", while the authors
    decay all parameters, BatchNorm and biases included.

    Args:
        params: the trainable parameters.
        learning_rates: [iterations] float32 per-iteration values; the optimizer's
            ``global_step`` indexes them, so a restored step restores the lr.
        momentum, weight_decay: floats.
        kind: ``train.optimizer``, "momentum" or "adamw".
    """
    groups = [{"params": list(params), "weight_decay": weight_decay}]
    if kind == "momentum":
        return nn.Momentum(groups, learning_rate=Tensor(learning_rates), momentum=momentum)
    return nn.AdamWeightDecay(groups, learning_rate=Tensor(learning_rates),
                              beta1=0.9, beta2=0.999, eps=1e-8)


def optimizer_state(optimizer):
    """The optimizer's Parameters besides the weights and the step counter: momentum
    buffers, or Adam's first and second moments."""
    if isinstance(optimizer, nn.AdamWeightDecay):
        return list(optimizer.moments1) + list(optimizer.moments2)
    return list(optimizer.moments)
