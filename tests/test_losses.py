"""MultiBoxLoss on tiny hand-built batches: hand-computed values and an independent numpy form.

All cases share one shape (B=2, P=20, C=4, K=2, S=8, s=4, G=3, M=2), so the loss compiles
once. The mask-IoU net here is a tiny stand-in (mean of the mask times a per-class scale):
the real ``MaskIoUNet`` needs S >= 63; tests/test_loss_fixture.py runs it on the fixture.
"""
import math

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn, ops

from src.losses.multibox_loss import MultiBoxLoss

B, P, C, K, S, SEG, G, M = 2, 20, 4, 2, 8, 4, 3, 2
DISCARD_MASK_AREA = 5
INPUT_NAMES = ("loc", "conf", "coeff", "proto", "segm", "loc_t", "conf_t", "idx_t", "gt_boxes",
               "gt_labels", "gt_masks", "semantic_t", "pos_sample_idx", "pos_sample_valid")
INT_INPUTS = ("conf_t", "idx_t", "gt_labels", "pos_sample_idx")


class MeanTimesClassIoUNet(nn.Cell):
    """[N, 1, S, S] -> [N, C-1]: output (n, c) = mean(mask n) * (c + 1) / 4."""

    def __init__(self, num_fg_classes):
        super().__init__()
        self.class_scale = ms.Tensor(np.arange(1, num_fg_classes + 1, dtype=np.float32) / 4)

    def construct(self, masks):
        return masks.mean(axis=(1, 2, 3)).reshape(-1, 1) * self.class_scale


def tiny_iou_net_numpy(mask, label):
    return mask.mean() * (label + 1) / 4


@pytest.fixture(scope="module")
def loss_cell():
    return MultiBoxLoss(C, maskiou_net=MeanTimesClassIoUNet(C - 1), masks_to_train=M,
                        discard_mask_area=DISCARD_MASK_AREA)


@pytest.fixture(scope="module")
def ohem_selection(loss_cell):
    @ms.jit
    def selected(conf, conf_t):
        return loss_cell.conf_loss.selected(conf, conf_t)

    def run(conf, conf_t):
        return selected(ms.Tensor(conf), ms.Tensor(conf_t)).asnumpy()
    return run


def run_loss(loss_cell, batch):
    args = [ms.Tensor(batch[name].astype(np.int32 if name in INT_INPUTS else np.float32))
            for name in INPUT_NAMES]
    total, terms = loss_cell(*args)
    return float(total.asnumpy()), dict(zip(MultiBoxLoss.TERM_NAMES, terms.asnumpy().tolist()))


def empty_batch():
    """All priors background, no GT, zero outputs: every term but S is 0."""
    batch = {
        "loc": np.zeros((B, P, 4)), "conf": np.zeros((B, P, C)), "coeff": np.zeros((B, P, K)),
        "proto": np.zeros((B, S, S, K)), "segm": np.zeros((B, C - 1, SEG, SEG)),
        "loc_t": np.zeros((B, P, 4)), "conf_t": np.zeros((B, P)), "idx_t": np.zeros((B, P)),
        "gt_boxes": np.zeros((B, G, 4)), "gt_labels": np.zeros((B, G)),
        "gt_masks": np.zeros((B, G, S, S)), "semantic_t": np.zeros((B, C - 1, SEG, SEG)),
        "pos_sample_idx": np.zeros((B, M)), "pos_sample_valid": np.zeros((B, M)),
    }
    return {name: value.astype(np.float64) for name, value in batch.items()}


def set_samples(batch):
    """pos_sample_idx / valid = the first M positives of each image (enough for these cases)."""
    for image in range(B):
        positives = np.nonzero(batch["conf_t"][image] > 0)[0][:M]
        batch["pos_sample_idx"][image] = 0
        batch["pos_sample_valid"][image] = 0
        batch["pos_sample_idx"][image, :len(positives)] = positives
        batch["pos_sample_valid"][image, :len(positives)] = 1


def random_batch(seed):
    rng = np.random.default_rng(seed)
    batch = empty_batch()
    batch["loc"] = rng.normal(0, 1.5, (B, P, 4))
    batch["loc_t"] = rng.normal(0, 1.0, (B, P, 4))
    batch["conf"] = rng.normal(0, 2.0, (B, P, C))
    batch["coeff"] = np.tanh(rng.normal(0, 1.0, (B, P, K)))
    batch["proto"] = np.maximum(rng.normal(0, 2.0, (B, S, S, K)), 0)
    batch["segm"] = rng.normal(0, 3.0, (B, C - 1, SEG, SEG))
    batch["semantic_t"] = (rng.random((B, C - 1, SEG, SEG)) > 0.7).astype(np.float64)
    for image in range(B):
        x1y1 = rng.uniform(0.0, 0.5, (G, 2))
        batch["gt_boxes"][image] = np.concatenate([x1y1, x1y1 + rng.uniform(0.2, 0.5, (G, 2))], 1)
        batch["gt_labels"][image] = rng.integers(0, C - 1, G)
        batch["gt_masks"][image] = (rng.random((G, S, S)) > 0.5).astype(np.float64)
        batch["idx_t"][image] = rng.integers(0, G, P)
    batch["conf_t"] = rng.choice([-1, 0, 0, 0], (B, P)).astype(np.float64)
    # Image 0 has 3 positives (> M = 2: the subsample scale applies), image 1 has 2.
    batch["conf_t"][0, :3] = [1, 3, 2]
    batch["conf_t"][1, 5:7] = [2, 2]
    set_samples(batch)
    return batch


def smooth_l1_numpy(diff):
    diff = np.abs(diff)
    return np.where(diff < 1, 0.5 * diff ** 2, diff - 0.5)


def logsumexp_numpy(x):
    top = x.max(axis=-1, keepdims=True)
    return np.log(np.exp(x - top).sum(axis=-1)) + top[..., 0]


def ohem_numpy(conf, conf_t):
    """[B, P] bool selection by the authors' rule, with an explicit sort per image."""
    selected = conf_t > 0
    for image in range(conf.shape[0]):
        score = logsumexp_numpy(conf[image]) - conf[image, :, 0]
        score[conf_t[image] != 0] = 0
        num_neg = min(3 * int((conf_t[image] > 0).sum()), conf.shape[1] - 1)
        for prior in np.argsort(-score, kind="stable")[:num_neg]:
            selected[image, prior] |= conf_t[image, prior] == 0
    return selected


def crop_numpy(mask, box):
    """The spec's crop rule (padding 1) with explicit per-pixel loops."""
    out = np.zeros_like(mask)
    x_lo = max(min(box[0], box[2]) * S - 1, 0)
    x_hi = min(max(box[0], box[2]) * S + 1, S)
    y_lo = max(min(box[1], box[3]) * S - 1, 0)
    y_hi = min(max(box[1], box[3]) * S + 1, S)
    for row in range(S):
        for col in range(S):
            if x_lo <= col < x_hi and y_lo <= row < y_hi:
                out[row, col] = mask[row, col]
    return out


def reference_terms(batch):
    """The five weighted terms following the spec, in float64, with loops over objects."""
    conf_t = batch["conf_t"].astype(int)
    pos = conf_t > 0
    total_pos = pos.sum()
    box = smooth_l1_numpy(batch["loc"] - batch["loc_t"]).sum(-1)[pos].sum()

    selected = ohem_numpy(batch["conf"], conf_t)
    target = np.maximum(conf_t, 0)
    cross_entropy = (logsumexp_numpy(batch["conf"])
                     - np.take_along_axis(batch["conf"], target[..., None], 2)[..., 0])
    confidence = cross_entropy[selected].sum()

    mask_sum, iou_sum = 0.0, 0.0
    for image in range(B):
        scale = max(pos[image].sum() / M, 1.0)
        for prior, valid in zip(batch["pos_sample_idx"][image].astype(int),
                                batch["pos_sample_valid"][image]):
            if not valid:
                continue
            slot = int(batch["idx_t"][image, prior])
            gt_box, gt_mask = batch["gt_boxes"][image, slot], batch["gt_masks"][image, slot]
            logits = batch["proto"][image] @ batch["coeff"][image, prior]
            pred = crop_numpy(1 / (1 + np.exp(-logits)), gt_box)
            with np.errstate(divide="ignore"):
                bce = -(gt_mask * np.maximum(np.log(pred), -100)
                        + (1 - gt_mask) * np.maximum(np.log(1 - pred), -100))
            area = (gt_box[2] - gt_box[0]) * S * (gt_box[3] - gt_box[1]) * S
            mask_sum += bce.sum() / area * scale
            if gt_mask.sum() > DISCARD_MASK_AREA:
                binary = pred > 0.5
                iou = (binary * gt_mask).sum() / (binary.sum() + gt_mask.sum()
                                                  - (binary * gt_mask).sum())
                label = int(batch["gt_labels"][image, slot])
                iou_sum += smooth_l1_numpy(tiny_iou_net_numpy(pred, label) - iou)

    x, t = batch["segm"], batch["semantic_t"]
    semantic = (np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))).sum() / SEG / SEG
    return {"B": 1.5 * box / total_pos, "C": confidence / total_pos,
            "M": 6.125 * mask_sum / total_pos, "S": semantic / B, "I": 25 * iou_sum / total_pos}


def assert_terms(actual, expected, rtol=1e-5, atol=1e-6):
    for name in MultiBoxLoss.TERM_NAMES:
        np.testing.assert_allclose(actual[name], expected[name], rtol=rtol, atol=atol,
                                   err_msg=f"term {name}")


def test_random_batch_matches_numpy_reference(loss_cell):
    for seed in (0, 1):
        batch = random_batch(seed)
        total, terms = run_loss(loss_cell, batch)
        expected = reference_terms(batch)
        assert all(expected[name] > 0 for name in MultiBoxLoss.TERM_NAMES)
        assert_terms(terms, expected)
        np.testing.assert_allclose(total, sum(expected.values()), rtol=1e-5)


def test_mask_loss_of_one_positive_by_hand(loss_cell):
    """p = 0.5 inside the padded GT box (16 px, ln 2 each); outside p = 0: 0 where the GT is
    0, exactly 100 for the one GT pixel outside; / box area (2 x 2 px); x 6.125 / N (N = 1)."""
    batch = empty_batch()
    batch["gt_boxes"][0, 0] = [0.25, 0.25, 0.5, 0.5]        # kept: rows and cols 1..4
    batch["gt_masks"][0, 0, 2:4, 2:4] = 1
    batch["gt_masks"][0, 0, 7, 7] = 1                        # GT pixel outside the crop
    batch["conf_t"][0, 5] = 2
    batch["coeff"][0, 5] = [0.5, -0.5]
    batch["proto"][0] = 2.0                                  # logits 0 -> p = 0.5
    set_samples(batch)
    _, terms = run_loss(loss_cell, batch)
    expected_mask = 6.125 * (16 * math.log(2) + 100) / 4
    np.testing.assert_allclose(terms["M"], expected_mask, rtol=1e-6)
    # GT area 5 <= discard_mask_area: the only mask is dropped from the I term.
    assert terms["I"] == 0
    assert terms["B"] == 0
    np.testing.assert_allclose(terms["S"], (C - 1) * math.log(2), rtol=1e-6)


def test_maskiou_loss_with_a_discarded_mask_by_hand(loss_cell):
    """Two positives: GT 0 has 6 px (kept), GT 1 has 5 px (discarded, <= 5)."""
    batch = empty_batch()
    batch["gt_boxes"][0, 0] = [0.0, 0.0, 0.5, 0.5]          # crop: rows/cols 0..4 (25 px)
    batch["gt_masks"][0, 0, 0:2, 0:3] = 1                    # 6 px
    batch["gt_labels"][0, 0] = 2
    batch["gt_boxes"][0, 1] = [0.375, 0.625, 1.0, 0.75]
    batch["gt_masks"][0, 1, 5, 3:8] = 1                      # 5 px
    batch["conf_t"][0, [4, 9]] = [3, 1]
    batch["idx_t"][0, [4, 9]] = [0, 1]
    batch["proto"][0, 0:2, 0:4, 0] = 2.0
    batch["coeff"][0, 4] = [1.0, 0.0]                        # p = sigmoid(2) on 8 px, else 0.5
    set_samples(batch)
    _, terms = run_loss(loss_cell, batch)

    # Binarised prediction: the 8 px; IoU with the 6 GT px = 6 / 8.
    mean_soft_mask = (8 * (1 / (1 + math.exp(-2))) + (25 - 8) * 0.5) / 64
    predicted = mean_soft_mask * (2 + 1) / 4
    diff = abs(predicted - 0.75)
    expected_iou_loss = 0.5 * diff ** 2 if diff < 1 else diff - 0.5
    np.testing.assert_allclose(terms["I"], 25 * expected_iou_loss / 2, rtol=1e-6)
    assert_terms(terms, reference_terms(batch))


def test_box_loss_is_smooth_l1_sum_over_positives_divided_by_n(loss_cell):
    batch = empty_batch()
    batch["conf_t"][0, [1, 2]] = 1
    batch["conf_t"][1, 3] = 2
    batch["loc"][0, 1] = [0.5, -2.0, 0.0, 1.0]       # 0.125 + 1.5 + 0 + 0.5
    batch["loc"][0, 2] = [0.0, 0.0, 3.0, 0.0]        # 2.5
    batch["loc"][1, 3] = [-0.2, 0.0, 0.0, 0.0]       # 0.02
    batch["loc"][1, 4] = [50.0, 50.0, 50.0, 50.0]    # background: not counted
    batch["loc_t"][0, 7] = np.inf                    # non-finite target of a background prior
    _, terms = run_loss(loss_cell, batch)
    np.testing.assert_allclose(terms["B"], 1.5 * (0.125 + 1.5 + 0.5 + 2.5 + 0.02) / 3, rtol=1e-6)


def test_semantic_loss_is_normalised_by_pixels_and_batch(loss_cell):
    batch = random_batch(3)
    _, terms = run_loss(loss_cell, batch)
    x, t = batch["segm"], batch["semantic_t"]
    per_pixel = np.log(1 + np.exp(x)) - x * t               # BCE with logits, unfolded
    np.testing.assert_allclose(terms["S"], per_pixel.sum() / SEG / SEG / B, rtol=1e-5)


def test_ohem_picks_the_expected_negatives(ohem_selection):
    """Image 0: 2 positives -> the 6 hardest background priors; the neutrals (hardest of
    all) are skipped. Image 1: 7 positives -> 3 * 7 = 21 capped at P - 1 = 19: every
    background prior, never the neutral."""
    conf = np.zeros((B, P, C), np.float32)
    conf_t = np.zeros((B, P), np.int32)
    # Mining score log(3 + e^a) - 0 grows with a = conf[..., 1]; give every prior its own a.
    hardness = np.arange(P, dtype=np.float32) / 4
    conf[:, :, 1] = hardness
    conf_t[0, [0, 1]] = [1, 3]
    conf_t[0, [18, 19]] = -1                              # the two hardest are neutral
    conf_t[1, 0:7] = 2
    conf_t[1, 19] = -1
    selected = ohem_selection(conf, conf_t)

    expected = np.zeros((B, P), bool)
    expected[0, [0, 1]] = True
    expected[0, 12:18] = True                            # the 6 hardest background priors
    expected[1, 0:19] = True
    np.testing.assert_array_equal(selected, expected)
    np.testing.assert_array_equal(selected, ohem_numpy(conf.astype(np.float64), conf_t))

    # An image without positives has no negatives.
    conf_t[1] = 0
    selected = ohem_selection(conf, conf_t)
    assert not selected[1].any()
    np.testing.assert_array_equal(selected[0], expected[0])


def test_crowd_neutral_prior_contributes_nothing(loss_cell):
    """Whatever the network says at a neutral prior, no term changes."""
    batch = random_batch(4)
    neutral = np.nonzero(batch["conf_t"][1] == -1)[0][0]
    _, terms = run_loss(loss_cell, batch)
    batch["conf"][1, neutral] = [-30.0, 30.0, 0.0, 0.0]   # would be the hardest negative
    batch["loc"][1, neutral] = 40.0
    batch["coeff"][1, neutral] = [0.9, -0.9]
    _, perturbed = run_loss(loss_cell, batch)
    assert perturbed == terms


def test_subsampled_image_scales_its_mask_loss(loss_cell):
    """masks_to_train = 2. Three positives with identical masks (value v each), two sampled:
    M = 6.125 * (3 / 2) * 2v / N(3) = 6.125 v, the same as two positives both sampled;
    without the 3 / 2 scale it would be 2/3 of that."""
    batch = empty_batch()
    batch["gt_boxes"][0, 0] = [0.125, 0.25, 0.75, 0.625]
    batch["gt_masks"][0, 0, 2:5, 1:6] = 1
    batch["proto"][0, :, :, 0] = np.arange(S * S).reshape(S, S) / 16
    batch["coeff"][0, :] = [0.7, 0.0]
    batch["conf_t"][0, [2, 6, 11]] = 1
    set_samples(batch)
    assert batch["pos_sample_valid"][0].sum() == 2
    _, sampled = run_loss(loss_cell, batch)

    batch["conf_t"][0, 11] = 0
    _, complete = run_loss(loss_cell, batch)
    mask_value = reference_terms(batch)["M"]                # 6.125 v
    np.testing.assert_allclose(complete["M"], mask_value, rtol=1e-6)
    np.testing.assert_allclose(sampled["M"], mask_value, rtol=1e-6)


def test_gradient_is_finite_and_ignores_cropped_out_pixels(loss_cell):
    """The hand case of the mask loss: the cropped-out GT pixel (cost 100) and the log(0)
    terms outside the crop give no NaN and no gradient. d total / d coeff of the positive =
    sum over the 16 kept px of (p - t) * proto (= 2) * 6.125 / 4 / N = (8 - 4) * 2 * 6.125 / 4."""
    batch = empty_batch()
    batch["gt_boxes"][0, 0] = [0.25, 0.25, 0.5, 0.5]
    batch["gt_masks"][0, 0, 2:4, 2:4] = 1
    batch["gt_masks"][0, 0, 7, 7] = 1
    batch["conf_t"][0, 5] = 2
    batch["coeff"][0, 5] = [0.5, -0.5]
    batch["proto"][0] = 2.0
    set_samples(batch)
    args = [ms.Tensor(batch[name].astype(np.int32 if name in INT_INPUTS else np.float32))
            for name in INPUT_NAMES]

    def total_loss(*inputs):
        return loss_cell(*inputs)[0]

    grads = ms.jit(ops.grad(total_loss, grad_position=(0, 1, 2, 3, 4)))(*args)
    for grad in grads:
        assert np.isfinite(grad.asnumpy()).all()
    coeff_grad = grads[2].asnumpy()
    np.testing.assert_allclose(coeff_grad[0, 5], [12.25, 12.25], rtol=1e-6)
    coeff_grad[0, 5] = 0
    assert not coeff_grad.any()


def test_batch_without_positives_costs_only_its_semantic_term(loss_cell):
    """N = 0 would be 0/0 in the authors' loss; N is floored at 1, so B, C, M, I are 0."""
    batch = random_batch(6)
    batch["conf_t"] = np.minimum(batch["conf_t"], 0)
    set_samples(batch)
    total, terms = run_loss(loss_cell, batch)
    assert [terms[name] for name in ("B", "C", "M", "I")] == [0, 0, 0, 0]
    x, t = batch["segm"], batch["semantic_t"]
    semantic = (np.log(1 + np.exp(x)) - x * t).sum() / SEG / SEG / B
    np.testing.assert_allclose(total, semantic, rtol=1e-5)
