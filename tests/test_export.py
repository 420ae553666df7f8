"""export.py and src.inference.export on a tiny YOLACT++: MINDIR round trip, ExportedDetector, CLI errors."""
import math
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

import mindspore as ms

from src.config.load import load_config
from src.config.schema import replace
from src.inference import Detector, ExportedDetector
from src.inference.export import (check_differences, compare_with_exported, export_checkpoint,
                                  exported_path)
from src.inference.exported import DeployError, exported_input_shape, load_exported
from tests.conftest import save_detecting_checkpoint, tiny_config

# Slow: compiles, exports and reloads MINDIR graphs.
pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# tests.conftest.tiny_config() as a YAML file, for export.py's --config.
TINY_YAML = """\
__BASE__: yolact_plus_resnet50
name: yolact_plus_resnet50_tiny
data:
  class_names: [class0, class1, class2]
  max_size: 256
model:
  backbone:
    layers: [1, 1, 1, 1]
    base_width: 8
  fpn_channels: 16
  proto_channels: 16
  num_prototypes: 8
"""


def run_export(cwd, *args):
    """export.py in a fresh process (cwd: MindSpore may drop IR dumps there)."""
    env = dict(os.environ, MS_COMPILER_CACHE_ENABLE="0")
    return subprocess.run([sys.executable, os.path.join(REPO, "export.py"), *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export")
    config = tiny_config()
    yaml_path = folder / "tiny.yaml"
    yaml_path.write_text(TINY_YAML)
    ckpt = save_detecting_checkpoint(config, str(folder / "tiny.ckpt"))
    return SimpleNamespace(folder=folder, config=config, yaml=str(yaml_path), ckpt=ckpt)


@pytest.fixture(scope="module")
def exported(tiny):
    """export.py run once, into a folder of its own."""
    out_dir = tiny.folder / "out"
    out_dir.mkdir()
    proc = run_export(tiny.folder, "--config", tiny.yaml, "--ckpt", tiny.ckpt,
                      "--file_format", "MINDIR", "--file_name", str(out_dir / "tiny"))
    return SimpleNamespace(proc=proc, out_dir=out_dir, path=str(out_dir / "tiny.mindir"))


@pytest.fixture(scope="module")
def detector(tiny):
    return Detector(config=tiny.config, ckpt=tiny.ckpt, device_target="CPU")


def test_tiny_yaml_is_the_tiny_config(tiny):
    assert load_config(tiny.yaml) == tiny.config


def test_cli_export_writes_verified_mindir(exported):
    proc = exported.proc
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == f"exported {exported.path}"
    assert os.listdir(exported.out_dir) == ["tiny.mindir"]     # no staging folder left behind
    verified = {line.split()[1].rstrip(":"): float(line.split()[5])
                for line in lines if line.startswith("verify ")}
    assert set(verified) == {"boxes", "classes", "box_scores", "mask_scores", "masks", "valid"}
    assert all(diff <= 1e-5 for diff in verified.values())
    assert exported_input_shape(exported.path) == (1, 3, 256, 256)


def test_mindir_outputs_equal_the_checkpoints_inference_net(exported, detector):
    images = ms.Tensor(np.random.default_rng(7).normal(size=(1, 3, 256, 256)).astype(np.float32))
    mine = [o.asnumpy() for o in load_exported(exported.path)(images)]
    reference = [o.asnumpy() for o in detector.net(images)]
    _, classes, box_scores, _, masks, valid = reference
    assert 0 < valid.sum() <= 100
    # The shapes and dtypes src/inference/net.py documents, at B=1, S=256, D=100, M=64.
    documented = [((1, 100, 4), np.float32), ((1, 100), np.int32), ((1, 100), np.float32),
                  ((1, 100), np.float32), ((1, 100, 64, 64), np.float32), ((1, 100), np.bool_)]
    for got, want, (shape, dtype) in zip(mine, reference, documented):
        assert got.shape == want.shape == shape and got.dtype == want.dtype == dtype
    np.testing.assert_array_equal(mine[1], classes)
    np.testing.assert_array_equal(mine[5], valid)
    for got, want in zip(mine, reference):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert masks[valid].max() > 0.5 and (masks >= 0).all() and (masks <= 1).all()
    num_valid = int(valid.sum())
    assert valid[0, :num_valid].all() and (np.diff(box_scores[0, :num_valid]) <= 0).all()


def test_compare_with_exported_catches_other_weights(exported, detector):
    differences = compare_with_exported(detector.net, exported.path, (1, 3, 256, 256))
    assert max(differences.values()) <= 1e-5
    check_differences(differences, exported.path)

    bias = detector.model.prediction_head.conf_layer.bias
    original = bias.asnumpy().copy()
    try:
        bias.set_data(ms.Tensor(original + np.linspace(-2, 2, original.size, dtype=np.float32)))
        changed = compare_with_exported(detector.net, exported.path, (1, 3, 256, 256))
    finally:
        bias.set_data(ms.Tensor(original))
    assert changed["box_scores"] > 1e-3
    with pytest.raises(DeployError, match=r"differs .* by more than 1e-05 in .*box_scores"):
        check_differences(changed, exported.path)
    with pytest.raises(DeployError, match="in masks"):
        check_differences(dict(differences, masks=math.nan), exported.path)


def test_exported_detector_gives_the_detector_result(exported, detector, tiny):
    image = np.random.default_rng(0).integers(0, 255, (90, 130, 3), dtype=np.uint8)
    from_mindir = ExportedDetector(exported.path, config=tiny.config)
    assert from_mindir.batch_size == 1
    got, want = from_mindir(image), detector(image)
    assert sorted(got) == sorted(want) and len(want["classes"]) > 0
    for key in ("boxes", "classes", "masks"):
        assert got[key].dtype == want[key].dtype
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    for key in ("box_scores", "mask_scores"):
        np.testing.assert_allclose(got[key], want[key], rtol=0, atol=1e-5, err_msg=key)
    with pytest.raises(ValueError, match="expected 1 to 1 images, got 2"):
        from_mindir.detect_batch([image, image])


def test_exported_detector_rejects_another_input_size(exported, tiny):
    with pytest.raises(DeployError, match=r"exported for input \(1, 3, 256, 256\).*max_size 320"):
        ExportedDetector(exported.path, config=tiny_config(max_size=320))


def test_batch_export_without_verify_runs_a_batch_per_call(tiny, detector, tmp_path):
    path, differences = export_checkpoint(replace(tiny.config, **{"eval.batch_size": 2}),
                                          tiny.ckpt, str(tmp_path / "tiny_b2.mindir"),
                                          verify=False)
    assert path == str(tmp_path / "tiny_b2.mindir") and differences is None
    assert os.listdir(tmp_path) == ["tiny_b2.mindir"]
    from_mindir = ExportedDetector(path, config=tiny.config)
    assert from_mindir.batch_size == 2
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 255, (70, 50, 3), dtype=np.uint8),
              rng.integers(0, 255, (40, 90, 3), dtype=np.uint8)]
    # BatchNorm in eval mode: each image of the batch gets its single-image result.
    for got, image in zip(from_mindir.detect_batch(images), images):
        want = detector(image)
        assert len(want["classes"]) > 0
        np.testing.assert_array_equal(got["classes"], want["classes"])
        np.testing.assert_array_equal(got["boxes"], want["boxes"])
        np.testing.assert_allclose(got["mask_scores"], want["mask_scores"], rtol=0, atol=1e-5)


def _error_cases(tiny):
    """case -> (flags replacing the good run's, extra arguments, expected message)."""
    missing_ckpt = str(tiny.folder / "missing.ckpt")
    return {
        "missing checkpoint": ({"--ckpt": missing_ckpt}, [],
                               f"{missing_ckpt}: checkpoint file not found"),
        "checkpoint of another config": ({}, ["--opts", "model.num_prototypes=4"],
                                         f"{tiny.ckpt}: does not fit this model"),
        # AIR is refused before anything else, even before the checkpoint is looked at.
        "AIR on CPU": ({"--ckpt": missing_ckpt, "--file_format": "AIR"}, [],
                       "AIR export needs an Ascend device (CANN); use MINDIR on CPU/GPU"),
        # /sys refuses new entries even to root, who ignores permission bits.
        "unwritable output folder": ({"--file_name": "/sys/yolact"}, [],
                                     "/sys: cannot write the export into this folder"),
    }


@pytest.mark.parametrize("case", ["missing checkpoint", "checkpoint of another config",
                                  "AIR on CPU", "unwritable output folder"])
def test_cli_errors_are_one_line(tiny, case):
    flags, extra, message = _error_cases(tiny)[case]
    args = {"--config": tiny.yaml, "--ckpt": tiny.ckpt, "--file_name": str(tiny.folder / "err_out")}
    args.update(flags)
    proc = run_export(tiny.folder, *[item for pair in args.items() for item in pair], *extra)
    assert proc.returncode == 2
    error_lines = proc.stderr.strip().splitlines()
    assert len(error_lines) == 1, proc.stderr
    assert error_lines[0].startswith("export.py: error: ") and message in error_lines[0]
    leftovers = [name for name in os.listdir(tiny.folder)
                 if name.startswith(("err_out", ".export_"))]
    assert not leftovers


def test_export_checkpoint_checks_arguments_before_building(tiny):
    missing_dir = tiny.folder / "no_such_folder"
    with pytest.raises(DeployError, match=f"{missing_dir}: output folder does not exist"):
        export_checkpoint(tiny.config, tiny.ckpt, str(missing_dir / "x"))
    with pytest.raises(DeployError, match="--file_format 'onnx': expected one of MINDIR, AIR"):
        export_checkpoint(tiny.config, tiny.ckpt, str(tiny.folder / "x"), file_format="onnx")
    assert exported_path("a/model", "MINDIR") == os.path.abspath("a/model.mindir")
    assert exported_path("a/model.mindir", "MINDIR") == os.path.abspath("a/model.mindir")
    assert exported_path("a/model.mindir", "AIR") == os.path.abspath("a/model.mindir.air")


def test_run_export_sh_checks_its_arguments(tmp_path):
    script = os.path.join(REPO, "scripts", "run_export.sh")
    usage = subprocess.run(["bash", script, "yolact_plus_resnet50", "x.ckpt"], cwd=tmp_path,
                           capture_output=True, text=True)
    assert usage.returncode == 1 and usage.stdout.startswith(
        "Usage: bash scripts/run_export.sh CONFIG CKPT FILE_NAME [FILE_FORMAT] [DEVICE_TARGET]")
    missing = subprocess.run(["bash", script, "yolact_plus_resnet50", "gone.ckpt", "out"],
                             cwd=tmp_path, capture_output=True, text=True)
    assert missing.returncode == 1
    assert missing.stderr.strip() == f"error: checkpoint not found: {tmp_path / 'gone.ckpt'}"
    assert not os.path.exists(tmp_path / "export.log")
