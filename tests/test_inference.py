"""InferenceNet and the Detector API on a tiny YOLACT++ with random weights."""
import numpy as np
import pytest

import mindspore as ms

from src.config.schema import replace
from src.inference import Detector
from src.inference.net import InferenceNet, build_inference_net
from src.model.build import build_model
from src.checkpoint import CheckpointError
from tests.conftest import save_detecting_checkpoint, tiny_config


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    config = tiny_config()
    return config, save_detecting_checkpoint(config, str(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"))


@pytest.fixture(scope="module")
def detector(checkpoint):
    config, path = checkpoint
    return Detector(config=config, ckpt=path, device_target="CPU")


def test_detector_result_format(detector):
    image = np.random.default_rng(0).integers(0, 255, (90, 130, 3), dtype=np.uint8)
    result = detector(image)
    num = len(result["classes"])
    assert 0 < num <= detector.config.eval.max_detections
    assert result["boxes"].shape == (num, 4) and result["boxes"].dtype == np.int64
    assert result["masks"].shape == (num, 90, 130) and result["masks"].dtype == np.bool_
    boxes = result["boxes"]
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 130).all()
    assert (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= 90).all()
    assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
    assert (np.diff(result["box_scores"]) <= 0).all()
    assert ((result["classes"] >= 0) & (result["classes"] < 3)).all()
    # YOLACT++: the mask score is the box score times a non-negative predicted IoU.
    assert (result["mask_scores"] >= 0).all()
    assert not np.allclose(result["mask_scores"], result["box_scores"])


def test_raw_outputs_match_the_model(detector):
    batch = np.random.default_rng(1).normal(size=(1, 3, 256, 256)).astype(np.float32)
    loc, conf, coeff, proto = detector.raw(batch)
    num_priors = detector.model.priors.shape[0]
    assert loc.shape == (1, num_priors, 4) and conf.shape == (1, num_priors, 4)
    assert coeff.shape == (1, num_priors, 8) and proto.shape == (1, 64, 64, 8)
    np.testing.assert_allclose(conf.sum(-1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match=r"expected a \[B, 3, 256, 256\] batch"):
        detector.raw(batch[:, :, :128])


def test_detector_rejects_a_checkpoint_of_another_config(checkpoint):
    _, path = checkpoint
    other = tiny_config(name="yolact_resnet50")
    with pytest.raises(CheckpointError, match="does not fit this model"):
        Detector(config=other, ckpt=path)
    with pytest.raises(CheckpointError, match="checkpoint file not found"):
        Detector(config=other, ckpt=path + ".missing")


def test_yolact_v1_mask_scores_equal_box_scores(checkpoint):
    config = replace(tiny_config(name="yolact_resnet50"), **{"eval.score_threshold": 0.0})
    net = build_inference_net(config, build_model(config))
    assert isinstance(net, InferenceNet) and net.rescoring is None
    images = ms.Tensor(np.random.default_rng(2).normal(size=(2, 3, 256, 256)).astype(np.float32))
    boxes, classes, box_scores, mask_scores, masks, valid = (o.asnumpy() for o in net(images))
    assert valid.any()
    np.testing.assert_array_equal(mask_scores, box_scores)
    assert masks.shape == (2, config.eval.max_detections, 64, 64)
    assert ((masks >= 0) & (masks <= 1)).all()
