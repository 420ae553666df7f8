"""The one option list: flags are shorthands of config keys, values are checked at load time,
``--help`` lists each setting once, and the README's option tables match the parsers."""
import math
import os
import re
import subprocess
import sys

import pytest

import eval as eval_script
import export as export_script
import train as train_script
from src.config.load import ConfigError, limit_violation, load_config
from src.config.options import config_fields
from src.config.variants import VARIANTS
from src.train.lr_schedule import scale_for_batch_size

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = {"train.py": train_script, "eval.py": eval_script, "export.py": export_script}


def config_of(script, argv):
    """The config an entry script builds from ``argv``, without running it."""
    args = script.build_parser().parse_args(argv)
    return load_config(args.config, args.opts, script.OPTIONS.given(args))


def test_batch_size_flag_and_config_key_give_the_same_schedule():
    by_flag = config_of(train_script, ["--batch_size", "16"])
    by_key = config_of(train_script, ["--opts", "train.batch_size=16"])
    assert by_flag == by_key
    schedule = scale_for_batch_size(by_flag.train)
    assert schedule == scale_for_batch_size(by_key.train)
    assert (schedule.lr, schedule.max_iter, schedule.lr_steps) == (
        pytest.approx(2e-3), 400_000, (140_000, 300_000, 350_000, 375_000))
    # The schedule is stated for 8 images, whatever variant or file says the batch.
    assert scale_for_batch_size(config_of(train_script, []).train).max_iter == 800_000


def test_every_flag_writes_its_key():
    config = config_of(train_script, [
        "--mindrecord_dir", "mr", "--output_dir", "out", "--stop_iter", "7", "--resume", "auto",
        "--save_every", "5", "--keep_last", "0", "--log_every", "2", "--seed", "3",
        "--num_workers", "1", "--loss_scale", "none", "--amp_level", "O2"])
    run = config.run
    assert (run.mindrecord_dir, run.output_dir, run.stop_iter, run.resume) == ("mr", "out", 7,
                                                                              "auto")
    assert (run.save_every, run.keep_last, run.log_every, run.seed) == (5, 0, 2, 3)
    assert (run.loss_scale, run.amp_level, config.data.num_parallel_workers) == ("none", "O2", 1)
    drawn = config_of(eval_script, ["--ckpt", "x", "--image", "a:b", "--draw_score_threshold",
                                    "0.6", "--draw_top_k", "4", "--batch_size", "2"])
    assert (drawn.draw.score_threshold, drawn.draw.top_k, drawn.eval.batch_size) == (0.6, 4, 2)
    # NMS keys are not drawing keys: eval.score_threshold keeps its own value.
    assert drawn.eval.score_threshold == 0.05 and drawn.eval.top_k == 200


def test_a_flag_and_opts_on_the_same_key_is_an_error():
    with pytest.raises(ConfigError, match="--batch_size and --opts train.batch_size=... set "
                                          "the same key"):
        config_of(train_script, ["--batch_size", "4", "--opts", "train.batch_size=2"])


@pytest.mark.parametrize("key, value, allowed", [
    ("model.kernels", "gpu", "auto, cpu, portable"),
    ("model.backbone.dcn_impl", "kernel", "fast, native"),
    ("data.augmentation", "heavy", "ssd, light, none"),
    ("train.lr_decay", "linear", "step, cosine"),
    ("train.optimizer", "adam", "momentum, adamw"),
    ("train.freeze_bn", "maybe", "auto, yes, no"),
    ("run.loss_scale", "auto", "dynamic, static, none"),
    ("run.amp_level", "O4", "O0, O1, O2, O3"),
])
def test_a_bad_choice_fails_at_load_naming_key_and_allowed_values(key, value, allowed):
    with pytest.raises(ConfigError) as error:
        load_config("yolact_plus_demo", [f"{key}={value}"])
    assert str(error.value) == f"--opts: '{key}' expects one of {allowed}, got '{value}'"


@pytest.mark.parametrize("argv, message", [
    (["--save_every", "0"], "--save_every: 'run.save_every' expects a value >= 1, got 0"),
    (["--log_every", "0"], "--log_every: 'run.log_every' expects a value >= 1, got 0"),
    (["--batch_size", "-1"], "--batch_size: 'train.batch_size' expects a value >= 1, got -1"),
    (["--stop_iter", "-5"], "--stop_iter: 'run.stop_iter' expects a value >= 0, got -5"),
    (["--opts", "train.max_iter=-5"], "'train.max_iter' expects a value >= 1, got -5"),
    (["--opts", "train.lr=.nan"], "'train.lr' expects a finite number, got nan"),
    (["--opts", "train.momentum=1.0"], "'train.momentum' expects a value < 1, got 1.0"),
    (["--opts", "model.backbone.layers=[3,0,6,3]"], "'model.backbone.layers' expects a value "
                                                    ">= 1, got [3, 0, 6, 3]"),
    (["--opts", "loss.negative_iou=0.6"], "loss.negative_iou 0.6 is above loss.positive_iou"),
    (["--opts", "data.max_size=200"], "use data.max_size >= 249"),
    (["--opts", "train.lr_steps=[1, 2"], "--opts 'train.lr_steps=[1, 2': the value is not valid "
                                         "YAML"),
])
def test_a_bad_value_fails_at_load_in_one_line(argv, message):
    with pytest.raises(ConfigError) as error:
        config_of(train_script, argv)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_train_py_reports_a_bad_value_before_building_anything(tmp_path):
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "train.py"), "--mindrecord_dir", str(tmp_path),
         "--opts", "model.kernels=gpu"], cwd=tmp_path, capture_output=True, text=True,
        timeout=120)
    assert result.returncode == 2
    assert result.stderr == ("train.py: error: --opts: 'model.kernels' expects one of auto, cpu, "
                             "portable, got 'gpu'\n")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_variant_satisfies_the_limits_of_its_keys(name):
    config = VARIANTS[name]
    for key, item in config_fields():
        value = config
        for part in key.split("."):
            value = getattr(value, part)
        assert limit_violation(value, item.metadata) == "", key
    assert load_config(name) == config


def test_limits():
    assert limit_violation(0.5, {"minimum": 0.0, "maximum": 1.0}) == ""
    assert limit_violation(1.0, {"below": 1.0}) == "expects a value < 1"
    assert limit_violation(0.0, {"above": 0.0}) == "expects a value > 0"
    assert limit_violation(math.inf, {}) == "expects a finite number"
    assert limit_violation(((24, 30), (0,)), {"above": 0.0}) == "expects a value > 0"
    assert limit_violation(True, {"minimum": 5}) == ""        # booleans have no bounds
    assert limit_violation("x", {"choices": ("a", "b")}) == "expects one of a, b"


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_help_lists_each_setting_once(script):
    module = SCRIPTS[script]
    text = module.build_parser().format_help()
    listed = [key for key, _ in config_fields()
              if key.split(".")[0] in module.OPTIONS.sections or key in module.OPTIONS.flags.values()]
    for key in listed:
        occurrences = re.findall(rf"(?<![\w.]){re.escape(key)}:", text)
        assert len(occurrences) == 1, (key, len(occurrences))
    flags = re.findall(r"^  (--\w+)", text, re.MULTILINE)
    assert len(flags) == len(set(flags)), flags


def test_readme_option_tables_match_the_parsers():
    result = subprocess.run([sys.executable, os.path.join(REPO, "tools", "option_docs.py"),
                             "--check"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_inference_does_not_import_training(tmp_path):
    """The inference API (and export) load without the training package."""
    code = ("import sys; import src.inference, src.inference.export; "
            "print(sorted(m for m in sys.modules if m.startswith('src.train')))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
