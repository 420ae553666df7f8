"""One jitted training step: forward, loss scaling, gradient reduction, finite check, update."""
import mindspore as ms
from mindspore import nn, ops


def build_loss_scaler(kind="dynamic", init_scale=2.0 ** 10, factor=2, window=1000):
    """``run.loss_scale``: ``"dynamic"``: ``mindspore.amp.DynamicLossScaler`` (its scale and
    counter are Parameters, saved with the checkpoint); ``"static"``: a fixed ``init_scale``;
    ``"none"``: a scale of 1."""
    if kind == "dynamic":
        return ms.amp.DynamicLossScaler(init_scale, factor, window)
    return ms.amp.StaticLossScaler(init_scale if kind == "static" else 1.0)


def build_grad_reducer(params, distributed, group_size=1):
    """Mean of the gradients over devices in data-parallel training; identity on one device."""
    if not distributed:
        return ops.identity
    return nn.DistributedGradReducer(params, mean=True, degree=group_size)


def make_train_step(model, loss_fn, optimizer, loss_scaler, grad_reducer, grad_clip_norm=0.0,
                    weight_average=None):
    """Return ``step(images, *targets) -> (total, terms, finite, scale)``.

    ``model`` maps images to the raw training outputs, ``loss_fn`` maps (outputs..., targets...)
    to ``(total, terms)``. The loss is scaled before differentiation and the gradients are
    reduced over devices, unscaled and checked: when any gradient or the loss is not finite
    the update is skipped (the authors skip such steps; the optimizer's step counter, which
    indexes the lr, still advances) and a dynamic scaler lowers its scale.
    Each device normalises its own loss; the reducer averages the gradients.
    ``grad_clip_norm`` > 0 rescales finite gradients to at most that global L2 norm (the
    authors do not clip; from-scratch training tolerates a higher lr with it).
    ``weight_average`` (a ``src.train.ema.WeightAverage``) is updated after each applied update.
    """
    def forward(images, *targets):
        outputs = model(images)
        total, terms = loss_fn(*outputs, *targets)
        return loss_scaler.scale(total), (total, terms)

    grad_fn = ms.value_and_grad(forward, None, optimizer.parameters, has_aux=True)

    @ms.jit
    def step(images, *targets):
        (_, (total, terms)), grads = grad_fn(images, *targets)
        grads = loss_scaler.unscale(grad_reducer(grads))
        finite = ops.logical_and(ms.amp.all_finite(grads), ops.isfinite(total))
        if grad_clip_norm > 0:
            grads = ops.clip_by_global_norm(grads, grad_clip_norm)
        if finite:
            total = ops.depend(total, optimizer(grads))
            if weight_average is not None:
                total = ops.depend(total, weight_average())
        else:
            # The step counter indexes the lr: it counts skipped iterations too, so the lr
            # follows the iteration as in the authors' loop.
            total = ops.depend(total, ops.assign_add(optimizer.global_step,
                                                     ops.ones_like(optimizer.global_step)))
        loss_scaler.adjust(finite)
        return total, terms, finite, loss_scaler.scale_value

    return step
