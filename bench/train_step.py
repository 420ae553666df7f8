"""Train-step time and peak RSS of YOLACT++ at 550, batch 2, as a ratio to a plain ResNet-50
backbone train step measured in the same process.

Run from the repository root::

    python bench/train_step.py                            # R-50++, 550, batch 2, CPU kernels
    python bench/train_step.py --profile --dcn_layers     # + where the time goes
    python bench/train_step.py --profile heads loss       # + only these groups of pieces
    python bench/train_step.py --configs yolact_plus_base --impl native --rounds 7

The YOLACT++ step is the one ``train.py`` runs, built by the same function
(``src.train.setup.build_training``) from the variant with ``train.batch_size`` = ``--batch``
on one device: ``build_model`` in train mode with BatchNorm frozen or not as the trainer
decides for the batch (``freezes_bn``: frozen below 6 per device), ``MultiBoxLoss`` with the
model's maskiou net, ``build_optimizer`` (the config's optimizer, weight decay on all, the
per-iteration lr array of the schedule scaled from ``train.schedule_batch_size`` to the batch,
cut at ``run.stop_iter`` = the calls a child makes) over the trainable parameters, the
dynamic loss scaler (``run.loss_scale``) and ``make_train_step``. Its inputs are real
batches: a few synthetic images (``src/data/synthetic.py``, ``--image_size``) converted to
MindRecord and read back through ``create_train_dataset`` (the config's augmentation),
reused round-robin. The weights are random; the DCN offset convs get small random weights
(as ``bench/forward.py``) so that sampling is fractional.

The baseline is ``ResNet(layers=(3, 4, 6, 3))`` without DCN, same BatchNorm setting, trained
by the same ``make_train_step`` with an optimizer and scaler built from the same settings;
its loss is the sum of the means of C3, C4 and C5.

Timings on the shared CPU drift by tens of percent, so rounds interleave the baseline and
the measured step in one child process per config (its peak RSS is its own); the ratios
use medians over the rounds, the per-round pairs, and process CPU time. ``--profile`` times
pieces of the step (forward, backward of the backbone, of the heads + loss, of the loss,
the optimizer) on fixed inputs, one child process per group of pieces, each with its own
baseline rounds. A separate child runs the baseline alone for its peak RSS.
"""
import argparse
import os
import statistics
import sys
import tempfile

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

# Before MindSpore: sets the CPU environment defaults and turns the compile cache off.
from bench.common import (Measured, add_model_arguments, apply_impl,  # noqa: E402
                          machine_description, make_parser, median_cpu, median_wall,
                          paired_ratio, peak_rss_mb, print_child_result, print_dcn_layers,
                          randomise_offset_convs, require_positive, run_child,
                          time_dcn_layers, variant, SEED)

import numpy as np  # noqa: E402
import mindspore as ms  # noqa: E402
from mindspore import ops  # noqa: E402

from src.data.coco import load_coco  # noqa: E402
from src.data.dataset import TRAIN_COLUMNS, create_train_dataset  # noqa: E402
from src.data.mindrecord import write_mindrecord  # noqa: E402
from src.data.synthetic import generate_dataset  # noqa: E402
from src.model.build import prior_boxes  # noqa: E402
from src.model.resnet import ResNet  # noqa: E402
from src.runtime import init_context  # noqa: E402
from src.train.ema import WeightAverage  # noqa: E402
from src.train.lr_schedule import learning_rates, scale_for_batch_size  # noqa: E402
from src.train.optimizer import build_optimizer  # noqa: E402
from src.train.setup import build_training, freezes_bn  # noqa: E402
from src.train.train_step import build_grad_reducer, build_loss_scaler, make_train_step  # noqa: E402

DEFAULT_CONFIGS = ("yolact_plus_resnet50",)
TARGET_RATIO = 2.6
AUTHORS_STEP_S, AUTHORS_BASELINE_S = 10.0, 3.2
# Options a child gets from the parent's command line.
CHILD_OPTIONS = ("rounds", "warmup", "size", "batch", "impl", "configs", "batches_file")


def backbone_loss(c3, c4, c5):
    """The baseline's loss: the sum of the three outputs' means, and the three terms."""
    terms = ops.stack([c3.mean(), c4.mean(), c5.mean()])
    return terms.sum(), terms


def training_config(args, name):
    """The variant ``name`` at ``--size`` with ``--impl``'s kernels, set for
    ``build_training`` to build the measured step: a total batch of ``--batch`` (one device;
    the schedule is scaled to it from ``train.schedule_batch_size``), seed ``SEED``, random
    weights, float32, the dynamic loss scaler, and an lr array as long as the steps a child
    runs (``run.stop_iter``: the warm-up calls and the rounds)."""
    return variant(name, args.size, args.impl, **{
        "train.batch_size": args.batch, "run.seed": SEED, "run.backbone_ckpt": "",
        "run.amp_level": "O0", "run.loss_scale": "dynamic",
        "run.stop_iter": args.warmup + args.rounds})


def baseline_step(config):
    """The plain ResNet-50 (no DCN) train step: BatchNorm, optimizer, lr array, loss scaler,
    gradient clipping and weight average set from ``config`` (a ``training_config``) as
    ``build_training`` sets them for YOLACT++, with ``backbone_loss``. Returns (network, step).
    """
    schedule = scale_for_batch_size(config.train)
    network = ResNet(layers=(3, 4, 6, 3),
                     freeze_bn=freezes_bn(config.train.freeze_bn, config.train.batch_size))
    network.set_train(True)
    optimizer = build_optimizer(network.trainable_params(),
                                learning_rates(schedule, config.run.stop_iter),
                                schedule.momentum, schedule.weight_decay, schedule.optimizer)
    weight_average = WeightAverage(network, schedule.ema_decay) if schedule.ema_decay else None
    step = make_train_step(network, backbone_loss, optimizer,
                           build_loss_scaler(config.run.loss_scale),
                           build_grad_reducer(optimizer.parameters, False),
                           schedule.grad_clip_norm, weight_average)
    return network, step


def optimizer_update(optimizer):
    """Jitted ``optimizer(grads)`` alone."""
    @ms.jit
    def update(*grads):
        return optimizer(grads)

    return update


def value_and_grad_runner(function, weights, grad_position=None):
    """Jitted forward + backward of ``function`` (returning a scalar) with respect to
    ``weights`` and the inputs at ``grad_position`` (a tuple); returns the loss and the
    first element of every gradient (reading one element of each needs all of them;
    returning them all, or the loss under ``ops.depend`` on them, was slower than the whole
    train step).

    The ``if`` on the loss mirrors the train step's finite check. It matters: on CPU
    (MindSpore 2.10) the same fwd+bwd graph without control flow ran 1.5-1.9x slower for the
    DCN backbone (1.1x for one DCN layer, not at all for the plain ResNet-50), so without it
    the pieces would not add up to the step.
    """
    grad_fn = ms.value_and_grad(function, grad_position, weights)
    has_inputs, has_weights = grad_position is not None, weights is not None
    # value_and_grad gives a bare Tensor, not a 1-tuple, for a single input position.
    single_input = has_inputs and len(grad_position) == 1

    @ms.jit
    def run(*inputs):
        loss, grads = grad_fn(*inputs)
        if has_inputs and has_weights:
            grads = ((grads[0],) if single_input else grads[0]) + grads[1]
        elif single_input:
            grads = (grads,)
        firsts = ops.stack([g.reshape(-1)[0] for g in grads])
        if ops.isfinite(loss):
            firsts = firsts * 2
        return loss, firsts

    return run


# Pieces of the step timed by --profile; each group runs in its own child process (with its
# own baseline rounds): compiled together, the graphs' memory pools exceeded the machine's.
PROFILE_GROUPS = {
    "grads": ("grads",),
    "checked_grads": ("checked_grads",),
    "forward": ("network_forward", "backbone_forward", "loss_forward", "optimizer"),
    "backbone": ("backbone_fwd_bwd",),
    "heads": ("heads_loss_fwd_bwd",),
    "head_parts": ("fpn_fwd_bwd", "protonet_fwd_bwd", "prediction_head_fwd_bwd"),
    "loss": ("loss_fwd_bwd",),
}


def checked_grads_runner(model, loss_fn, scaler, params):
    """``make_train_step``'s body without the update: forward with the loss scaler's
    scaling, backward, unscale, the finite check and its ``if``; returns the loss and the
    first element of every gradient."""
    def forward(images, *targets):
        total, terms = loss_fn(*model(images), *targets)
        return scaler.scale(total), (total, terms)

    grad_fn = ms.value_and_grad(forward, None, params, has_aux=True)

    @ms.jit
    def run(images, *targets):
        (_, (total, _)), grads = grad_fn(images, *targets)
        grads = scaler.unscale(grads)
        finite = ops.logical_and(ms.amp.all_finite(grads), ops.isfinite(total))
        firsts = ops.stack([g.reshape(-1)[0] for g in grads])
        if finite:
            firsts = firsts * 2
        return total, firsts

    return run


def profile_stages(group, setup, batches):
    """Measured pieces of the YOLACT++ step of ``setup`` (a ``TrainingSetup``) for one of
    ``PROFILE_GROUPS``, each on fixed inputs: the real batches, or the network's own backbone
    features / outputs computed once per batch."""
    model, loss_fn, optimizer = setup.model, setup.loss_fn, setup.optimizer
    backbone = model.backbone
    images = [(b[0],) for b in batches]
    targets = [b[1:] for b in batches]

    @ms.jit
    def network_forward(x):
        return model(x)

    @ms.jit
    def backbone_forward(x):
        return backbone(x)

    @ms.jit
    def loss_forward(*outputs_and_targets):
        return loss_fn(*outputs_and_targets)

    def total_loss(x, *step_targets):
        return loss_fn(*model(x), *step_targets)[0]

    def backbone_total(x):
        return backbone_loss(*backbone(x))[0]

    def heads_total(c3, c4, c5, *step_targets):
        features = model.fpn(c3, c4, c5)
        proto = model.proto_net(features[0])
        loc, conf, coeff = model.prediction_head(features)
        return loss_fn(loc, conf, coeff, proto, model.semantic_head(features[0]),
                       *step_targets)[0]

    def loss_total(*outputs_and_targets):
        return loss_fn(*outputs_and_targets)[0]

    def sum_of_means(outputs):
        return ops.stack([o.mean() for o in outputs]).sum()

    def fpn_total(c3, c4, c5):
        return sum_of_means(model.fpn(c3, c4, c5))

    def protonet_total(p3):
        return model.proto_net(p3).mean()

    def prediction_head_total(*levels):
        return sum_of_means(model.prediction_head(levels))

    if group == "grads":
        return [Measured("grads", value_and_grad_runner(total_loss, model.trainable_params()),
                         batches)]
    if group == "checked_grads":
        return [Measured("checked_grads",
                         checked_grads_runner(model, loss_fn, setup.scaler,
                                              model.trainable_params()), batches)]
    if group == "forward":
        outputs = [tuple(network_forward(*x)) for x in images]
        # Gradients of a realistic size for the update alone (it does not look at the values).
        fixed_grads = tuple(ms.Tensor(np.full(p.shape, 1e-6, np.float32))
                            for p in optimizer.parameters)
        return [Measured("network_forward", network_forward, images),
                Measured("backbone_forward", backbone_forward, images),
                Measured("loss_forward", loss_forward,
                         [o + t for o, t in zip(outputs, targets)]),
                Measured("optimizer", optimizer_update(optimizer), [fixed_grads])]
    if group == "backbone":
        return [Measured("backbone_fwd_bwd",
                         value_and_grad_runner(backbone_total, backbone.trainable_params()),
                         images)]
    if group == "heads":
        backbone_ids = {id(p) for p in backbone.trainable_params()}
        head_params = [p for p in model.trainable_params() if id(p) not in backbone_ids]
        features = [tuple(backbone_forward(*x)) for x in images]
        return [Measured("heads_loss_fwd_bwd",
                         value_and_grad_runner(heads_total, head_params, (0, 1, 2)),
                         [f + t for f, t in zip(features, targets)])]
    if group == "head_parts":
        # Each part's own parameters and its inputs get gradients, as inside the step.
        @ms.jit
        def fpn_forward(c3, c4, c5):
            return model.fpn(c3, c4, c5)

        features = [tuple(backbone_forward(*x)) for x in images]
        levels = [tuple(fpn_forward(*f)) for f in features]
        num_levels = len(levels[0])
        return [Measured("fpn_fwd_bwd", value_and_grad_runner(
                    fpn_total, model.fpn.trainable_params(), (0, 1, 2)), features),
                Measured("protonet_fwd_bwd", value_and_grad_runner(
                    protonet_total, model.proto_net.trainable_params(), (0,)),
                    [(p[0],) for p in levels]),
                Measured("prediction_head_fwd_bwd", value_and_grad_runner(
                    prediction_head_total, model.prediction_head.trainable_params(),
                    tuple(range(num_levels))), levels)]
    if group == "loss":
        maskiou_params = (model.maskiou_net.trainable_params() if model.maskiou_net is not None
                          else None)
        outputs = [tuple(network_forward(*x)) for x in images]
        return [Measured("loss_fwd_bwd",
                         value_and_grad_runner(loss_total, maskiou_params, (0, 1, 2, 3, 4)),
                         [o + t for o, t in zip(outputs, targets)])]
    raise ValueError(f"unknown profile group {group!r}")


def load_batches(path):
    """The saved batches as tuples of Tensors in ``TRAIN_COLUMNS`` order."""
    with np.load(path) as saved:
        count = len(saved.files) // len(TRAIN_COLUMNS)
        return [tuple(ms.Tensor(saved[f"{i}_{column}"]) for column in TRAIN_COLUMNS)
                for i in range(count)]


def measure_config(args, name, group=None):
    """Child process: one config's train step (``group`` None) or one ``PROFILE_GROUPS``
    group of its pieces, interleaved with the baseline step; a JSON-able dict."""
    context = init_context("CPU")
    rss = {"runtime": peak_rss_mb()}
    config = training_config(args, name)
    batches = load_batches(args.batches_file)
    rss["inputs"] = peak_rss_mb()

    setup = build_training(config, context)
    model = setup.model
    apply_impl(model, args.impl)
    randomise_offset_convs(model, np.random.default_rng(SEED))
    measured = ([Measured("step", setup.step, batches, keep_outputs=True)] if group is None
                else profile_stages(group, setup, batches))
    compile_s = {m.name: m.compile_and_warm(args.warmup) for m in measured}
    rss["measured"] = peak_rss_mb()

    baseline_net, step = baseline_step(config)
    baseline = Measured("baseline", step, [(b[0],) for b in batches], keep_outputs=True)
    compile_s["baseline"] = baseline.compile_and_warm(args.warmup)
    rss["child"] = peak_rss_mb()

    for _ in range(args.rounds):
        baseline.record()
        for item in measured:
            item.record()
    result = {"config": name, "group": group, "impl": args.impl, "freeze_bn": setup.freeze_bn,
              "num_params": sum(p.size for p in model.trainable_params()),
              "baseline_params": sum(p.size for p in baseline_net.trainable_params()),
              "runs": {m.name: m.runs for m in [baseline] + measured},
              "compile": compile_s, "rss_mb": rss,
              "baseline_finite": [bool(o[2]) for o in baseline.outputs]}
    if group is None:
        outputs = measured[0].outputs
        result.update({"finite": [bool(o[2]) for o in outputs],
                       "losses": [float(o[0]) for o in outputs],
                       "terms": [o[1].tolist() for o in outputs]})
    return result


def measure_baseline_rss(args):
    """Child process: the baseline step alone, for its peak RSS."""
    init_context("CPU")
    ms.set_seed(SEED)
    config = training_config(args, args.configs[0])
    images = [(b[0],) for b in load_batches(args.batches_file)]
    start = peak_rss_mb()
    baseline = Measured("baseline", baseline_step(config)[1], images)
    baseline.compile_and_warm(args.warmup + 1)
    return {"rss_mb": {"inputs": start, "baseline": peak_rss_mb()}}


def fwd_bwd_layer(layer):
    """Jitted forward + backward of one layer (gradients to its input and its weights)."""
    def total(x):
        return layer(x).mean()
    return value_and_grad_runner(total, layer.trainable_params(), (0,))


def measure_dcn_layers(args):
    """Child process: per DCN shape of the backbones, forward + backward of a plain 3x3 conv,
    the offset/mask conv, and each DCN implementation, interleaved per round."""
    init_context("CPU")
    return time_dcn_layers(args, fwd_bwd_layer)


def prepare_batches(args, root):
    """Synthetic images -> MindRecord -> ``create_train_dataset`` batches saved as .npz."""
    paths = generate_dataset(os.path.join(root, "images"), num_train=args.num_images, num_val=0,
                             image_size=args.image_size, seed=SEED)
    dataset = load_coco(paths["train_annotations"], paths["train_images"])
    mindrecord_dir = os.path.join(root, "mindrecord")
    write_mindrecord(dataset.images, mindrecord_dir, "train", 1, categories=dataset.categories,
                     log=lambda line: None)
    config = variant(args.configs[0], args.size, **{"data.num_parallel_workers": 1})
    pipeline = create_train_dataset(config, mindrecord_dir, args.batch, prior_boxes(config),
                                    seed=SEED, num_iterations=args.num_batches)
    arrays, positives, objects = {}, [], []
    for index, batch in enumerate(pipeline.create_tuple_iterator(num_epochs=1,
                                                                 output_numpy=True)):
        for column, value in zip(TRAIN_COLUMNS, batch):
            arrays[f"{index}_{column}"] = value
        columns = dict(zip(TRAIN_COLUMNS, batch))
        positives += (columns["conf_t"] > 0).sum(axis=1).tolist()
        objects += (columns["gt_boxes"][:, :, 2] > columns["gt_boxes"][:, :, 0]).sum(1).tolist()
    path = os.path.join(root, "batches.npz")
    np.savez(path, **arrays)
    return path, {"positives": positives, "objects": objects}


STAGE_LABELS = {
    "step": "train step (make_train_step)",
    "grads": "  forward + backward, no update",
    "checked_grads": "  forward + backward + loss scaling + finite check, no update",
    "network_forward": "  network forward (train mode)",
    "backbone_forward": "  backbone forward",
    "loss_forward": "  loss forward on fixed outputs",
    "optimizer": "  optimizer update alone (the config's train.optimizer)",
    "backbone_fwd_bwd": "  backbone fwd+bwd (mean-of-outputs loss)",
    "heads_loss_fwd_bwd": "  FPN + heads + loss fwd+bwd on fixed C3-C5",
    "fpn_fwd_bwd": "    FPN fwd+bwd (mean-of-outputs loss)",
    "protonet_fwd_bwd": "    protonet fwd+bwd (mean-of-output loss)",
    "prediction_head_fwd_bwd": "    prediction head fwd+bwd, 5 levels (mean-of-outputs loss)",
    "loss_fwd_bwd": "  loss fwd+bwd on fixed outputs",
}


def format_rows(result, reference_baseline_s):
    """Table rows of one child: its measured stages, as ratios to its own baseline and as
    seconds at ``reference_baseline_s`` (the step child's baseline median)."""
    runs = result["runs"]
    base = runs["baseline"]
    base_wall, base_cpu = median_wall(base), median_cpu(base)
    bn = "frozen" if result["freeze_bn"] else "trained"
    lines = []
    for stage, label in STAGE_LABELS.items():
        if stage not in runs:
            continue
        median, cpu = median_wall(runs[stage]), median_cpu(runs[stage])
        paired = paired_ratio(runs[stage], base)
        first = stage == next(name for name in STAGE_LABELS if name in runs)
        rss = f"{result['rss_mb']['measured']:.0f}" if first else ""
        lines.append(f"| {result['config']} | {result['impl']} | {bn} | {label} | "
                     f"{median:.2f} | {min(w for w, _ in runs[stage]):.2f} | "
                     f"{median / base_wall:.2f} | {paired:.2f} | {cpu / base_cpu:.2f} | "
                     f"{median / base_wall * reference_baseline_s:.2f} | "
                     f"{result['compile'][stage]:.1f} | {rss} |")
    return lines


def print_report(args, results, baseline_rss, dcn, inputs):
    print(machine_description())
    print(f"batch {args.batch} at {args.size}, {args.rounds} interleaved rounds after "
          f"{args.warmup} warm-up call(s)")
    if results:
        print_step_table(args, results, baseline_rss, inputs)
    if dcn:
        print_dcn_layers(dcn["dcn_layers"], f"Forward + backward of one 3x3 layer per DCN shape, "
                         f"batch {args.batch} (ms, median)", measured="DCN fwd+bwd")


def print_step_table(args, results, baseline_rss, inputs):
    print(f"{len(inputs['objects']) // args.batch} distinct batches from create_train_dataset "
          f"({args.num_images} src.data.synthetic images, image_size {args.image_size}); "
          f"GT objects per image {min(inputs['objects'])}-{max(inputs['objects'])}, positive "
          f"priors per image {min(inputs['positives'])}-{max(inputs['positives'])}")
    print("\n| config | impl | BN | what | median s | min s | x ResNet-50 step | paired | "
          "x ResNet-50 (CPU s) | s at the step run's baseline | compile s (first call) | "
          "peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for step, profile in results:
        reference = median_wall(step["runs"]["baseline"])
        for result in [step] + profile:
            print("\n".join(format_rows(result, reference)))
        bn = "frozen" if step["freeze_bn"] else "trained"
        base = step["runs"]["baseline"]
        print(f"| {step['config']} | | {bn} | ResNet-50 train step (baseline) | {reference:.2f} | "
              f"{min(w for w, _ in base):.2f} | 1.00 | 1.00 | 1.00 | {reference:.2f} | "
              f"{step['compile']['baseline']:.1f} | |")
    print("\nmedian, min: wall seconds per call. x ResNet-50 step: median / the median of the "
          "baseline step run in the same process; paired: median over rounds of the call / "
          "that round's baseline step; CPU s: the same ratio of process CPU seconds (all "
          "threads). Each profile group (rows under the step) ran in its own process with its "
          "own baseline; 's at the step run's baseline' is its ratio x the step process's "
          "baseline median. peak RSS: the process after the row's graphs (and any helper "
          "forward graphs) ran, before the baseline was built.")
    for step, _ in results:
        runs = step["runs"]
        ratio = median_wall(runs["step"]) / median_wall(runs["baseline"])
        verdict = "meets" if ratio <= TARGET_RATIO else "misses"
        rss = step["rss_mb"]
        finite = step["finite"]
        print(f"{step['config']}: step / ResNet-50 step = {ratio:.2f} ({verdict} the target "
              f"<= {TARGET_RATIO}; authors' PyTorch: {AUTHORS_STEP_S:.0f} s / "
              f"{AUTHORS_BASELINE_S} s = {AUTHORS_STEP_S / AUTHORS_BASELINE_S:.1f}). "
              f"Trainable parameters {step['num_params']:,} (baseline "
              f"{step['baseline_params']:,}). Finite steps {sum(finite)}/{len(finite)} "
              f"(baseline {sum(step['baseline_finite'])}/{len(step['baseline_finite'])}); "
              f"loss median {statistics.median(step['losses']):.2f}, terms B C M S I "
              f"{' '.join(f'{v:.2f}' for v in np.median(step['terms'], axis=0))}.")
        print(f"  peak RSS MB: runtime {rss['runtime']:.0f}, + batches and lr array "
              f"{rss['inputs']:.0f}, + YOLACT++ step {rss['measured']:.0f}, + ResNet-50 step "
              f"{rss['child']:.0f}")
    if baseline_rss:
        rss = baseline_rss["rss_mb"]
        print(f"ResNet-50 baseline step alone (own process): peak RSS {rss['baseline']:.0f} MB "
              f"(runtime + batches + lr array {rss['inputs']:.0f} MB)")


def parse_args(argv=None):
    parser = make_parser(__doc__)
    add_model_arguments(
        parser, configs=DEFAULT_CONFIGS, configs_help="variants to measure", rounds=5, batch=2,
        batch_help="images per step",
        warmup_help="untimed calls per step before the rounds, the compiling one included",
        dcn_layers_help="also time fwd+bwd of one layer per DCN shape: plain vs DCN")
    parser.add_argument("--num_images", type=int, default=8, help="synthetic training images")
    parser.add_argument("--image_size", type=int, default=500,
                        help="nominal synthetic image side (0.75-1.25x)")
    parser.add_argument("--num_batches", type=int, default=4,
                        help="distinct batches, reused round-robin")
    parser.add_argument("--profile", nargs="*", choices=sorted(PROFILE_GROUPS),
                        help="also time pieces of the step, one process per group (no names: "
                             "all groups)")
    parser.add_argument("--no_baseline_rss", action="store_true",
                        help="skip the child that runs the baseline alone for its peak RSS")
    parser.add_argument("--batches_file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    require_positive(parser, args, "rounds", "warmup", "num_batches")
    if not args.child and not args.configs and not args.dcn_layers:
        parser.error("nothing to measure: give --configs or --dcn_layers")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        if args.child == "dcn_layers":
            result = measure_dcn_layers(args)
        elif args.child == "baseline":
            result = measure_baseline_rss(args)
        else:
            group, _, name = args.child.rpartition(":")
            result = measure_config(args, name, group or None)
        print_child_result(result)
        return
    results, baseline_rss, dcn, inputs = [], None, None, None
    with tempfile.TemporaryDirectory(prefix="bench_train_step_") as root:
        if args.configs:
            args.batches_file, inputs = prepare_batches(args, root)
        for name in args.configs:
            step = run_child(__file__, name, args, CHILD_OPTIONS)
            groups = [] if args.profile is None else args.profile or list(PROFILE_GROUPS)
            profile = [run_child(__file__, f"{group}:{name}", args, CHILD_OPTIONS)
                       for group in groups]
            results.append((step, profile))
        if args.configs and not args.no_baseline_rss:
            baseline_rss = run_child(__file__, "baseline", args, CHILD_OPTIONS)
        if args.dcn_layers:
            dcn = run_child(__file__, "dcn_layers", args, CHILD_OPTIONS)
    print_report(args, results, baseline_rss, dcn, inputs)


if __name__ == "__main__":
    main()
