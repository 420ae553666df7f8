"""Whole-model structure: parameter totals equal to the authors' models, prior counts, and the
eval-mode outputs of YOLACT++ R-50 at 550."""
import numpy as np
import pytest

import mindspore as ms

from src.config.variants import VARIANTS
from src.box.priors import prototype_size
from src.config.load import ConfigError, check_config
from src.model.build import build_model, prior_boxes

# The authors' trainable parameter totals (BN gamma/beta included, running stats not).
AUTHORS_PARAMETERS = {
    "yolact_plus_resnet50": {"total": 33_766_460, "backbone": 24_382_879, "fpn": 3_868_672,
                             "proto_net": 2_368_544, "prediction_head": 3_017_245,
                             "semantic_head": 20_560, "maskiou_net": 108_560},
    "yolact_plus_base": {"total": 52_571_142, "backbone": 43_187_561, "fpn": 3_868_672,
                         "proto_net": 2_368_544, "prediction_head": 3_017_245,
                         "semantic_head": 20_560, "maskiou_net": 108_560},
    "yolact_base": {"total": 50_157_071, "backbone": 42_500_160, "fpn": 3_868_672,
                    "proto_net": 2_368_544, "prediction_head": 1_399_135,
                    "semantic_head": 20_560},
    "yolact_resnet50": {"total": 31_164_943, "backbone": 23_508_032, "fpn": 3_868_672,
                        "proto_net": 2_368_544, "prediction_head": 1_399_135,
                        "semantic_head": 20_560},
}


def _parameter_counts(net):
    counts = {"total": 0}
    for param in net.trainable_params():
        size = int(np.prod(param.shape))
        module = param.name.split(".")[0]
        counts[module] = counts.get(module, 0) + size
        counts["total"] += size
    return counts


@pytest.mark.parametrize("name", sorted(AUTHORS_PARAMETERS))
def test_parameter_totals_equal_the_authors(name):
    assert _parameter_counts(build_model(VARIANTS[name])) == AUTHORS_PARAMETERS[name]


def test_frozen_bn_removes_gamma_beta_from_training():
    config = VARIANTS["yolact_resnet50"]
    frozen = _parameter_counts(build_model(config, freeze_bn=True))
    # gamma + beta of the stem BN and, per bottleneck, bn1 (p) + bn2 (p) + bn3 (4p), plus the
    # downsample BN (4p) of each stage's first block.
    bn_channels = 64 + sum(blocks * 6 * planes + 4 * planes
                           for blocks, planes in zip((3, 4, 6, 3), (64, 128, 256, 512)))
    bn_params = 2 * bn_channels
    assert frozen["backbone"] == AUTHORS_PARAMETERS["yolact_resnet50"]["backbone"] - bn_params


@pytest.mark.parametrize("name, count", [("yolact_plus_resnet50", 57_744), ("yolact_plus_base", 57_744),
                                         ("yolact_base", 19_248), ("yolact_resnet50", 19_248)])
def test_prior_count_at_550(name, count):
    assert prior_boxes(VARIANTS[name]).shape == (count, 4)


def test_eval_outputs_of_yolact_plus_resnet50_at_550():
    config = VARIANTS["yolact_plus_resnet50"]
    net = build_model(config)
    net.set_train(False)
    image = ms.Tensor(np.random.default_rng(0).normal(size=(1, 3, 550, 550)).astype(np.float32))
    loc, conf, coeff, proto, priors = (o.asnumpy() for o in net(image))
    assert loc.shape == (1, 57_744, 4)
    assert conf.shape == (1, 57_744, 81)
    assert coeff.shape == (1, 57_744, 32)
    assert proto.shape == (1, 138, 138, 32) and prototype_size(config.max_size) == 138
    np.testing.assert_allclose(priors, prior_boxes(config))
    np.testing.assert_allclose(conf.sum(-1), 1.0, atol=1e-5)
    assert np.abs(coeff).max() < 1.0 and proto.min() >= 0.0


def test_yolact_plus_below_the_maskiou_minimum_size_is_a_clear_error():
    from src.config.schema import replace
    small = replace(VARIANTS["yolact_plus_resnet50"], **{"data.max_size": 245})
    assert prototype_size(small.max_size) == 62
    with pytest.raises(ConfigError, match="data.max_size 245 gives 62; use data.max_size >= 249"):
        check_config(small)
    assert prototype_size(249) == 64
