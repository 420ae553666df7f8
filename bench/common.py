"""What the benchmarks (``forward.py``, ``train_step.py``, ``data.py``) share: the child
processes they measure in, their common command-line options, the machine line, timing and
ratio helpers, the config a bench measures, and the DCN layer comparison.

Import this module before MindSpore: importing it sets the CPU environment defaults
(importing ``src`` applies ``src.runtime.set_cpu_env_defaults``) and turns
the graph compile cache off (compile times are reported: a cached graph would hide them).
The scripts put the repository root on ``sys.path`` first, so that ``bench`` and ``src``
import.
"""
import argparse
import datetime
import importlib.metadata
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import src  # noqa: F401  (the CPU environment defaults, before MindSpore loads)

os.environ["MS_COMPILER_CACHE_ENABLE"] = "0"

import numpy as np  # noqa: E402
import mindspore as ms  # noqa: E402
from mindspore import nn, ops  # noqa: E402

from src.config.schema import replace  # noqa: E402
from src.config.variants import VARIANTS  # noqa: E402
from src.kernels.selection import set_child  # noqa: E402
from src.kernels.winograd import WinogradConv2d  # noqa: E402
from src.model.dcn import IMPLS as DCN_IMPLS, ModulatedDeformConv2d  # noqa: E402
from src.model.resnet import uses_dcn  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A child prints its result as one line: this marker, then JSON.
RESULT_MARKER = "BENCH_RESULT "
SEED = 0
# --impl: the C++ CPU kernels (DCN sampling, Winograd head convs, every other conv and the
# kernels' matmuls on the BLAS), the same kernels with MindSpore's conv and matmul (the CPU
# path before the BLAS convs), or MindSpore primitives only with the fast or the native DCN.
IMPLS = ("kernel", "msconv", "fast", "native")
# Offset conv weight std: offsets of about a pixel, like a trained DCN's.
OFFSET_WEIGHT_STD = 1e-3


# --- child processes ---------------------------------------------------------------------

def option_values(args, names):
    """The command-line options that give a child ``args``' values of ``names`` (attribute
    names, flags ``--<name>``): a list as its values, True as a bare flag; None and False are
    left out."""
    line = []
    for name in names:
        value = getattr(args, name)
        if value is None or value is False:
            continue
        flag = f"--{name}"
        if value is True:
            line.append(flag)
        elif isinstance(value, (list, tuple)):
            line += [flag] + [str(v) for v in value]
        else:
            line += [flag, str(value)]
    return line


def run_child(script, target, args, names):
    """Run the bench ``script`` again as a child process (``--child target`` and ``args``'
    values of ``names``, see ``option_values``), from the repository root, so that its
    timings and peak RSS are its own. Returns the result dict it printed
    (``print_child_result``).

    Raises:
        RuntimeError: the child failed or printed no result (its output is in the message).
    """
    command = ([sys.executable, os.path.abspath(script), "--child", target]
               + option_values(args, names))
    done = subprocess.run(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True, check=False)
    results = [line[len(RESULT_MARKER):] for line in done.stdout.splitlines()
               if line.startswith(RESULT_MARKER)]
    if done.returncode != 0 or not results:
        raise RuntimeError(f"child for {target} failed (exit {done.returncode}):\n{done.stdout}")
    return json.loads(results[-1])


def print_child_result(result):
    """A child's last word: its JSON-able ``result`` for ``run_child``."""
    print(RESULT_MARKER + json.dumps(result), flush=True)


# --- command line ------------------------------------------------------------------------

def make_parser(doc):
    """A parser described by the first paragraph of ``doc``, with the hidden ``--child``
    (what a child process measures)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser


def add_timing_arguments(parser, *, rounds, warmup_help, batch, batch_help,
                         rounds_help="interleaved timed rounds",
                         size_help="input side in pixels"):
    """``--rounds``, ``--warmup`` (default 2), ``--size`` (default 550) and ``--batch``."""
    parser.add_argument("--rounds", type=int, default=rounds, help=rounds_help)
    parser.add_argument("--warmup", type=int, default=2, help=warmup_help)
    parser.add_argument("--size", type=int, default=550, help=size_help)
    parser.add_argument("--batch", type=int, default=batch, help=batch_help)


def add_model_arguments(parser, *, configs, configs_help, rounds, warmup_help, batch,
                        batch_help, dcn_layers_help):
    """The options of the benches that time YOLACT++ against a ResNet-50 (``forward.py``,
    ``train_step.py``): ``--configs``, the timing options, ``--impl`` and ``--dcn_layers``."""
    parser.add_argument("--configs", nargs="*", default=list(configs), choices=sorted(VARIANTS),
                        help=configs_help)
    add_timing_arguments(parser, rounds=rounds, warmup_help=warmup_help, batch=batch,
                         batch_help=batch_help)
    parser.add_argument("--impl", choices=IMPLS, default="kernel",
                        help="kernel: the C++ CPU kernels (DCN, Winograd head convs, the other "
                             "convs and the matmuls on the BLAS; what runs on CPU); msconv: the "
                             "same kernels on MindSpore's conv and matmul (the path before the "
                             "BLAS); fast / native: MindSpore primitives only, with that DCN")
    parser.add_argument("--dcn_layers", action="store_true", help=dcn_layers_help)


def require_positive(parser, args, *names):
    """``parser.error`` unless every option of ``names`` (the smallest value of a list) is
    >= 1."""
    if any(min(np.atleast_1d(getattr(args, name))) < 1 for name in names):
        flags = [f"--{name}" for name in names]
        listed = flags[0] if len(flags) == 1 else ", ".join(flags[:-1]) + " and " + flags[-1]
        parser.error(f"{listed} must be >= 1")


# --- the machine and the process ---------------------------------------------------------

def machine_description():
    """CPU model, logical and usable cores, load average, MindSpore version,
    ``ONEDNN_MAX_CPU_ISA`` and the date (two lines)."""
    cpu = "unknown CPU"
    with open("/proc/cpuinfo", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return (f"machine: {cpu}, {os.cpu_count()} logical cores "
            f"({len(os.sched_getaffinity(0))} usable), load average {load}\n"
            f"MindSpore {importlib.metadata.version('mindspore')}, "
            f"ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA')}, "
            f"{datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}")


def peak_rss_mb():
    """Peak resident set size of this process so far, MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# --- what is measured --------------------------------------------------------------------

def impl_changes(impl):
    """Config changes (for ``replace``) that select ``impl``, one of ``IMPLS`` (``msconv``
    builds the portable model; ``apply_impl`` then swaps its kernels in)."""
    if impl == "kernel":
        return {"model.kernels": "cpu"}
    if impl == "msconv":
        return {"model.kernels": "portable"}
    return {"model.kernels": "portable", "model.backbone.dcn_impl": impl}


def apply_impl(model, impl):
    """For ``impl`` ``msconv``, turn a model built with ``impl_changes(impl)`` into the CPU
    path before the BLAS convs: DCN on the C++ sampling kernel with MindSpore's MatMul, the
    3x3 stride-1 convs with bias outside the backbone on Winograd with MindSpore's
    BatchMatMul, every other conv on MindSpore's conv. Other impls: nothing to do."""
    if impl != "msconv":
        return
    for _, cell in model.backbone.cells_and_names():
        if isinstance(cell, ModulatedDeformConv2d):
            cell.use_cpu_kernel()
            cell.matmul = ops.MatMul()
    for child_name, child in model.name_cells().items():
        if child_name != "backbone":
            _winograd_on_mindspore_matmul(child)


def _winograd_on_mindspore_matmul(parent):
    for name, child in list(parent.name_cells().items()):
        if WinogradConv2d.fits(child):
            winograd = WinogradConv2d.from_conv(child)
            winograd.batch_matmul = ops.BatchMatMul()
            set_child(parent, name, winograd)
        else:
            _winograd_on_mindspore_matmul(child)


def variant(name, size, impl=None, **changes):
    """The variant ``name`` at input side ``size``, with ``impl``'s kernels when given and
    further dotted ``changes`` (``src.config.schema.replace``)."""
    return replace(VARIANTS[name], **{"data.max_size": size,
                                      **(impl_changes(impl) if impl else {}), **changes})


def randomise_offset_convs(cell, rng):
    """Small random weights for every DCN offset/mask conv below ``cell``, so that sampling
    is fractional, as with trained weights."""
    for name, param in cell.parameters_and_names():
        if "conv_offset_mask.weight" in name:
            param.set_data(ms.Tensor(rng.normal(0, OFFSET_WEIGHT_STD, param.shape), ms.float32))


# --- timing ------------------------------------------------------------------------------

def synced(outputs):
    """Host copies of every tensor in a (nested) output, so a timing covers the whole graph."""
    if isinstance(outputs, (tuple, list)):
        return [synced(o) for o in outputs]
    return outputs.asnumpy() if isinstance(outputs, ms.Tensor) else outputs


def timed(function, inputs):
    """(wall s, process CPU s of all threads, host outputs) of one synced call. The CPU time
    moves less than the wall time when other processes take cores: a thread waiting for a
    core counts in one, not in the other."""
    wall, cpu = time.perf_counter(), time.process_time()
    outputs = synced(function(*inputs))
    return time.perf_counter() - wall, time.process_time() - cpu, outputs


def compile_and_warm(function, inputs, warmup):
    """The first call's wall time (graph compile + one run); then ``warmup - 1`` more calls."""
    first = timed(function, inputs)[0]
    for _ in range(warmup - 1):
        timed(function, inputs)
    return first


class Measured:
    """A function and its input tuples, called round-robin over the inputs. ``record`` adds
    (wall, cpu) seconds of a call to ``runs`` and, with ``keep_outputs``, its host outputs to
    ``outputs``."""

    def __init__(self, name, function, inputs, keep_outputs=False):
        self.name, self.function, self.inputs = name, function, inputs
        self.keep_outputs = keep_outputs
        self.calls = 0
        self.runs, self.outputs = [], []

    def call(self):
        result = timed(self.function, self.inputs[self.calls % len(self.inputs)])
        self.calls += 1
        return result

    def compile_and_warm(self, warmup):
        """The first call's wall time (graph compile + one run); then ``warmup - 1`` calls."""
        first = self.call()[0]
        for _ in range(warmup - 1):
            self.call()
        return first

    def record(self):
        wall, cpu, outputs = self.call()
        self.runs.append((wall, cpu))
        if self.keep_outputs:
            self.outputs.append(outputs)


def median_wall(runs):
    """Median wall seconds of [(wall, cpu)] runs."""
    return statistics.median(wall for wall, _ in runs)


def median_cpu(runs):
    """Median CPU seconds of [(wall, cpu)] runs."""
    return statistics.median(cpu for _, cpu in runs)


def paired_ratio(runs, baseline_runs):
    """Median over rounds of each run's wall time / its round's baseline run: robust to slow
    drifts of the machine."""
    return statistics.median(run[0] / base[0] for run, base in zip(runs, baseline_runs))


# --- one 3x3 layer per DCN shape ---------------------------------------------------------

def dcn_layer_shapes(size):
    """Distinct DCN layer shapes of the ResNet backbones at ``size``, with how many blocks of
    R-50++ and R-101++ use each. Returns [(level, channels, in_side, stride, n50, n101)],
    level the stage's output ("C3".."C5")."""
    side = (size + 6 - 7) // 2 + 1          # conv1 7x7/2 pad 3
    side = (side + 2 - 3) // 2 + 1          # maxpool 3x3/2 pad 1
    backbones = [VARIANTS[n].model.backbone for n in ("yolact_plus_resnet50", "yolact_plus_base")]
    shapes = []
    for stage in (1, 2, 3):
        channels = 64 * 2 ** stage
        # The first block of the stage takes the previous stage's side, with stride 2.
        for stride, in_side in ((2, side), (1, (side - 1) // 2 + 1)):
            counts = []
            for bb in backbones:
                blocks = [i for i in range(bb.layers[stage])
                          if uses_dcn(i, bb.layers[stage], bb.dcn_layers[stage], bb.dcn_interval)
                          and (i == 0) == (stride == 2)]
                counts.append(len(blocks))
            shapes.append((f"C{stage + 2}", channels, in_side, stride, counts[0], counts[1]))
        side = (side - 1) // 2 + 1
    return shapes


def dcn_comparison_layers(channels, stride, rng):
    """The layers compared per DCN shape: plain 3x3 conv, the offset/mask conv alone, and
    the DCN implementations (their offset convs randomised so sampling is fractional)."""
    layers = {
        "plain": nn.Conv2d(channels, channels, 3, stride=stride, pad_mode="pad", padding=1,
                           has_bias=False),
        "offset_conv": nn.Conv2d(channels, 27, 3, stride=stride, pad_mode="pad", padding=1),
    }
    for impl in DCN_IMPLS:
        layers[impl] = ModulatedDeformConv2d(channels, channels, stride=stride, impl=impl)
    for layer in layers.values():
        randomise_offset_convs(layer, rng)
    return layers


def dcn_layer_row(shape, times):
    """One table row from ``dcn_layer_shapes``' ``shape`` and {layer: [seconds per round]};
    ratios are per round (same round's plain conv): robust to the machine's slow drifts."""
    level, channels, side, stride, n50, n101 = shape
    return {"level": level, "channels": channels, "side": side, "stride": stride,
            "n50": n50, "n101": n101,
            "median_ms": {k: 1e3 * statistics.median(v) for k, v in times.items()},
            "over_plain": {k: statistics.median(t / p for t, p in zip(v, times["plain"]))
                           for k, v in times.items()}}


def time_dcn_layers(args, runner=None):
    """Child process body of ``--dcn_layers`` (after ``init_context``): per DCN shape of the
    backbones at ``args.size``, the layers of ``dcn_comparison_layers`` on a random
    ``args.batch`` input, each run as ``runner(layer)`` (default: its forward), compiled and
    warmed, then interleaved over ``args.rounds`` rounds. Returns a JSON-able dict."""
    rng = np.random.default_rng(SEED)
    rows = []
    for shape in dcn_layer_shapes(args.size):
        _, channels, side, stride, _, _ = shape
        x = (ms.Tensor(rng.standard_normal((args.batch, channels, side, side)), ms.float32),)
        runners = [Measured(name, layer if runner is None else runner(layer), [x])
                   for name, layer in dcn_comparison_layers(channels, stride, rng).items()]
        for item in runners:
            item.compile_and_warm(args.warmup)
        for _ in range(args.rounds):
            for item in runners:
                item.record()
        rows.append(dcn_layer_row(shape, {r.name: [wall for wall, _ in r.runs] for r in runners}))
    return {"dcn_layers": rows}


def print_dcn_layers(rows, title="One 3x3 layer per DCN shape (ms, median)", measured="DCN"):
    """The per-shape DCN table and each implementation's summed cost over plain convs;
    ``measured`` names what was timed."""
    print(f"\n{title}; n = DCN blocks of that shape")
    print("| level | C | in side | stride | n R-50++ | n R-101++ | plain conv | offset conv | "
          + " | ".join(f"DCN {impl}" for impl in DCN_IMPLS) + " | "
          + " | ".join(f"{impl} / plain" for impl in DCN_IMPLS) + " |")
    print("|---" * (8 + 2 * len(DCN_IMPLS)) + "|")
    extra = {impl: [0.0, 0.0] for impl in DCN_IMPLS}
    for row in rows:
        med = row["median_ms"]
        print(f"| {row['level']} | {row['channels']} | {row['side']} | {row['stride']} | "
              f"{row['n50']} | {row['n101']} | {med['plain']:.1f} | {med['offset_conv']:.1f} | "
              + " | ".join(f"{med[impl]:.1f}" for impl in DCN_IMPLS) + " | "
              + " | ".join(f"{row['over_plain'][impl]:.2f}" for impl in DCN_IMPLS) + " |")
        for impl in extra:
            extra[impl][0] += row["n50"] * (row["over_plain"][impl] - 1) * med["plain"]
            extra[impl][1] += row["n101"] * (row["over_plain"][impl] - 1) * med["plain"]
    for impl, (r50, r101) in extra.items():
        print(f"{measured} {impl}: cost over plain 3x3 convs, summed over the blocks: "
              f"R-50++ {r50:.0f} ms, R-101++ {r101:.0f} ms")
    print("<impl> / plain: median over rounds of the layer's time / the plain conv's time in the "
          "same round.")
