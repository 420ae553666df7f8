"""Training: every parameter gets a gradient, a tiny model overfits two images, resume replays a
run bit for bit, the non-finite guard, Ctrl+C, train.py's errors and the standalone launcher.

Every run uses the tiny YOLACT++ of ``tests.conftest.tiny_config`` (DCN, mask re-scoring) at
256 on synthetic images (``src.synthetic``) converted to MindRecord. Graph compilation is the
costly part (~15 s per train step): the gradient and skipped-step tests share one jitted step,
and the guard test runs through the launcher with train.py (one compile for both).
"""
import os
import re
import signal
import subprocess
import sys
import threading

import mindspore as ms
import numpy as np
import pytest
import yaml
from mindspore import ops

from src.data.coco import load_coco
from src.data.dataset import create_train_dataset
from src.data.mindrecord import write_mindrecord
from src.checkpoint import list_checkpoints
from src.config.schema import replace
from src.data.classes import SHAPE_CLASSES
from src.data.synthetic import generate_dataset
from src.model.build import prior_boxes
from src.runtime import RunContext
from src.train.setup import build_training
from src.train.trainer import train
from tests.conftest import tiny_config

# Slow: compiles and runs the whole train step of a tiny model.
pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES = len(SHAPE_CLASSES) + 1
OVERFIT_STEPS = 120
OVERFIT_LR = 2e-3
FLOAT32_MAX = float(np.finfo(np.float32).max)


def shapes_config(**changes):
    """The tiny config (``tests.conftest.tiny_config``) of the synthetic shapes' classes."""
    return tiny_config(num_classes=NUM_CLASSES, **{"data.class_names": SHAPE_CLASSES, **changes})


def write_synthetic_mindrecord(root, num_images, seed):
    """``num_images`` synthetic training images (~96 px) as a MindRecord dir with a train split."""
    paths = generate_dataset(os.path.join(root, "images"), num_train=num_images, num_val=0,
                             image_size=96, seed=seed)
    dataset = load_coco(paths["train_annotations"], paths["train_images"])
    output_dir = os.path.join(root, "mindrecord")
    write_mindrecord(dataset.images, output_dir, "train", 1, categories=dataset.categories,
                     log=lambda line: None)
    return output_dir


def write_config_yaml(path, config, base="yolact_plus_resnet50"):
    """``config`` (a small variant of ``base``) as a YAML file for train.py's --config."""
    model, backbone = config.model, config.model.backbone
    document = {
        "__BASE__": base, "name": config.name,
        "data": {"class_names": list(config.data.class_names), "max_size": config.max_size,
                 "num_parallel_workers": 1},
        "model": {"backbone": {"layers": list(backbone.layers), "base_width": backbone.base_width},
                  "fpn_channels": model.fpn_channels, "proto_channels": model.proto_channels,
                  "num_prototypes": model.num_prototypes}}
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(document, handle)
    return str(path)


def read_state(path):
    """{name: numpy array} of every entry of a checkpoint file."""
    return {name: param.asnumpy() for name, param in ms.load_checkpoint(path).items()}


def scalar(value):
    """The one number of a [] or [1] array (step counters are stored as [1])."""
    return np.asarray(value).reshape(-1)[0].item()


@pytest.fixture(scope="module")
def six_images(tmp_path_factory):
    """6 images: with batch 2 an epoch is 3 steps, so 4 steps cross an epoch boundary."""
    return write_synthetic_mindrecord(str(tmp_path_factory.mktemp("six")), 6, seed=0)


@pytest.fixture(scope="module")
def two_images(tmp_path_factory):
    return write_synthetic_mindrecord(str(tmp_path_factory.mktemp("two")), 2, seed=1)


@pytest.fixture(scope="module")
def tiny_yaml(tmp_path_factory):
    return write_config_yaml(tmp_path_factory.mktemp("config") / "tiny.yaml",
                             shapes_config())


class FixedBatchTraining:
    """The trainer's parts (``build_training``: model with trained BN, MultiBoxLoss, SGD, the
    jitted step with a static loss scale of 1) on one un-augmented batch of 2 images.
    ``restore`` puts the model, optimizer and scale back to the starting state, so every test
    begins from it."""

    def __init__(self, config, mindrecord_dir):
        config = replace(config, **{
            "train.batch_size": 2, "train.schedule_batch_size": 2, "train.freeze_bn": "no",
            "run.loss_scale": "none", "data.augmentation": "none",
            "data.num_parallel_workers": 1})
        setup = build_training(config, RunContext("CPU", False))
        self.model, self.loss_fn, self.optimizer = setup.model, setup.loss_fn, setup.optimizer
        self.scaler, self.step = setup.scaler, setup.step
        dataset = create_train_dataset(config, mindrecord_dir, 2, prior_boxes(config))
        self.batch = next(dataset.create_tuple_iterator(num_epochs=1))
        model_state = list(self.model.parameters_and_names())
        self.names = ([name for name, _ in model_state]
                      + [f"moment {index}" for index in range(len(self.optimizer.moments))]
                      + ["global_step", "loss scale"])
        self.state = ([param for _, param in model_state] + list(self.optimizer.moments)
                      + [self.optimizer.global_step, self.scaler.scale_value])
        self.start = self.snapshot()
        state = self.state

        # Parameter.set_data after the step has compiled is not seen by the step's graph (it
        # keeps the old buffer); an assignment in a graph is.
        @ms.jit
        def assign(values):
            for param, value in zip(state, values):
                ops.assign(param, value)
            return values[0]

        self.assign = assign

    def snapshot(self):
        return [param.asnumpy().copy() for param in self.state]

    def restore(self, loss_scale=1.0):
        """Back to the starting state, with ``loss_scale`` as the static scale."""
        values = self.start[:-1] + [np.array(loss_scale, np.float32)]
        self.assign(ms.mutable(tuple(ms.Tensor(value) for value in values)))

    def run(self, steps):
        """[(total, terms [5], finite)] of ``steps`` steps on the batch, as numpy values."""
        results = []
        for _ in range(steps):
            total, terms, finite, _ = self.step(*self.batch)
            results.append((float(total.asnumpy()), terms.asnumpy(), bool(finite.asnumpy())))
        return results


def fixed_batch_config(**changes):
    # Weight decay 0: after the first step from zero moments, each moment is its gradient.
    return shapes_config(**{
        "train.lr": OVERFIT_LR, "train.warmup_iters": 0, "train.max_iter": OVERFIT_STEPS + 10,
        "train.weight_decay": 0.0}, **changes)


@pytest.fixture(scope="module")
def all_negatives(two_images):
    """OHEM keeps every background prior (negpos_ratio >= P), so every prior has a class loss.
    At the default ratio P7's 36 priors (2x2 at 256, anchors >= 384 px) match no object and
    are seldom mined, and P7's conv legitimately gets no gradient."""
    num_priors = len(prior_boxes(fixed_batch_config()))
    return FixedBatchTraining(fixed_batch_config(**{"loss.negpos_ratio": num_priors}), two_images)


@pytest.fixture(scope="module")
def fixed_batch(two_images):
    return FixedBatchTraining(fixed_batch_config(), two_images)


def test_every_trainable_parameter_gets_a_nonzero_gradient(all_negatives):
    all_negatives.restore()
    [(_, _, finite)] = all_negatives.run(1)
    assert finite
    optimizer = all_negatives.optimizer
    # Names in the model (the loss cell that shares the maskiou net renames its Parameters).
    names = {id(param): name for name, param in all_negatives.model.parameters_and_names()}
    gradients = {names[id(param)]: moment.asnumpy()
                 for param, moment in zip(optimizer.parameters, optimizer.moments)}
    every_weight = {name for name in names.values() if "moving_" not in name}
    assert set(gradients) == every_weight            # BN gamma/beta are trained (freeze_bn=False)
    assert {name.split(".")[0] for name in gradients} == set(all_negatives.model.name_cells())
    assert any(name.endswith("conv_offset_mask.weight") for name in gradients)   # DCN
    assert any(name.endswith(".gamma") for name in gradients)
    assert all(np.isfinite(g).all() for g in gradients.values())
    zero = sorted(name for name, g in gradients.items() if not np.any(g))
    assert zero == []


def test_tiny_model_overfits_two_images(fixed_batch):
    fixed_batch.restore()
    results = fixed_batch.run(OVERFIT_STEPS)
    assert all(finite for _, _, finite in results)
    first_total, first_terms, _ = results[0]
    last_total, last_terms, _ = results[-1]
    summary = (first_total, first_terms.tolist(), last_total, last_terms.tolist())
    # Measured (synthetic data 2.0; with 1.0's images 70 steps were enough): 32.18 -> 4.13
    # (B 4.68 -> 0.08, C 12.34 -> 0.25, M 4.93 -> 3.63, S 8.82 -> 0.13, I 1.41 -> 0.03); at 70
    # steps M was still 4.87. On the earlier 10-px shapes, lr 1e-2 cut the total as far but left
    # M at 0.91x its start: every term is checked so that a mask branch that does not learn fails.
    assert last_total <= 0.3 * first_total, summary
    for first, last in zip(first_terms, last_terms):
        assert last < 0.8 * first, summary


def test_step_with_overflowing_gradients_is_skipped(all_negatives):
    # A static loss scale of float32's max: the loss stays finite, its scaled gradients
    # overflow to inf, so the step must be skipped.
    all_negatives.restore(loss_scale=FLOAT32_MAX)
    before = all_negatives.snapshot()
    [(total, terms, finite)] = all_negatives.run(1)
    assert not finite
    assert np.isfinite(total) and np.isfinite(terms).all()
    after = all_negatives.snapshot()
    changed = [name for name, old, new in zip(all_negatives.names, before, after)
               if not np.array_equal(old, new)]
    # Weights and moments are kept; global_step counts the iteration (it indexes the lr).
    # The forward pass still moves the trained BatchNorm's running statistics, as in the
    # authors' loop (it skips only the update).
    assert changed and all("moving_" in name or name == "global_step" for name in changed), changed
    assert scalar(after[all_negatives.names.index("global_step")]) == 1
    assert all(np.isfinite(value).all() for value in after)
    all_negatives.restore(loss_scale=1.0)
    [(_, _, finite)] = all_negatives.run(1)
    assert finite
    assert scalar(all_negatives.optimizer.global_step.asnumpy()) == 1
    assert not np.array_equal(all_negatives.snapshot()[0], before[0])


def _logged_totals(caplog_text):
    """{iteration: total loss} from the trainer's progress lines."""
    return {int(it): float(total) for it, total in
            re.findall(r"iter (\d+)/\d+ \|.*?\| total ([-\d.naif]+) \|", caplog_text)}


@pytest.mark.parametrize("ema_decay", [0.0, 0.9])
def test_resume_replays_the_uninterrupted_run(ema_decay, six_images, tmp_path, caplog):
    """4 steps straight == 2 steps, a new process state from the checkpoint, 2 more steps;
    BatchNorm is trained so its running statistics must be restored too, and step 4 starts
    the second epoch (6 images, batch 2). With a weight average the checkpoint's model
    weights are the average and the trained weights go under live.<name>."""
    caplog.set_level("INFO", logger="yolact")
    config = shapes_config(**{
        "train.freeze_bn": "no", "train.ema_decay": ema_decay, "train.batch_size": 2,
        "run.mindrecord_dir": six_images, "run.save_every": 2, "run.keep_last": 0,
        "run.log_every": 1, "data.num_parallel_workers": 1})

    def run(output_dir, stop_iter, resume=""):
        caplog.clear()
        last = train(replace(config, **{"run.output_dir": str(output_dir),
                                        "run.stop_iter": stop_iter, "run.resume": resume}),
                     RunContext("CPU", False))
        return last, caplog.text

    straight, straight_log = run(tmp_path / "straight", 4)
    run(tmp_path / "resumed", 2)
    resumed, resumed_log = run(tmp_path / "resumed", 4, resume="auto")

    assert os.path.basename(resumed) == os.path.basename(straight) == f"{config.name}_4.ckpt"
    assert re.search(r"resumed from .*_2\.ckpt at iteration 2", resumed_log)
    straight_totals, resumed_totals = _logged_totals(straight_log), _logged_totals(resumed_log)
    assert sorted(straight_totals) == [1, 2, 3, 4] and sorted(resumed_totals) == [3, 4]
    assert resumed_totals == {it: straight_totals[it] for it in (3, 4)}

    for iteration in (2, 4):
        expected = read_state(str(tmp_path / "straight" / f"{config.name}_{iteration}.ckpt"))
        found = read_state(str(tmp_path / "resumed" / f"{config.name}_{iteration}.ckpt"))
        assert sorted(found) == sorted(expected)
        different = [name for name in expected if not np.array_equal(found[name], expected[name])]
        assert different == [], f"iteration {iteration}: {different[:5]}"
    state = read_state(straight)
    assert scalar(state["iteration"]) == 4 and scalar(state["global_step"]) == 4
    assert scalar(state["loss_scale.counter"]) == 4
    assert any(name.endswith("moving_mean") for name in state)
    assert any(name.startswith("moments.") and np.any(value) for name, value in state.items())
    live = sorted(name for name in state if name.startswith("live."))
    modules = ("backbone", "fpn", "proto_net", "prediction_head", "semantic_head", "maskiou_net")
    model_names = sorted(name for name in state if name.split(".")[0] in modules)
    if ema_decay:
        assert live == ["live." + name for name in model_names]
        assert scalar(state["ema.num_updates"]) == 4
        averaged = [name for name in model_names
                    if not np.array_equal(state[name], state["live." + name])]
        assert any(name.endswith("moving_mean") for name in averaged)
        assert len(averaged) > 0.9 * len(model_names)
    else:
        assert live == [] and "ema.num_updates" not in state


def run_train_py(args, timeout=180, cpus=None):
    """train.py ``args`` in a subprocess; ``cpus``: the set of CPUs it may run on."""
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    return subprocess.run([sys.executable, os.path.join(REPO, "train.py")] + args, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, preexec_fn=pin)


def error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("train.py: error:")]


@pytest.mark.parametrize("case", ["missing_mindrecord", "unknown_key", "not_a_training_checkpoint",
                                  "missing_pretrained"])
def test_train_py_bad_input_exits_2_with_one_error_line(case, six_images, tiny_yaml, tmp_path):
    args = ["--config", tiny_yaml, "--mindrecord_dir", six_images, "--batch_size", "2",
            "--output_dir", str(tmp_path / "out")]
    if case == "missing_mindrecord":
        missing = str(tmp_path / "no_such_dir")
        args[3] = missing
        expected = os.path.join(missing, "train", "dataset_info.json")
    elif case == "unknown_key":
        args += ["--opts", "train.no_such_key=1"]
        expected = "unknown config key 'train.no_such_key'"
    elif case == "missing_pretrained":
        missing = str(tmp_path / "no_such.ckpt")
        args += ["--pretrained", missing]
        expected = f"train.py: error: {missing}: checkpoint file not found"
    else:
        # Converted weights (model parameters only) passed where a training checkpoint belongs.
        weights = str(tmp_path / "backbone.ckpt")
        ms.save_checkpoint([{"name": "backbone.conv1.weight",
                             "data": ms.Tensor(np.zeros((8, 3, 7, 7), np.float32))}], weights)
        args += ["--resume", weights]
        expected = f"{weights}: not a training checkpoint"
    result = run_train_py(args)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and expected in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not os.path.exists(tmp_path / "out")


def signal_when_printed(process, marker, send, timeout=300):
    """Read ``process``'s output until a line holds ``marker``, call ``send`` (which signals
    it), and return all it printed once it has exited; killed after ``timeout`` s."""
    watchdog = threading.Timer(timeout, process.kill)
    watchdog.start()
    try:
        output = []
        for line in process.stdout:
            output.append(line)
            if marker in line:
                send()
                break
        output.append(process.communicate()[0])
    finally:
        watchdog.cancel()
    return "".join(output)


def run_launcher(args, env_changes=None, timeout=300):
    env = dict(os.environ, PYTHON=sys.executable, **(env_changes or {}))
    return subprocess.run(["bash", os.path.join(REPO, "scripts", "run_standalone_train.sh")] + args,
                          cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.parametrize("args, message", [
    (["only_config"], "Usage: bash"),
    (["yolact_plus_demo", "{missing}"], "MINDRECORD_DIR {missing} does not exist"),
    (["{missing}.yaml", "{mindrecord}"], "config file {missing}.yaml does not exist"),
    (["yolact_plus_demo", "{mindrecord}", "TPU"], "DEVICE_TARGET 'TPU'"),
    (["yolact_plus_demo", "{mindrecord}", "CPU", "--output_dir"], "Usage: bash"),
])
def test_standalone_launcher_checks_its_arguments(args, message, six_images, tmp_path):
    values = {"missing": str(tmp_path / "nothing"), "mindrecord": six_images}
    result = run_launcher([arg.format(**values) for arg in args])
    assert result.returncode == 1
    assert message.format(**values) in result.stderr, result.stderr


def test_launcher_trains_and_the_guard_stops_a_diverged_run(six_images, tiny_yaml, tmp_path):
    """run_standalone_train.sh -> train.py with lr 4e30: step 1 is finite and saved, then the
    weights are so large that every loss is NaN; the updates are skipped and the run stops
    after 20 skipped steps, exit 2, keeping the step-1 checkpoint."""
    output_dir = tmp_path / "run"
    result = run_launcher([tiny_yaml, six_images, "CPU", "--batch_size", "2", "--stop_iter", "40",
                           "--save_every", "1", "--keep_last", "0", "--log_every", "1",
                           "--num_workers", "1", "--output_dir", str(output_dir),
                           "--opts", "train.lr=4.0e+30", "train.warmup_iters=0"])
    log_path = output_dir / "train.log"
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-2000:]
    assert f"log: {log_path}" in result.stderr
    log = log_path.read_text()
    name = shapes_config().name
    kept = os.path.join(str(output_dir), f"{name}_1.ckpt")
    assert ("train.py: error: the loss or its gradients were not finite for 21 steps in a row "
            f"(iteration 22); stopped. The last good checkpoint is {kept}") in log
    assert list_checkpoints(str(output_dir), name) == [kept]
    totals = _logged_totals(log)
    # Iteration 22, the 21st non-finite one, raises before its progress line.
    assert sorted(totals) == list(range(1, 22))
    assert np.isfinite(totals[1]) and not any(np.isfinite(totals[it]) for it in range(2, 22))
    state = read_state(kept)
    assert scalar(state["iteration"]) == 1 and scalar(state["global_step"]) == 1
    assert all(np.isfinite(value).all() for value in state.values())


def test_ctrl_c_saves_a_checkpoint_that_matches_its_iteration(six_images, tiny_yaml, tmp_path):
    """Ctrl+C (SIGINT to the launcher's process group, as a terminal sends it) once iteration 2
    is logged: train.py saves where it is and exits 130, and the checkpoint's iteration equals
    its optimizer step (the interrupt usually lands inside a step, after its update)."""
    output_dir = tmp_path / "run"
    process = subprocess.Popen(
        ["bash", os.path.join(REPO, "scripts", "run_standalone_train.sh"), tiny_yaml, six_images,
         "CPU", "--batch_size", "2", "--stop_iter", "1000", "--log_every", "1", "--num_workers",
         "1", "--output_dir", str(output_dir)],
        cwd=REPO, env=dict(os.environ, PYTHON=sys.executable), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True)
    output = signal_when_printed(process, "iter 2/1000",
                                 lambda: os.killpg(process.pid, signal.SIGINT))
    assert process.returncode == 130, output[-3000:]
    match = re.search(r"interrupted at iteration (\d+); resume with --resume auto", output)
    assert match, output[-3000:]
    iteration = int(match.group(1))
    assert iteration >= 2
    name = shapes_config().name
    [path] = list_checkpoints(str(output_dir), name)
    assert path.endswith(f"{name}_{iteration}.ckpt")
    state = read_state(path)
    assert scalar(state["iteration"]) == scalar(state["global_step"]) == iteration
    assert "interrupted at iteration" in (output_dir / "train.log").read_text()
