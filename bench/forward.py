"""Eval forward time and peak RSS of YOLACT++ at 550, as ratios to a plain ResNet-50.

Run from the repository root::

    python bench/forward.py                              # R-50++ and R-101++, CPU kernels
    python bench/forward.py --impl fast --rounds 9       # MindSpore primitives only
    python bench/forward.py --profile --dcn_layers       # + per-stage split, DCN layer timings

Absolute timings on a shared CPU drift by tens of percent between runs, so every figure is
also given as a ratio to a plain ResNet-50 (torchvision layout, no DCN, eval mode) measured
in the same process, interleaved with the model: each round runs the baseline right before
each measured net. Three ratios are printed: medians over the rounds, the median of the
per-round pairs, and process CPU time (which moves least when other processes take the
cores). Each config runs in its own child process (this script re-invoked with ``--child``),
so its peak RSS is its own. The weights are random; the DCN offset convs get small random
weights so that sampling is fractional, as with trained weights. Detection and mask
assembly have static shapes (always 80 classes x 200 candidates, 100 masks), so their cost
hardly depends on the weights.
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

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from src.utils.cpu_env import set_cpu_env_defaults  # noqa: E402

set_cpu_env_defaults()
# Compile times are reported: a cached graph would hide them.
os.environ["MS_COMPILER_CACHE_ENABLE"] = "0"

import numpy as np  # noqa: E402
import mindspore as ms  # noqa: E402
from mindspore import nn, ops  # noqa: E402

from src.config.schema import replace  # noqa: E402
from src.config.variants import VARIANTS  # noqa: E402
from src.inference import build_inference_net  # noqa: E402
from src.model.build import build_model  # noqa: E402
from src.model.dcn import IMPLS as DCN_IMPLS, ModulatedDeformConv2d  # noqa: E402
from src.model.resnet import ResNet, uses_dcn  # noqa: E402
from src.postprocess.masks import assemble_masks_tensor  # noqa: E402
from src.train.context import init_context  # noqa: E402

RESULT_MARKER = "BENCH_RESULT "
DEFAULT_CONFIGS = ("yolact_plus_resnet50", "yolact_plus_base")
# Offset conv weight std: offsets of about a pixel, like a trained DCN's.
OFFSET_WEIGHT_STD = 1e-3
# --impl: the C++ CPU kernels (DCN sampling, Winograd head convs) or MindSpore primitives only
# with the fast or the native DCN.
IMPLS = ("kernel", "fast", "native")


def impl_changes(impl):
    """Config changes (for ``replace``) that select ``impl``, one of ``IMPLS``."""
    if impl == "kernel":
        return {"model.kernels": "cpu"}
    return {"model.kernels": "portable", "model.backbone.dcn_impl": impl}


def peak_rss_mb():
    """Peak resident set size of this process so far, MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_synced(net, inputs):
    """Run ``net`` and copy every output to the host, so the time covers the whole graph."""
    outputs = net(*inputs)
    if not isinstance(outputs, (tuple, list)):
        outputs = (outputs,)
    return tuple(o.asnumpy() for o in outputs)


def timed(net, inputs):
    """(wall seconds, process CPU seconds) of one synced call. The CPU time of all threads
    moves less than the wall time when other processes take cores: a thread waiting for a
    core counts in one, not in the other."""
    wall, cpu = time.perf_counter(), time.process_time()
    run_synced(net, inputs)
    return time.perf_counter() - wall, time.process_time() - cpu


class NeckAndHeads(nn.Cell):
    """Profiling stage 2, the eval path of ``Yolact`` after the backbone: FPN, protonet,
    prediction head, softmax. Inputs C3, C4, C5; returns loc, conf, coeff, proto."""

    def __init__(self, model):
        super().__init__()
        self.fpn = model.fpn
        self.proto_net = model.proto_net
        self.prediction_head = model.prediction_head

    def construct(self, c3, c4, c5):
        features = self.fpn(c3, c4, c5)
        proto = self.proto_net(features[0])
        loc, conf, coeff = self.prediction_head(features)
        return loc, ops.softmax(conf, axis=-1), coeff, proto


class DetectAndMasks(nn.Cell):
    """Profiling stage 3, ``InferenceNet`` after the network: Fast NMS, mask assembly and
    re-scoring. Inputs loc, conf, coeff, proto, priors; returns the detections."""

    def __init__(self, inference_net):
        super().__init__()
        self.detect = inference_net.detect
        self.rescoring = inference_net.rescoring

    def construct(self, loc, conf, coeff, proto, priors):
        boxes, classes, scores, coeffs, valid = self.detect(loc, conf, coeff, priors)
        masks = assemble_masks_tensor(proto, coeffs, boxes)
        mask_scores = scores if self.rescoring is None else self.rescoring(masks, classes, scores)
        return boxes, classes, scores, mask_scores, masks, valid


def randomise_offset_convs(cell, rng):
    for name, param in cell.parameters_and_names():
        if "conv_offset_mask.weight" in name:
            param.set_data(ms.Tensor(rng.normal(0, OFFSET_WEIGHT_STD, param.shape), ms.float32))


def compile_and_warm(net, inputs, warmup):
    """Returns the first call's time (graph compile + one run); then ``warmup - 1`` more runs."""
    first = timed(net, inputs)[0]
    for _ in range(warmup - 1):
        timed(net, inputs)
    return first


def interleaved_rounds(baseline, baseline_inputs, measured, rounds):
    """``rounds`` times: for each (name, net, inputs) of ``measured``, the baseline then the net.

    Returns {name: {"runs": [(wall, cpu) s per round], "baseline": [(wall, cpu) s of the
    baseline run just before]}}.
    """
    times = {name: {"runs": [], "baseline": []} for name, _, _ in measured}
    for _ in range(rounds):
        for name, net, inputs in measured:
            times[name]["baseline"].append(timed(baseline, baseline_inputs))
            times[name]["runs"].append(timed(net, inputs))
    return times


def plain_resnet50(warmup, images):
    baseline = ResNet(layers=(3, 4, 6, 3))
    baseline.set_train(False)
    return baseline, compile_and_warm(baseline, (images,), warmup)


def measure_config(args, name):
    """Child process: one config's timings, compile times and peak RSS (a JSON-able dict)."""
    init_context("CPU")
    rss = {"runtime": peak_rss_mb()}
    config = replace(VARIANTS[name], **{"data.max_size": args.size, **impl_changes(args.impl)})
    rng = np.random.default_rng(0)
    images = ms.Tensor(rng.standard_normal((args.batch, 3, args.size, args.size)), ms.float32)
    model = build_model(config)
    randomise_offset_convs(model, rng)
    model.set_train(False)
    inference = build_inference_net(config, model)
    # What a Detector holds: the inference graph only. The bare network graph comes next.
    compile_s = {"inference": compile_and_warm(inference, (images,), args.warmup)}
    rss["inference"] = peak_rss_mb()
    compile_s["network"] = compile_and_warm(model, (images,), args.warmup)
    rss["model"] = peak_rss_mb()
    measured = [("network", model, (images,)), ("inference", inference, (images,))]
    if args.profile:
        neck, post = NeckAndHeads(model), DetectAndMasks(inference)
        compile_s["backbone"] = compile_and_warm(model.backbone, (images,), args.warmup)
        features = model.backbone(images)
        compile_s["neck_heads"] = compile_and_warm(neck, features, args.warmup)
        post_inputs = tuple(neck(*features)) + (model.priors,)
        compile_s["detect_masks"] = compile_and_warm(post, post_inputs, args.warmup)
        measured += [("backbone", model.backbone, (images,)), ("neck_heads", neck, features),
                     ("detect_masks", post, post_inputs)]
    baseline, compile_s["baseline"] = plain_resnet50(args.warmup, images)
    rss["child"] = peak_rss_mb()
    times = interleaved_rounds(baseline, (images,), measured, args.rounds)
    return {"config": name, "impl": args.impl, "times": times, "compile": compile_s,
            "rss_mb": rss}


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


def measure_dcn_layers(args):
    """Child process: one 3x3 layer per backbone DCN shape, plain conv vs each DCN
    implementation vs the offset/mask conv alone, interleaved per round. Returns a JSON-able
    dict."""
    init_context("CPU")
    rng = np.random.default_rng(0)
    rows = []
    for shape in dcn_layer_shapes(args.size):
        _, channels, side, stride, _, _ = shape
        x = ms.Tensor(rng.standard_normal((args.batch, channels, side, side)), ms.float32)
        layers = dcn_comparison_layers(channels, stride, rng)
        for layer in layers.values():
            compile_and_warm(layer, (x,), args.warmup)
        times = {name: [] for name in layers}
        for _ in range(args.rounds):
            for name, layer in layers.items():
                times[name].append(timed(layer, (x,))[0])
        rows.append(dcn_layer_row(shape, times))
    return {"dcn_layers": rows}


def run_child(args, target):
    """Run this script as a child process for ``target``; returns its result dict."""
    command = [sys.executable, os.path.abspath(__file__), "--child", target,
               "--rounds", str(args.rounds), "--warmup", str(args.warmup),
               "--size", str(args.size), "--batch", str(args.batch),
               "--impl", args.impl] + (["--profile"] if args.profile else [])
    done = subprocess.run(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True, check=False)
    results = [line[len(RESULT_MARKER):] for line in done.stdout.splitlines()
               if line.startswith(RESULT_MARKER)]
    if done.returncode != 0 or not results:
        raise RuntimeError(f"child for {target} failed (exit {done.returncode}):\n{done.stdout}")
    return json.loads(results[-1])


def machine_description():
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


STAGE_LABELS = {"network": "network forward", "inference": "full inference",
                "backbone": "  backbone", "neck_heads": "  FPN + protonet + heads",
                "detect_masks": "  detection + masks"}


def format_config_rows(result):
    times = result["times"]
    baseline = [run for stage in times.values() for run in stage["baseline"]]
    base_wall = statistics.median(wall for wall, _ in baseline)
    base_cpu = statistics.median(cpu for _, cpu in baseline)
    lines = []
    for stage, label in STAGE_LABELS.items():
        if stage not in times:
            continue
        walls = [wall for wall, _ in times[stage]["runs"]]
        cpu = statistics.median(cpu for _, cpu in times[stage]["runs"])
        median = statistics.median(walls)
        # Each run over the baseline run just before it: robust to slow drifts of the machine.
        paired = statistics.median(run[0] / base[0] for run, base in
                                   zip(times[stage]["runs"], times[stage]["baseline"]))
        rss = f"{result['rss_mb']['model']:.0f}" if stage == "network" else ""
        lines.append(f"| {result['config']} | {result['impl']} | {label} | {median:.3f} | "
                     f"{min(walls):.3f} | {median / base_wall:.2f} | {paired:.2f} | {cpu:.3f} | "
                     f"{cpu / base_cpu:.2f} | {result['compile'][stage]:.1f} | {rss} |")
    lines.append(f"| {result['config']} | | ResNet-50 baseline | {base_wall:.3f} | "
                 f"{min(wall for wall, _ in baseline):.3f} | 1.00 | 1.00 | {base_cpu:.3f} | "
                 f"1.00 | {result['compile']['baseline']:.1f} | |")
    return lines


def print_report(args, results, dcn):
    print(machine_description())
    print(f"input [{args.batch}, 3, {args.size}, {args.size}], {args.rounds} interleaved rounds "
          f"after {args.warmup} warm-up call(s); times in seconds")
    if results:
        print_config_table(results)
    if dcn:
        print_dcn_layers(dcn["dcn_layers"])


def print_config_table(results):
    print("\n| config | impl | what | median | min | x ResNet-50 | paired | CPU s | x ResNet-50 "
          "(CPU) | compile (first call) | peak RSS (MB) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for result in results:
        print("\n".join(format_config_rows(result)))
    print("\nmedian, min: wall seconds per call. x ResNet-50: median / the baseline's median in "
          "the same process; paired: median of each run / the baseline run just before it; "
          "CPU s: median process CPU seconds (all threads) per call, and its ratio.\npeak RSS: "
          "the child after the inference and network graphs ran, before the baseline was built.")
    for result in results:
        rss = result["rss_mb"]
        print(f"{result['config']}: peak RSS MB: runtime {rss['runtime']:.0f}, + inference graph "
              f"{rss['inference']:.0f}, + network graph {rss['model']:.0f}, + ResNet-50 "
              f"{rss['child']:.0f}")


def print_dcn_layers(rows, title="One 3x3 layer per DCN shape (ms, median)", measured="DCN"):
    """The per-shape DCN table and each implementation's summed cost over plain convs;
    ``measured`` names what was timed (also used by bench/train_step.py)."""
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


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="*", default=list(DEFAULT_CONFIGS),
                        choices=sorted(VARIANTS),
                        help="variants to measure (none: only --dcn_layers)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timed rounds")
    parser.add_argument("--warmup", type=int, default=2,
                        help="untimed calls per net before the rounds, the compiling one included")
    parser.add_argument("--size", type=int, default=550, help="input side in pixels")
    parser.add_argument("--batch", type=int, default=1, help="images per forward")
    parser.add_argument("--impl", choices=IMPLS, default="kernel",
                        help="kernel: the C++ CPU kernels (DCN, Winograd head convs; what runs "
                             "on CPU); fast / native: MindSpore primitives only, with that DCN")
    parser.add_argument("--profile", action="store_true",
                        help="also time backbone / FPN+protonet+heads / detection+masks")
    parser.add_argument("--dcn_layers", action="store_true",
                        help="also time one layer per DCN shape: plain conv vs each DCN")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.warmup < 1:
        parser.error("--rounds and --warmup must be >= 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        result = (measure_dcn_layers(args) if args.child == "dcn_layers"
                  else measure_config(args, args.child))
        print(RESULT_MARKER + json.dumps(result), flush=True)
        return
    results = [run_child(args, name) for name in args.configs]
    dcn = run_child(args, "dcn_layers") if args.dcn_layers else None
    print_report(args, results, dcn)


if __name__ == "__main__":
    main()
