"""Class confidence loss: softmax cross-entropy with online hard negative mining (OHEM)."""
import mindspore as ms
from mindspore import nn, ops


class ConfLoss(nn.Cell):
    """Softmax CE summed over the positives and the OHEM-selected negatives.

    Mining (the authors' rule, static shapes): score = logsumexp(x) - x_background, set to 0
    for positives and neutrals; priors are ranked by score descending and the first
    ``min(negpos_ratio * num_pos, P - 1)`` ranks of each image are negatives, minus the
    positives and neutrals among them. An image without positives has no negatives. The
    rank comes from two full sorts, so the shapes never depend on the data.

    Args:
        negpos_ratio: negatives per positive (3).

    Inputs:
        conf: [B, P, C] float32 class logits (class 0 = background).
        conf_t: [B, P] int32 class targets (-1 neutral, 0 background, 1..C-1 positive).

    Returns:
        [] float32 unweighted CE sum (the caller divides by the positives).
    """

    def __init__(self, negpos_ratio=3):
        super().__init__()
        self.negpos_ratio = negpos_ratio

    def select_negatives(self, conf, conf_t):
        """[B, P] bool: the hard negatives chosen by OHEM (positives and neutrals excluded)."""
        batch, num_priors, num_classes = conf.shape
        conf = ops.stop_gradient(conf)
        # The authors subtract one max over the whole batch, not per row; kept so that the
        # float32 scores, hence the ranks near the cut-off, are the same.
        global_max = conf.max()
        logsumexp = ops.log(ops.exp(conf - global_max).sum(axis=-1)) + global_max
        background = ops.slice(conf, (0, 0, 0), (batch, num_priors, 1)).squeeze(-1)
        candidate = conf_t == 0
        score = ops.select(candidate, logsumexp - background, ops.zeros_like(logsumexp))

        _, order = ops.sort(score, axis=1, descending=True)
        # Sorting the permutation gives each prior's rank (exact in float32 for P < 2**24).
        _, rank = ops.sort(order.astype(ms.float32), axis=1)

        num_pos = (conf_t > 0).astype(ms.int32).sum(axis=1, keepdims=True)
        num_neg = ops.minimum(self.negpos_ratio * num_pos, num_priors - 1)
        return ops.logical_and(rank < num_neg, candidate)

    def selected(self, conf, conf_t):
        """[B, P] bool: the priors whose CE enters the loss (positives + hard negatives)."""
        return ops.logical_or(conf_t > 0, self.select_negatives(conf, conf_t))

    def construct(self, conf, conf_t):
        log_probs = ops.log_softmax(conf, axis=-1)
        target = ops.maximum(conf_t, 0).astype(ms.int32).expand_dims(-1)
        cross_entropy = -ops.gather_elements(log_probs, 2, target).squeeze(-1)
        return ops.select(self.selected(conf, conf_t), cross_entropy,
                          ops.zeros_like(cross_entropy)).sum()
