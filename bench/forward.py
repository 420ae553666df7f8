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
import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

# Before MindSpore: sets the CPU environment defaults and turns the compile cache off.
from bench.common import (add_model_arguments, apply_impl, compile_and_warm,  # noqa: E402
                          machine_description, make_parser, median_cpu, median_wall,
                          paired_ratio, peak_rss_mb, print_child_result, print_dcn_layers,
                          randomise_offset_convs, require_positive, run_child, time_dcn_layers,
                          timed, variant, SEED)

import numpy as np  # noqa: E402
import mindspore as ms  # noqa: E402
from mindspore import nn, ops  # noqa: E402

from src.inference.net import build_inference_net  # noqa: E402
from src.model.build import build_model  # noqa: E402
from src.model.resnet import ResNet  # noqa: E402
from src.postprocess.masks import assemble_masks_tensor  # noqa: E402
from src.runtime import init_context  # noqa: E402

DEFAULT_CONFIGS = ("yolact_plus_resnet50", "yolact_plus_base")
# Options a child gets from the parent's command line.
CHILD_OPTIONS = ("rounds", "warmup", "size", "batch", "impl", "profile")


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


def interleaved_rounds(baseline, baseline_inputs, measured, rounds):
    """``rounds`` times: for each (name, net, inputs) of ``measured``, the baseline then the net.

    Returns {name: {"runs": [(wall, cpu) s per round], "baseline": [(wall, cpu) s of the
    baseline run just before]}}.
    """
    times = {name: {"runs": [], "baseline": []} for name, _, _ in measured}
    for _ in range(rounds):
        for name, net, inputs in measured:
            times[name]["baseline"].append(timed(baseline, baseline_inputs)[:2])
            times[name]["runs"].append(timed(net, inputs)[:2])
    return times


def plain_resnet50(warmup, images):
    baseline = ResNet(layers=(3, 4, 6, 3))
    baseline.set_train(False)
    return baseline, compile_and_warm(baseline, (images,), warmup)


def measure_config(args, name):
    """Child process: one config's timings, compile times and peak RSS (a JSON-able dict)."""
    context = init_context("CPU")
    rss = {"runtime": peak_rss_mb()}
    config = variant(name, args.size, args.impl)
    rng = np.random.default_rng(SEED)
    images = ms.Tensor(rng.standard_normal((args.batch, 3, args.size, args.size)), ms.float32)
    model = build_model(config, context.device_target)
    apply_impl(model, args.impl)
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


def measure_dcn_layers(args):
    """Child process: one 3x3 layer per backbone DCN shape, plain conv vs each DCN
    implementation vs the offset/mask conv alone, interleaved per round. Returns a JSON-able
    dict."""
    init_context("CPU")
    return time_dcn_layers(args)


STAGE_LABELS = {"network": "network forward", "inference": "full inference",
                "backbone": "  backbone", "neck_heads": "  FPN + protonet + heads",
                "detect_masks": "  detection + masks"}


def format_config_rows(result):
    times = result["times"]
    baseline = [run for stage in times.values() for run in stage["baseline"]]
    base_wall, base_cpu = median_wall(baseline), median_cpu(baseline)
    lines = []
    for stage, label in STAGE_LABELS.items():
        if stage not in times:
            continue
        runs = times[stage]["runs"]
        median, cpu = median_wall(runs), median_cpu(runs)
        # Each run over the baseline run just before it: robust to slow drifts of the machine.
        paired = paired_ratio(runs, times[stage]["baseline"])
        rss = f"{result['rss_mb']['model']:.0f}" if stage == "network" else ""
        lines.append(f"| {result['config']} | {result['impl']} | {label} | {median:.3f} | "
                     f"{min(wall for wall, _ in runs):.3f} | {median / base_wall:.2f} | "
                     f"{paired:.2f} | {cpu:.3f} | {cpu / base_cpu:.2f} | "
                     f"{result['compile'][stage]:.1f} | {rss} |")
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


def parse_args(argv=None):
    parser = make_parser(__doc__)
    add_model_arguments(
        parser, configs=DEFAULT_CONFIGS, configs_help="variants to measure (none: only "
        "--dcn_layers)", rounds=7, batch=1, batch_help="images per forward",
        warmup_help="untimed calls per net before the rounds, the compiling one included",
        dcn_layers_help="also time one layer per DCN shape: plain conv vs each DCN")
    parser.add_argument("--profile", action="store_true",
                        help="also time backbone / FPN+protonet+heads / detection+masks")
    args = parser.parse_args(argv)
    require_positive(parser, args, "rounds", "warmup")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        print_child_result(measure_dcn_layers(args) if args.child == "dcn_layers"
                           else measure_config(args, args.child))
        return
    results = [run_child(__file__, name, args, CHILD_OPTIONS) for name in args.configs]
    dcn = run_child(__file__, "dcn_layers", args, CHILD_OPTIONS) if args.dcn_layers else None
    print_report(args, results, dcn)


if __name__ == "__main__":
    main()
