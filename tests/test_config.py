"""Config variants, derivation for custom datasets, YAML inheritance and overrides."""
import pytest

from src.config.load import ConfigError, load_config
from src.config.variants import VARIANTS, for_dataset, yolact_base, yolact_plus_base


def test_variants_lineage():
    plus50 = VARIANTS["yolact_plus_resnet50"]
    assert plus50.model.backbone.layers == (3, 4, 6, 3)
    assert plus50.model.backbone.dcn_layers == (0, 4, 6, 3)
    assert plus50.model.backbone.dcn_interval == 1
    assert yolact_plus_base.model.backbone.layers == (3, 4, 23, 3)
    assert yolact_plus_base.model.backbone.dcn_interval == 3
    assert yolact_plus_base.model.use_maskiou and not yolact_base.model.use_maskiou
    assert yolact_plus_base.model.num_anchors == 9 and yolact_base.model.num_anchors == 3
    assert yolact_base.model.use_square_anchors and not plus50.model.use_square_anchors
    assert yolact_base.num_classes == 81
    assert plus50.model.pred_scales[1] == pytest.approx((48, 48 * 2 ** (1 / 3), 48 * 2 ** (2 / 3)))


def test_resized_v1_scales_truncate_like_the_authors():
    assert VARIANTS["yolact_im400"].model.pred_scales == ((17,), (34,), (69,), (139,), (279,))
    assert VARIANTS["yolact_im700"].model.pred_scales == ((30,), (61,), (122,), (244,), (488,))
    assert VARIANTS["yolact_im700"].loss.masks_to_train == 300
    assert VARIANTS["yolact_im400"].max_size == 400


def test_custom_dataset_derives_num_classes():
    custom = for_dataset(VARIANTS["yolact_plus_resnet50"], ["cat", "dog"], max_size=384)
    assert custom.num_classes == 3
    assert custom.max_size == 384
    assert custom.name == "yolact_plus_resnet50_custom"
    assert VARIANTS["yolact_plus_resnet50"].num_classes == 81  # parent untouched


def test_yaml_inheritance_and_overrides(tmp_path):
    parent = tmp_path / "parent.yaml"
    parent.write_text("__BASE__: yolact_plus_resnet50\nname: shapes\n"
                      "data:\n  class_names: [circle, square]\n  max_size: 256\n")
    child = tmp_path / "child.yaml"
    child.write_text("__BASE__: parent.yaml\ntrain:\n  lr_steps: [100, 200]\n  max_iter: 300\n")
    config = load_config(str(child), ["train.lr=0.002", "model.use_maskiou=false"])
    assert config.name == "shapes"
    assert config.num_classes == 3 and config.max_size == 256
    assert config.train.lr_steps == (100, 200) and config.train.max_iter == 300
    assert config.train.lr == 0.002 and isinstance(config.train.lr, float)
    assert config.model.use_maskiou is False


def test_exponent_without_a_dot_is_a_float():
    """YAML 1.1 reads 1e-3 as a string; a float field still takes it."""
    config = load_config("yolact_base", ["train.lr=1e-3", "train.grad_clip_norm=10"])
    assert config.train.lr == 1e-3 and config.train.grad_clip_norm == 10.0


def test_yes_and_no_stay_words_in_string_fields():
    """YAML 1.1 reads no as False; train.freeze_bn takes auto / yes / no."""
    assert load_config("yolact_base", ["train.freeze_bn=no"]).train.freeze_bn == "no"
    assert load_config("yolact_base", ["train.freeze_bn=yes"]).train.freeze_bn == "yes"


@pytest.mark.parametrize("override, message", [
    ("train.nope=1", "unknown config key 'train.nope'"),
    ("train.max_iter=abc", "'train.max_iter' expects int"),
    ("train.lr=fast", "'train.lr' expects float"),
    ("model.use_maskiou=1", "'model.use_maskiou' expects true/false"),
    ("train=1", "'train' is a section"),
    ("train.lr", "expected section.field=value"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config("yolact_base", [override])


def test_bad_files_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="unknown config 'nope'"):
        load_config("nope")
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError, match="missing.yaml: cannot read"):
        load_config(str(missing))
    no_base = tmp_path / "nobase.yaml"
    no_base.write_text("name: x\n")
    with pytest.raises(ConfigError, match="nobase.yaml: expected a mapping with a __BASE__"):
        load_config(str(no_base))
    bad_key = tmp_path / "badkey.yaml"
    bad_key.write_text("__BASE__: yolact_base\ndata:\n  colour: red\n")
    with pytest.raises(ConfigError, match="badkey.yaml: unknown config key 'data.colour'"):
        load_config(str(bad_key))
