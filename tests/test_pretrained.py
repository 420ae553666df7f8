"""Fine-tuning from any checkpoint (``run.pretrained``, ``src.checkpoint.load_pretrained_weights``):
a 6-class training checkpoint starts a 3-class config (the loaded tensors equal the file's
averaged weights, the class-dependent layers keep the init of a run without it), converted
authors' weights start a 3-class R-50++, a foreign checkpoint is refused in one line, and
train.py's errors.

The tiny models of ``tests.conftest.tiny_config`` are built, never run: no graph compiles
except in train.py's subprocess.
"""

import mindspore as ms
import numpy as np
import pytest

from src.checkpoint import (CheckpointError, load_pretrained_weights, save_checkpoint_atomic,
                            save_training_checkpoint)
from src.config.load import load_config
from src.config.schema import replace
from src.config.variants import for_dataset
from src.model.build import build_model
from src.runtime import RunContext
from src.train.setup import build_training
from tests.conftest import tiny_config

CPU = RunContext("CPU", False)
# Layers whose output count follows the class count: C per prior, C - 1, C - 1.
CLASS_LAYERS = ("prediction_head.conf_layer", "semantic_head.semantic_seg_conv",
                "maskiou_net.maskiou_net.10")
CLASS_DEPENDENT = sorted(f"{layer}.{leaf}" for layer in CLASS_LAYERS for leaf in ("weight", "bias"))


def model_arrays(model):
    return {name: param.asnumpy() for name, param in model.parameters_and_names()}


def read_state(path):
    return {name: param.asnumpy() for name, param in ms.load_checkpoint(path).items()}


@pytest.fixture(scope="module")
def six_class_checkpoint(tmp_path_factory):
    """A training checkpoint of the tiny 6-class config with a weight average: random
    averages (unlike any init, BatchNorm's constants included) and live weights = average + 1,
    so the two are told apart."""
    config = tiny_config(num_classes=7, **{"train.ema_decay": 0.9})
    setup = build_training(config, CPU)
    rng = np.random.default_rng(1)
    live = dict(setup.model.parameters_and_names())
    for name, average in setup.weight_average.named_averages():
        value = rng.standard_normal(average.shape).astype(np.float32)
        average.set_data(ms.Tensor(value))
        live[name].set_data(ms.Tensor(value + 1.0))
    path = str(tmp_path_factory.mktemp("six") / "six_classes_5.ckpt")
    save_training_checkpoint(path, setup.state(), iteration=5)
    return path


def test_six_class_training_checkpoint_starts_a_three_class_config(six_class_checkpoint, caplog):
    caplog.set_level("INFO", logger="yolact")
    three = tiny_config(num_classes=4, **{"train.ema_decay": 0.9})
    fresh = model_arrays(build_training(three, CPU).model)
    caplog.clear()
    setup = build_training(replace(three, **{"run.pretrained": six_class_checkpoint}), CPU)
    loaded = model_arrays(setup.model)
    saved = read_state(six_class_checkpoint)

    skipped = sorted(name for name in loaded
                     if name not in saved or saved[name].shape != loaded[name].shape)
    assert skipped == CLASS_DEPENDENT
    for name in skipped:
        np.testing.assert_array_equal(loaded[name], fresh[name], err_msg=name)
    taken = [name for name in loaded if name not in skipped]
    for name in taken:
        # The average (the model's names), not the live weights.
        np.testing.assert_array_equal(loaded[name], saved[name], err_msg=name)
        np.testing.assert_array_equal(loaded[name] + 1.0, saved["live." + name], err_msg=name)
    # The file's values are no init, so equality above is the load.
    assert [name for name in taken if np.array_equal(fresh[name], saved[name])] == []
    # The weight average starts from the loaded weights.
    for name, average in setup.weight_average.named_averages():
        np.testing.assert_array_equal(average.asnumpy(), loaded[name], err_msg=name)

    log = caplog.text
    assert f"pretrained weights from {six_class_checkpoint}: {len(taken)} of {len(loaded)} " \
           "model tensors loaded" in log
    assert len(loaded) - len(taken) == 6
    assert ("prediction_head.conf_layer: weight (63, 16, 3, 3) vs (36, 16, 3, 3), "
            "bias (63,) vs (36,)") in log
    assert "semantic_head.semantic_seg_conv: weight (6, 16, 1, 1) vs (3, 16, 1, 1)" in log
    assert "maskiou_net.maskiou_net.10: weight (6, 128, 1, 1) vs (3, 128, 1, 1)" in log
    assert f"live ({len(loaded)})" in log     # the live copies are counted, not loaded


def test_pretrained_wins_over_backbone_ckpt(six_class_checkpoint, tmp_path):
    """run.backbone_ckpt loads first, run.pretrained over it."""
    ms.set_seed(2)
    other = build_model(tiny_config(num_classes=4))
    backbone = str(tmp_path / "backbone.ckpt")
    save_checkpoint_atomic([{"name": name, "data": param} for name, param
                            in other.parameters_and_names() if name.startswith("backbone.")],
                           backbone)
    config = tiny_config(num_classes=4, **{"run.backbone_ckpt": backbone,
                                           "run.pretrained": six_class_checkpoint})
    loaded = model_arrays(build_training(config, CPU).model)
    saved = read_state(six_class_checkpoint)
    names = [name for name in loaded if name.startswith("backbone.")]
    assert names and all(np.array_equal(loaded[name], saved[name]) for name in names)
    assert not np.array_equal(read_state(backbone)["backbone.conv1.weight"],
                              saved["backbone.conv1.weight"])


@pytest.mark.parametrize("case", ["foreign_names", "shapes_only"])
def test_checkpoint_matching_nothing_is_refused_in_one_line(case, tmp_path):
    path = str(tmp_path / f"{case}.ckpt")
    if case == "foreign_names":
        entries = [("features.0.weight", (8, 3, 3, 3)), ("classifier.bias", (1000,))]
        expected = "e.g. features.0.weight"
    else:
        # The right name with the wrong shape matches nothing either.
        entries = [("prediction_head.conf_layer.bias", (5,))]
        expected = "prediction_head.conf_layer.bias is (5,) here but (36,) in the model"
    save_checkpoint_atomic([{"name": name, "data": ms.Tensor(np.ones(shape, np.float32))}
                            for name, shape in entries], path)
    model = build_model(tiny_config(num_classes=4))
    before = model_arrays(model)
    with pytest.raises(CheckpointError) as error:
        load_pretrained_weights(model, path)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{path}: none of its {len(entries)} "
                                                      "entries is a parameter of this model")
    assert expected in message
    after = model_arrays(model)
    assert all(np.array_equal(before[name], after[name]) for name in before)


@pytest.mark.slow
def test_converted_authors_weights_start_a_three_class_r50(tmp_path):
    """tools/convert_weights.py's conversion of a (random) authors' COCO R-50++ checkpoint,
    81 classes, into the 3-class R-50++: all but the class-dependent layers load."""
    from src.utils.weights import convert, write_checkpoint
    from tests.test_convert_weights import authors_entries, random_state_dict

    coco = load_config("yolact_plus_resnet50")
    arrays = convert(random_state_dict(authors_entries(coco.name), seed=0), coco).arrays
    path = str(tmp_path / "yolact_plus_resnet50_coco.ckpt")
    write_checkpoint(arrays, path)
    three = for_dataset(coco, ["a", "b", "c"])
    ms.set_seed(0)
    fresh = build_model(three)
    ms.set_seed(0)
    model = build_model(three)
    fit = load_pretrained_weights(model, path)

    assert sorted(name for name, _, _ in fit.mis_shaped) == CLASS_DEPENDENT
    assert fit.missing == () and fit.unexpected == () and fit.other == ()
    assert len(fit.matched) == len(arrays) - 6
    fresh_params = dict(fresh.parameters_and_names())
    for name, param in model.parameters_and_names():
        expected = fresh_params[name].asnumpy() if name in CLASS_DEPENDENT else arrays[name]
        np.testing.assert_array_equal(param.asnumpy(), expected, err_msg=name)
