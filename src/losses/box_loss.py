"""Box regression loss: smooth-L1 on the encoded offsets of the positive priors."""
from mindspore import nn, ops


class BoxLoss(nn.Cell):
    """Sum over positive priors and the 4 offsets of smooth-L1 (beta = 1).

    Inputs:
        loc: [B, P, 4] float32 predicted offsets (dcx, dcy, dw, dh).
        loc_t: [B, P, 4] float32 encoded offsets of each prior's matched GT.
        conf_t: [B, P] int32 class targets (-1 neutral, 0 background, 1..C-1 positive).

    Returns:
        [] float32 unweighted, unnormalised sum (the caller divides by the positives).
    """

    def construct(self, loc, loc_t, conf_t):
        per_prior = ops.smooth_l1_loss(loc, loc_t, beta=1.0, reduction="none").sum(axis=-1)
        # select, not multiply: loc_t of non-positive priors may be non-finite (log of an
        # empty box when an image has no non-crowd GT) and 0 * inf would poison the sum.
        zeros = ops.zeros_like(per_prior)
        return ops.select(conf_t > 0, per_prior, zeros).sum()
