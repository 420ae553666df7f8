"""MultiBoxLoss against the authors' own numbers on one batch (../shared/fixtures, README there).

The fixture fixes the raw network outputs, the GT and the authors' matching; our loss must
pick the same OHEM negatives, feed the same masks to the mask-IoU net with the same targets,
and give each of the five terms within 1e-4 relative of the authors'.
"""
import mindspore as ms
import numpy as np
import pytest

from src.losses.mask_loss import assemble_sampled_masks
from src.losses.multibox_loss import MultiBoxLoss
from src.model.maskiou_net import MaskIoUNet
from tests.conftest import load_authors_fixture

NUM_CLASSES = 81
GT_SLOTS = 4
MASKS_TO_TRAIN = 100


def bilinear_weights(in_size, out_size):
    """[out, in] matrix of PyTorch's bilinear resize (align_corners=False, no antialias)."""
    scale = in_size / out_size
    weights = np.zeros((out_size, in_size))
    for dst in range(out_size):
        src = max(scale * (dst + 0.5) - 0.5, 0.0)
        low = int(np.floor(src))
        high = low + 1 if low < in_size - 1 else low
        frac = src - low
        weights[dst, low] += 1 - frac
        weights[dst, high] += frac
    return weights


def downsample_binary(masks, out_size):
    """[N, H, H] 0/1 -> [N, out, out] float32 0/1: bilinear resize, then > 0.5."""
    weights = bilinear_weights(masks.shape[-1], out_size)
    resized = np.einsum("oi,nij,pj->nop", weights, masks.astype(np.float64), weights)
    return (resized > 0.5).astype(np.float32)


def build_inputs(fix):
    """The loss inputs in our interface, built from the fixture as the pipeline would."""
    batch = fix["train/loc"].shape[0]
    proto_size = fix["train/proto"].shape[1]
    segm_size = fix["train/segm"].shape[-1]
    gt_boxes = np.zeros((batch, GT_SLOTS, 4), np.float32)
    gt_labels = np.zeros((batch, GT_SLOTS), np.int32)
    gt_masks = np.zeros((batch, GT_SLOTS, proto_size, proto_size), np.float32)
    semantic_t = np.zeros((batch, NUM_CLASSES - 1, segm_size, segm_size), np.float32)
    pos_sample_idx = np.zeros((batch, MASKS_TO_TRAIN), np.int32)
    pos_sample_valid = np.zeros((batch, MASKS_TO_TRAIN), np.float32)
    conf_t = fix["train/match/conf_t"].astype(np.int32)
    for image in range(batch):
        targets = fix[f"gt/targets_{image}"]
        num_objects = len(targets) - int(fix["gt/num_crowds"][image])
        masks = fix[f"gt/masks_{image}"][:num_objects]
        labels = targets[:num_objects, 4].astype(np.int32)
        gt_boxes[image, :num_objects] = targets[:num_objects, :4]
        gt_labels[image, :num_objects] = labels
        gt_masks[image, :num_objects] = downsample_binary(masks, proto_size)
        for label, mask in zip(labels, downsample_binary(masks, segm_size)):
            semantic_t[image, label] = np.maximum(semantic_t[image, label], mask)
        positives = np.nonzero(conf_t[image] > 0)[0]
        assert len(positives) <= MASKS_TO_TRAIN      # no random subset in this batch
        pos_sample_idx[image, :len(positives)] = positives
        pos_sample_valid[image, :len(positives)] = 1
    arrays = (fix["train/loc"], fix["train/conf"], fix["train/mask"], fix["train/proto"],
              fix["train/segm"], fix["train/match/loc_t"], conf_t,
              fix["train/match/idx_t"].astype(np.int32), gt_boxes, gt_labels, gt_masks,
              semantic_t, pos_sample_idx, pos_sample_valid)
    return [ms.Tensor(array) for array in arrays]


@pytest.fixture(scope="module")
def fixture_data():
    return load_authors_fixture()


@pytest.fixture(scope="module")
def loss_cell(fixture_data):
    maskiou_net = MaskIoUNet(NUM_CLASSES - 1)
    prefix = "weights/maskiou_net."
    params = {key[len(prefix):]: ms.Parameter(ms.Tensor(value), name=key[len(prefix):])
              for key, value in fixture_data.items() if key.startswith(prefix)}
    net_not_loaded, unused = ms.load_param_into_net(maskiou_net, params, strict_load=True)
    assert not net_not_loaded and not unused
    return MultiBoxLoss(NUM_CLASSES, maskiou_net=maskiou_net, masks_to_train=MASKS_TO_TRAIN)


@pytest.fixture(scope="module")
def inputs(fixture_data):
    return build_inputs(fixture_data)


def test_ohem_selection_equals_the_authors(loss_cell, inputs, fixture_data):
    @ms.jit
    def selected(conf, conf_t):
        return loss_cell.conf_loss.selected(conf, conf_t)

    ours = selected(inputs[1], inputs[6]).asnumpy()
    np.testing.assert_array_equal(ours, fixture_data["train/ohem/selected"])


def test_maskiou_inputs_and_targets_equal_the_authors(loss_cell, inputs, fixture_data):
    @ms.jit
    def maskiou_inputs(coeff, proto, idx_t, gt_boxes, gt_labels, gt_masks, pos_sample_idx,
                       pos_sample_valid):
        pred_masks, mask_t, _, label_t = assemble_sampled_masks(
            coeff, proto, idx_t, gt_boxes, gt_labels, gt_masks, pos_sample_idx)
        target, weight = loss_cell.maskiou_loss.iou_targets(pred_masks, mask_t, pos_sample_valid)
        return pred_masks, target, weight, label_t

    pred_masks, target, weight, label_t = [
        out.asnumpy() for out in maskiou_inputs(*[inputs[i] for i in (2, 3, 7, 8, 9, 10, 12, 13)])]
    kept = weight > 0                                  # image-major, priors ascending: their order
    size = pred_masks.shape[-1]
    np.testing.assert_allclose(pred_masks[kept].reshape(-1, 1, size, size),
                               fixture_data["train/maskiou/net_input"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(target[kept], fixture_data["train/maskiou/targets"], rtol=1e-6)
    np.testing.assert_array_equal(label_t[kept], fixture_data["train/maskiou/labels"])


def test_loss_terms_equal_the_authors(loss_cell, inputs, fixture_data):
    total, terms = loss_cell(*inputs)
    terms = dict(zip(MultiBoxLoss.TERM_NAMES, terms.asnumpy().tolist()))
    for name in MultiBoxLoss.TERM_NAMES:
        expected = float(fixture_data[f"losses/{name}"])
        print(f"{name}: ours {terms[name]:.7g} authors {expected:.7g} "
              f"rel {abs(terms[name] - expected) / expected:.2e}")
        np.testing.assert_allclose(terms[name], expected, rtol=1e-4, err_msg=f"term {name}")
    np.testing.assert_allclose(float(total.asnumpy()), float(fixture_data["losses/total"]),
                               rtol=1e-4)
