"""Per conv shape of YOLACT++ at 550: GMAC/s of our BLAS conv (``src/kernels/conv_gemm.py``)
beside PyTorch's ``F.conv2d`` and MindSpore's ``nn.Conv2d`` (today's path), in one process.

Run from the repository root::

    python bench/conv_gemm.py                      # R-50++ at 550, forward b1, backward b2
    python bench/conv_gemm.py --rounds 9 --top 12  # the 12 shapes with the most MACs

The shapes are those of the built model (every ``nn.Conv2d``, the DCN offset convs
included, recorded by forward hooks in one PyNative forward; all are timed as
``GemmConv2d``, also those the CPU path runs on Winograd (the head's 3x3 stride-1 convs) or
leaves on MindSpore (the mask re-scoring net's, here on ``--masks`` masks: the table shows
why)), plus the DCN's matmul (weight [O, 9C] x columns
[9C, Ho*Wo], what our BLAS matmul op runs). Forward is timed at ``--batch`` images,
backward (data + weight gradients) at ``--train_batch``: backward = median(forward +
backward) - median(forward), both at that batch, of a jitted ``value_and_grad`` in MindSpore
and ``torch.autograd.grad`` in PyTorch; a MindSpore call is timed until its results are
numpy arrays (its graphs run asynchronously on the CPU too). PyTorch runs with
``torch.set_num_threads`` = the usable cores. Rounds interleave the three implementations
shape by shape, so the ratios hold on a shared host whose speed drifts.
"""
import os
import statistics
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

# MindSpore's log at errors only: every shape compiles new jitted functions on purpose, and
# MindSpore warns about each.
os.environ.setdefault("GLOG_v", "3")
# Before MindSpore: sets the CPU environment defaults and turns the compile cache off.
from bench.common import (add_timing_arguments, machine_description, make_parser,  # noqa: E402
                          require_positive, variant, SEED)

import numpy as np  # noqa: E402
import mindspore as ms  # noqa: E402
from mindspore import nn, ops  # noqa: E402

from src.kernels.conv_gemm import GemmConv2d, matmul_op  # noqa: E402
from src.model.build import build_model  # noqa: E402
from src.model.dcn import ModulatedDeformConv2d  # noqa: E402

IMPLS = ("ours", "torch", "mindspore")


def model_conv_shapes(config_name, size, masks):
    """Distinct conv shapes of the variant at ``size`` with their counts per forward.

    Returns:
        list of dicts ``{kind, part, c, o, k, s, p, h, w, count}``, kind "conv" or "dcn
        matmul" (k, s: the DCN's 3x3 and stride; its GEMM is [o, 9c] x [9c, ho*wo]), sorted
        by MACs per image times count, largest first.
    """
    ms.set_context(mode=ms.PYNATIVE_MODE)
    model = build_model(variant(config_name, size, "fast"), "CPU")
    model.set_train(False)
    seen = {}

    def record(part, kind, cell, shape):
        if kind == "conv":
            stride, padding = cell.stride[0], cell.padding if cell.pad_mode == "pad" else 0
            key = ("conv", cell.in_channels, cell.out_channels, cell.kernel_size[0], stride,
                   padding if isinstance(padding, int) else padding[0], shape[2], shape[3])
        else:
            key = ("dcn matmul", shape[1], cell.out_channels, 3, cell.stride, 1, shape[2],
                   shape[3])
        entry = seen.setdefault(key, {"part": part, "count": 0})
        entry["count"] += 1

    handles = []
    for name, cell in model.cells_and_names():
        part = name.split(".")[0]
        if isinstance(cell, nn.Conv2d):
            handles.append(cell.register_forward_pre_hook(
                lambda c, inputs, p=part: record(p, "conv", c, inputs[0].shape)))
        elif isinstance(cell, ModulatedDeformConv2d):
            handles.append(cell.register_forward_pre_hook(
                lambda c, inputs, p=part: record(p, "dcn", c, inputs[0].shape)))
    model(ms.Tensor(np.zeros((1, 3, size, size), np.float32)))
    if model.maskiou_net is not None:
        model.maskiou_net(ms.Tensor(np.zeros((1, 1, size // 4, size // 4), np.float32)))
        for key, entry in seen.items():
            if entry["part"] == "maskiou_net":
                entry["count"] = 1
                entry["batch_scale"] = masks
    for handle in handles:
        handle.remove()
    shapes = []
    for (kind, c, o, k, s, p, h, w), entry in seen.items():
        shapes.append({"kind": kind, "part": entry["part"], "c": c, "o": o, "k": k, "s": s,
                       "p": p, "h": h, "w": w, "count": entry["count"],
                       "batch_scale": entry.get("batch_scale", 1)})
    shapes.sort(key=lambda d: -macs(d) * d["count"] * d["batch_scale"])
    return shapes


def out_side(side, shape):
    return (side + 2 * shape["p"] - shape["k"]) // shape["s"] + 1


def macs(shape, batch=1):
    """Multiply-adds of one forward of ``shape`` on ``batch`` images."""
    return (batch * shape["o"] * shape["c"] * shape["k"] ** 2 * out_side(shape["h"], shape)
            * out_side(shape["w"], shape))


class DcnMatmul(nn.Cell):
    """The DCN's weight x columns product on our BLAS matmul (forward and gradients), or on
    MindSpore's MatMul; ``x`` stands for the columns [9C, N*Ho*Wo]."""

    def __init__(self, weight, blas):
        super().__init__()
        self.weight = weight
        self.matmul = matmul_op() if blas else ops.MatMul()

    def construct(self, columns):
        return self.matmul(self.weight, columns)


def mindspore_layers(shape, rng):
    """(ours, today's) cells for ``shape`` and the shape of their input at batch 1."""
    if shape["kind"] == "dcn matmul":
        weight = ms.Parameter(ms.Tensor(rng.standard_normal((shape["o"], 9 * shape["c"])),
                                        ms.float32), name="weight")
        columns = 9 * shape["c"], out_side(shape["h"], shape) * out_side(shape["w"], shape)
        return DcnMatmul(weight, True), DcnMatmul(weight, False), columns
    conv = nn.Conv2d(shape["c"], shape["o"], shape["k"], stride=shape["s"],
                     pad_mode="pad" if shape["p"] else "valid", padding=shape["p"],
                     has_bias=False)
    return GemmConv2d.from_conv(conv), conv, (shape["c"], shape["h"], shape["w"])


def ms_runners(cell, x):
    """(forward, forward + backward) of a MindSpore cell on x; the backward gives the
    gradients of x and of the weight."""
    cotangent = ms.Tensor(np.ones(cell(x).shape, np.float32))

    def loss(inputs):
        return (cell(inputs) * cotangent).sum()

    grad_fn = ms.value_and_grad(loss, 0, cell.trainable_params())

    @ms.jit
    def forward(inputs):
        return cell(inputs)

    @ms.jit
    def forward_backward(inputs):
        return grad_fn(inputs)

    def synced_forward_backward():
        grad_x, grad_weights = forward_backward(x)[1]
        return [grad_x.asnumpy()] + [g.asnumpy() for g in grad_weights]

    return lambda: forward(x).asnumpy(), synced_forward_backward


def torch_runners(shape, x_np, weight_np):
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(x_np).requires_grad_(True)
    weight = torch.from_numpy(weight_np).requires_grad_(True)
    if shape["kind"] == "dcn matmul":
        def run():
            return weight @ x
    else:
        def run():
            return F.conv2d(x, weight, stride=shape["s"], padding=shape["p"])

    def forward():
        with torch.no_grad():
            return run().numpy()

    def forward_backward():
        out = run()
        return torch.autograd.grad(out, (x, weight), torch.ones_like(out))

    return forward, forward_backward


def timed(function):
    """(wall s, process CPU s of all threads) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    return time.perf_counter() - wall, time.process_time() - cpu


def measure_shape(shape, args, rng):
    """{impl: {phase: [(wall s, CPU s)]}} for one shape; phases "forward" (at ``--batch``),
    "train_forward" and "forward_backward" (at ``--train_batch``)."""
    ours, today, item_shape = mindspore_layers(shape, rng)
    weight_np = ours.weight.asnumpy()
    runners = {}
    for phase, batch in (("forward", args.batch), ("train_forward", args.train_batch),
                         ("forward_backward", args.train_batch)):
        batch *= shape["batch_scale"]
        if shape["kind"] == "dcn matmul":
            x_np = rng.standard_normal((item_shape[0], batch * item_shape[1])).astype(np.float32)
        else:
            x_np = rng.standard_normal((batch, *item_shape)).astype(np.float32)
        x = ms.Tensor(x_np)
        index = 1 if phase == "forward_backward" else 0
        runners[phase] = {"ours": ms_runners(ours, x)[index],
                          "mindspore": ms_runners(today, x)[index],
                          "torch": torch_runners(shape, x_np, weight_np)[index]}
    times = {impl: {phase: [] for phase in runners} for impl in IMPLS}
    for phase, by_impl in runners.items():
        for run in by_impl.values():
            for _ in range(args.warmup):
                run()
        for _ in range(args.rounds):
            for impl, run in by_impl.items():
                times[impl][phase].append(timed(run))
    return times


def gmacs(shape, times, args):
    """{impl: {"wall": (forward, backward GMAC/s), "cpu": (the same per CPU second),
    "seconds": (forward, backward wall s)}} from median times; the backward does 2x the
    forward's MACs and its time is median(forward + backward) - median(forward) at the
    training batch. A backward not measurably longer than its forward (tiny shapes, where
    the call overhead dominates) has no rate: NaN."""
    scale = shape["batch_scale"]
    fwd_macs = macs(shape, args.batch * scale)
    bwd_macs = 2 * macs(shape, args.train_batch * scale)
    rates = {}
    for impl, phases in times.items():
        rates[impl] = {}
        for clock, index in (("wall", 0), ("cpu", 1)):
            fwd = statistics.median(t[index] for t in phases["forward"])
            fwd_train = statistics.median(t[index] for t in phases["train_forward"])
            both = statistics.median(t[index] for t in phases["forward_backward"])
            bwd = both - fwd_train
            rates[impl][clock] = (fwd_macs / fwd / 1e9,
                                  bwd_macs / bwd / 1e9 if bwd > 0 else float("nan"))
            if clock == "wall":
                rates[impl]["seconds"] = (fwd, max(bwd, 0.0))
    return rates


def _number(value, form):
    return form.format(value) if value == value else "-"   # NaN: no rate measured


def print_table(shapes, results, args):
    print("\n| part | kind | C | O | k | s | p | H x W | count | GMAC fwd | ours fwd | "
          "torch fwd | MS fwd | ours / torch fwd (wall, CPU) | ours bwd | torch bwd | MS bwd | "
          "ours / torch bwd (wall, CPU) |")
    print("|---" * 18 + "|")
    totals = {impl: [0.0, 0.0] for impl in IMPLS}
    for shape, rates in zip(shapes, results):
        count = shape["count"]
        for impl in IMPLS:
            totals[impl][0] += count * rates[impl]["seconds"][0]
            totals[impl][1] += count * rates[impl]["seconds"][1]
        cells = []
        for phase in (0, 1):
            cells += [_number(rates[i]["wall"][phase], "{:.0f}") for i in IMPLS]
            cells.append(" / ".join(
                _number(rates["ours"][c][phase] / rates["torch"][c][phase], "{:.2f}")
                for c in ("wall", "cpu")))
        masks = f" x {shape['batch_scale']} masks" if shape["batch_scale"] > 1 else ""
        print(f"| {shape['part']} | {shape['kind']} | {shape['c']} | {shape['o']} | "
              f"{shape['k']} | {shape['s']} | {shape['p']} | {shape['h']}x{shape['w']}{masks} | "
              f"{count} | {count * macs(shape, args.batch * shape['batch_scale']) / 1e9:.2f} | "
              + " | ".join(cells) + " |")
    print(f"\nGMAC/s (wall) per implementation: forward at batch {args.batch}, backward (data + "
          f"weight gradients, 2x the forward's MACs) at batch {args.train_batch}; medians over "
          "the rounds; -: the backward was not measurably longer than the forward. ours / "
          "torch: the ratio of GMAC/s by wall time and by process CPU time (all threads; it "
          "moves least when other processes take the cores).")
    print("Summed over every conv of the model (shape x count), wall seconds:")
    for impl in IMPLS:
        print(f"  {impl}: forward {totals[impl][0]:.3f} s, backward {totals[impl][1]:.3f} s")
    print(f"ours at {totals['torch'][0] / totals['ours'][0]:.2f}x torch's rate forward, "
          f"{totals['torch'][1] / totals['ours'][1]:.2f}x backward; ours / MindSpore's conv: "
          f"{totals['mindspore'][0] / totals['ours'][0]:.2f}x its rate forward, "
          f"{totals['mindspore'][1] / totals['ours'][1]:.2f}x backward")


def parse_args(argv=None):
    parser = make_parser(__doc__)
    parser.add_argument("--config", default="yolact_plus_resnet50", help="variant")
    add_timing_arguments(parser, rounds=5, batch=1, batch_help="images per forward",
                         warmup_help="untimed calls per implementation and shape")
    parser.add_argument("--train_batch", type=int, default=2,
                        help="images per forward + backward")
    parser.add_argument("--masks", type=int, default=100,
                        help="masks per image through the mask re-scoring net")
    parser.add_argument("--top", type=int, default=0,
                        help="only the N shapes with the most MACs (0: all)")
    args = parser.parse_args(argv)
    require_positive(parser, args, "rounds", "warmup", "batch", "train_batch", "masks")
    return args


def main(argv=None):
    args = parse_args(argv)
    import torch

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    shapes = model_conv_shapes(args.config, args.size, args.masks)
    if args.top:
        shapes = shapes[:args.top]
    ms.set_context(mode=ms.GRAPH_MODE)
    rng = np.random.default_rng(SEED)
    results = []
    for shape in shapes:
        results.append(gmacs(shape, measure_shape(shape, args, rng), args))
        rates = results[-1]
        print(f"{shape['part']} {shape['kind']} {shape['c']}->{shape['o']} k{shape['k']} "
              f"s{shape['s']} {shape['h']}x{shape['w']}: GMAC/s (CPU time) fwd ours/torch/MS "
              + "/".join(_number(rates[i]["cpu"][0], "{:.0f}") for i in IMPLS) + " bwd "
              + "/".join(_number(rates[i]["cpu"][1], "{:.0f}") for i in IMPLS), flush=True)
    print(machine_description())
    print(f"{args.config} at {args.size}; torch {torch.__version__} with "
          f"{torch.get_num_threads()} threads; {args.rounds} interleaved rounds after "
          f"{args.warmup} warm-up calls")
    print_table(shapes, results, args)


if __name__ == "__main__":
    main()
