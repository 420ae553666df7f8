"""Prior boxes: feature-map sizes, counts, exact values per level, the authors' priors."""
import math

import numpy as np
import pytest

from src.box.priors import feature_map_sizes, make_priors
from tests.conftest import load_authors_fixture

RATIOS = (1, 0.5, 2)
YOLACT_V1_SCALES = ((24,), (48,), (96,), (192,), (384,))
# The authors' expression: base · 2^(j/3), j = 0, 1, 2.
YOLACT_PLUS_SCALES = tuple(tuple(base * 2 ** (j / 3.0) for j in range(3))
                           for base in (24, 48, 96, 192, 384))


def test_feature_map_sizes():
    assert feature_map_sizes(550) == (69, 35, 18, 9, 5)
    assert feature_map_sizes(256) == (32, 16, 8, 4, 2)
    # 400 -> conv1 200 -> maxpool 100 -> 50, 25, 13, 7, 4
    assert feature_map_sizes(400) == (50, 25, 13, 7, 4)
    assert feature_map_sizes(550, num_levels=3) == (69, 35, 18)


def test_prior_counts():
    assert make_priors(550, YOLACT_PLUS_SCALES, RATIOS).shape == (57744, 4)
    assert make_priors(550, YOLACT_V1_SCALES, RATIOS, square_anchors=True).shape == (19248, 4)


@pytest.mark.parametrize("level, grid, base", [(0, 69, 24), (1, 35, 48), (2, 18, 96),
                                               (3, 9, 192), (4, 5, 384)])
def test_yolact_plus_first_priors_of_each_level(level, grid, base):
    priors = make_priors(550, YOLACT_PLUS_SCALES, RATIOS)
    offset = 9 * sum(size * size for size in (69, 35, 18, 9, 5)[:level])
    first, second = 0.5 / grid, 1.5 / grid
    root_half = math.sqrt(0.5)
    expected = {
        offset: (first, first, base / 550, base / 550),                    # scale 0, ratio 1
        offset + 1: (first, first, base * root_half / 550, base / root_half / 550),  # ratio 1/2
        offset + 5: (first, first, base * 2 ** (1 / 3) * math.sqrt(2) / 550,
                     base * 2 ** (1 / 3) / math.sqrt(2) / 550),            # scale 1, ratio 2
        offset + 9: (second, first, base / 550, base / 550),                # column i = 1
        offset + 9 * grid: (first, second, base / 550, base / 550),         # row j = 1
    }
    for index, values in expected.items():
        np.testing.assert_allclose(priors[index], values, rtol=1e-6, err_msg=str(index))
    last = offset + 9 * grid * grid - 1
    np.testing.assert_allclose(priors[last], ((grid - 0.5) / grid, (grid - 0.5) / grid,
                                              base * 2 ** (2 / 3) * math.sqrt(2) / 550,
                                              base * 2 ** (2 / 3) / math.sqrt(2) / 550), rtol=1e-6)


def test_yolact_v1_square_anchors():
    priors = make_priors(550, YOLACT_V1_SCALES, RATIOS, square_anchors=True)
    offset = 3 * (69 * 69 + 35 * 35)           # first prior of P5 (18 x 18, scale 96)
    side = 96 * math.sqrt(2) / 550
    np.testing.assert_allclose(priors[offset + 2], (0.5 / 18, 0.5 / 18, side, side), rtol=1e-6)
    np.testing.assert_allclose(priors[offset + 1, 2:], (96 * math.sqrt(0.5) / 550,) * 2, rtol=1e-6)
    assert priors.dtype == np.float32


def test_equal_to_authors_priors_at_256():
    fixture = load_authors_fixture()
    authors = fixture["train/priors"]
    ours = make_priors(256, YOLACT_PLUS_SCALES, RATIOS)
    assert ours.shape == authors.shape == (12276, 4)
    np.testing.assert_allclose(ours, authors, rtol=0, atol=1e-6)
