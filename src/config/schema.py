"""The configuration schema: frozen dataclasses, one per concern, built once per run.

This is the one list of settings. Every field is declared with ``setting(default, help, ...)``:
its help string is what ``--help`` and the README's option tables print, and its allowed
values (``choices``, ``minimum``, ``maximum``, ``below``) are checked when a config is loaded
(``src.config.load``), before anything is built. Values that follow from others (number of
classes, prior count, prototype size) are derived, never stored twice.
"""
import dataclasses
from dataclasses import dataclass, field
from typing import Tuple

from src.data.classes import COCO_CLASSES

AUGMENTATIONS = ("ssd", "light", "none")
KERNELS = ("auto", "cpu", "portable")
DCN_IMPLS = ("fast", "native")
LR_DECAYS = ("step", "cosine")
OPTIMIZERS = ("momentum", "adamw")
FREEZE_BN = ("auto", "yes", "no")
LOSS_SCALES = ("dynamic", "static", "none")
AMP_LEVELS = ("O0", "O1", "O2", "O3")


def setting(default, help, choices=None, minimum=None, maximum=None, above=None, below=None):
    """A config field: its default, its help line and the values it accepts.

    Args:
        default: the value; tuples for lists (configs are frozen).
        help: one line: meaning and unit.
        choices: the allowed values of a string field.
        minimum, maximum: inclusive bounds of a number (of each element of a list).
        above, below: exclusive bounds of a number.
    """
    limits = {"choices": choices, "minimum": minimum, "maximum": maximum, "above": above,
              "below": below}
    return field(default=default, metadata={"help": help, **limits})


def section(cls, help):
    """A nested section of the config."""
    return field(default_factory=cls, metadata={"help": help})


@dataclass(frozen=True)
class BackboneConfig:
    """ResNet v1.5 (torchvision layout) with optional DCNv2 in the 3x3 convs."""
    layers: Tuple[int, ...] = setting(
        (3, 4, 23, 3), "bottleneck blocks per stage (3,4,6,3: R-50; 3,4,23,3: R-101)", minimum=1)
    base_width: int = setting(64, "stem channels = first-stage planes", minimum=1)
    dcn_layers: Tuple[int, ...] = setting(
        (0, 0, 0, 0), "per stage: how many of its last blocks may use DCNv2", minimum=0)
    dcn_interval: int = setting(1, "of those, every dcn_interval-th block (the authors' rule)",
                                minimum=1)
    dcn_impl: str = setting("fast", "DCN from MindSpore primitives: fast (gather + matmul) or "
                                    "native (ops.deformable_conv2d); model.kernels may replace it "
                                    "by the C++ kernel on CPU", choices=DCN_IMPLS)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of YOLACT / YOLACT++ besides the backbone."""
    backbone: BackboneConfig = section(BackboneConfig, "the ResNet backbone")
    fpn_channels: int = setting(256, "F, channels of P3-P7 and of the prediction head", minimum=1)
    proto_channels: int = setting(256, "hidden channels of the protonet", minimum=1)
    num_prototypes: int = setting(32, "K, prototype masks and coefficients per instance",
                                  minimum=1)
    pred_scales: Tuple[Tuple[float, ...], ...] = setting(
        ((24,), (48,), (96,), (192,), (384,)),
        "prior sizes in input pixels, one list per pyramid level P3..P7", above=0.0)
    pred_aspect_ratios: Tuple[float, ...] = setting(
        (1.0, 0.5, 2.0), "prior aspect ratios (width / height)", above=0.0)
    use_square_anchors: bool = setting(True, "YOLACT v1's legacy rule: h = w for every ratio")
    use_maskiou: bool = setting(False, "YOLACT++ mask re-scoring net")
    maskiou_channels: Tuple[int, ...] = setting(
        (8, 16, 32, 64, 128), "channels of the mask re-scoring net's stride-2 convs", minimum=1)
    kernels: str = setting(
        "auto", "cpu: C++ CPU kernels (DCN sampling, Winograd 3x3 convs outside the backbone; "
                "need g++ and the CPU device); portable: MindSpore primitives only, any device; "
                "auto: cpu on the CPU device when they build, else portable. Same parameters "
                "and results either way", choices=KERNELS)

    @property
    def num_anchors(self):
        """A, anchors per location."""
        return len(self.pred_scales[0]) * len(self.pred_aspect_ratios)


@dataclass(frozen=True)
class DataConfig:
    """Dataset and input pipeline."""
    class_names: Tuple[str, ...] = setting(
        COCO_CLASSES, "foreground class names; label i is class_names[i] (COCO's 80 by default)")
    max_size: int = setting(550, "images are resized to max_size x max_size pixels", minimum=32)
    max_num_gt: int = setting(100, "G, padded ground-truth slots per image", minimum=1)
    augmentation: str = setting(
        "ssd", "training augmentation: ssd (the authors': photometric, expand, crop, mirror), "
               "light (photometric + mirror) or none", choices=AUGMENTATIONS)
    num_parallel_workers: int = setting(4, "data pipeline worker processes; a training run "
                                           "uses at most the CPUs it may run on, shared by "
                                           "the ranks of its host", minimum=1)


@dataclass(frozen=True)
class LossConfig:
    """Matching thresholds and the weights/normalisations of the five losses."""
    positive_iou: float = setting(0.5, "prior IoU >= this: positive", minimum=0.0, maximum=1.0)
    negative_iou: float = setting(0.4, "prior IoU below this: background; between: neutral",
                                  minimum=0.0, maximum=1.0)
    crowd_iou: float = setting(0.7, "intersection / prior area with a crowd box above this: "
                                    "neutral", minimum=0.0, maximum=1.0)
    bbox_weight: float = setting(1.5, "weight of the smooth-L1 box loss", minimum=0.0)
    conf_weight: float = setting(1.0, "weight of the OHEM class loss", minimum=0.0)
    mask_weight: float = setting(6.125, "weight of the mask BCE loss", minimum=0.0)
    semantic_weight: float = setting(1.0, "weight of the semantic segmentation loss", minimum=0.0)
    maskiou_weight: float = setting(25.0, "weight of the mask-IoU loss", minimum=0.0)
    negpos_ratio: int = setting(3, "OHEM: hardest negatives kept per positive", minimum=1)
    masks_to_train: int = setting(100, "M, positives per image used by the mask loss", minimum=1)
    discard_mask_area: int = setting(
        25, "the mask-IoU loss ignores GT masks of at most this many prototype-grid pixels",
        minimum=0)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and its schedule. lr, max_iter and lr_steps are stated for a total batch
    of ``schedule_batch_size`` images; ``src.train.lr_schedule.scale_for_batch_size`` adapts
    them to ``batch_size``."""
    batch_size: int = setting(8, "total images per iteration over all devices", minimum=1)
    schedule_batch_size: int = setting(
        8, "total batch that lr, max_iter and lr_steps are stated for; another batch_size "
           "scales lr by batch_size / schedule_batch_size and divides max_iter and lr_steps "
           "by it (the authors' autoscale)", minimum=1)
    lr: float = setting(1e-3, "learning rate after the warmup", minimum=0.0)
    warmup_init_lr: float = setting(1e-4, "learning rate at iteration 0", minimum=0.0)
    warmup_iters: int = setting(500, "iterations of linear warmup (not scaled)", minimum=0)
    lr_decay: str = setting("step", "after the warmup: step (x lr_gamma at each of lr_steps, the "
                                    "authors') or cosine (to 0 at max_iter)", choices=LR_DECAYS)
    lr_steps: Tuple[int, ...] = setting((280000, 600000, 700000, 750000),
                                        "iterations of the step decays", minimum=0)
    lr_gamma: float = setting(0.1, "factor of each step decay", minimum=0.0)
    max_iter: int = setting(800000, "length of the schedule in iterations", minimum=1)
    optimizer: str = setting("momentum", "momentum (the authors' SGD) or adamw",
                             choices=OPTIMIZERS)
    momentum: float = setting(0.9, "SGD momentum", minimum=0.0, below=1.0)
    weight_decay: float = setting(5e-4, "weight decay on every parameter", minimum=0.0)
    grad_clip_norm: float = setting(0.0, "> 0: clip the gradients' global L2 norm to this",
                                    minimum=0.0)
    ema_decay: float = setting(0.0, "> 0: checkpoints hold this moving average of the weights",
                               minimum=0.0, below=1.0)
    freeze_bn: str = setting("auto", "BatchNorm frozen: auto (when the per-device batch < 6, the "
                                     "authors' rule), yes or no", choices=FREEZE_BN)


@dataclass(frozen=True)
class EvalConfig:
    """Inference: detection post-processing and batching."""
    score_threshold: float = setting(
        0.05, "keep a prior whose best foreground score exceeds this", minimum=0.0, maximum=1.0)
    nms_threshold: float = setting(0.5, "Fast NMS IoU threshold, per class",
                                   minimum=0.0, maximum=1.0)
    top_k: int = setting(200, "candidates per class before NMS", minimum=1)
    cross_class_nms: bool = setting(False, "one NMS over all classes (authors' "
                                           "--cross_class_nms)")
    max_detections: int = setting(100, "D, detections kept per image", minimum=1)
    mask_threshold: float = setting(0.5, "binarisation of the upsampled soft masks",
                                    minimum=0.0, maximum=1.0)
    batch_size: int = setting(1, "images per network call of eval.py, and the input batch of "
                                 "an exported graph (a MINDIR keeps its own)", minimum=1)
    host_threads: int = setting(
        -1, "threads of eval.py's COCO evaluation that decode, preprocess and encode results "
            "beside the network (0: between network calls; -1: 0 on a CPU device, whose "
            "network takes every core, else up to 4)", minimum=-1)


@dataclass(frozen=True)
class DrawConfig:
    """What ``eval.py --image/--images/--video`` draws (the evaluation is not affected)."""
    score_threshold: float = setting(0.3, "hide detections whose box score is below this",
                                     minimum=0.0, maximum=1.0)
    top_k: int = setting(15, "draw at most this many detections per image", minimum=1)


@dataclass(frozen=True)
class RunConfig:
    """A training run: where its data and outputs are, how it saves, logs and resumes."""
    mindrecord_dir: str = setting("", "create_mindrecord.py's --output_dir (with a train "
                                      "split); required to train")
    output_dir: str = setting("", "checkpoints and train.log; empty: output/<config name>")
    resume: str = setting("", "training checkpoint to continue from, or auto: the newest in "
                              "output_dir")
    overwrite: bool = setting(False, "start a new run in an output_dir that holds checkpoints "
                                     "of this config; they are moved to "
                                     "output_dir/previous-<time> first, nothing is deleted")
    backbone_ckpt: str = setting("", "ImageNet backbone from tools/convert_weights.py --backbone")
    pretrained: str = setting("", "fine-tune from a YOLACT checkpoint (train.py's or "
                                  "converted): loads each parameter whose name and shape match, "
                                  "over backbone_ckpt; a resumed checkpoint replaces both")
    stop_iter: int = setting(0, "stop at this iteration (0: the schedule's end); the schedule "
                                "is unchanged, --resume continues it", minimum=0)
    save_every: int = setting(10000, "iterations between checkpoints", minimum=1)
    keep_last: int = setting(3, "checkpoints kept (0: all)", minimum=0)
    log_every: int = setting(10, "iterations between log lines", minimum=1)
    seed: int = setting(0, "seed of the weights' init and of the data order", minimum=0)
    loss_scale: str = setting("dynamic", "loss scaling (static: 1024)", choices=LOSS_SCALES)
    amp_level: str = setting("O0", "mixed precision on Ascend/GPU (losses stay float32)",
                             choices=AMP_LEVELS)
    max_nonfinite_steps: int = setting(20, "consecutive non-finite steps before training stops",
                                       minimum=1)
    save_all_ranks: bool = setting(False, "every rank saves (rank r > 0 in output_dir/rank_r), "
                                          "to check that data-parallel replicas agree")
    eval_every: int = setting(0, "iterations between evaluations of box and mask AP on the "
                                 "val split of mindrecord_dir; the best mask AP is kept as "
                                 "<name>_best.ckpt (0: off)", minimum=0)
    eval_images: int = setting(0, "evaluate on the val split's first N annotated images "
                                  "(0: all)", minimum=0)


@dataclass(frozen=True)
class YolactConfig:
    """A complete model variant and how it is trained, evaluated and drawn."""
    name: str = field(metadata={"help": "name of the variant; checkpoints are "
                                        "<name>_<iteration>.ckpt"})
    model: ModelConfig = section(ModelConfig, "architecture")
    data: DataConfig = section(DataConfig, "data set and input pipeline")
    loss: LossConfig = section(LossConfig, "losses")
    train: TrainConfig = section(TrainConfig, "optimisation and schedule")
    eval: EvalConfig = section(EvalConfig, "inference post-processing")
    draw: DrawConfig = section(DrawConfig, "drawing detections on pictures")
    run: RunConfig = section(RunConfig, "a training run's files, saving and logging")

    @property
    def num_fg_classes(self):
        """Foreground classes."""
        return len(self.data.class_names)

    @property
    def num_classes(self):
        """C, foreground classes plus background."""
        return self.num_fg_classes + 1

    @property
    def max_size(self):
        return self.data.max_size


def replace(config, **changes):
    """``dataclasses.replace`` that also accepts dotted section paths, e.g.
    ``replace(cfg, name="x", **{"model.backbone.layers": (3, 4, 6, 3)})``."""
    nested = {}
    direct = {}
    for key, value in changes.items():
        head, _, rest = key.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            direct[key] = value
    for head, sub_changes in nested.items():
        if not hasattr(config, head):
            raise KeyError(head)
        direct[head] = replace(getattr(config, head), **sub_changes)
    return dataclasses.replace(config, **direct)
