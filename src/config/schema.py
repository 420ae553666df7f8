"""The configuration schema: frozen dataclasses, one per concern, built once per run.

Each field says what it means and its unit. Values that follow from others (number of
classes, prior count, prototype size) are derived, never stored twice.
"""
import dataclasses
from dataclasses import dataclass, field
from typing import Tuple

COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush")


@dataclass(frozen=True)
class BackboneConfig:
    """ResNet v1.5 (torchvision layout) with optional DCNv2 in the 3x3 convs."""
    layers: Tuple[int, ...] = (3, 4, 23, 3)      # bottleneck blocks per stage
    base_width: int = 64                        # stem channels = first-stage planes
    dcn_layers: Tuple[int, ...] = (0, 0, 0, 0)  # per stage: how many of its LAST blocks may use DCN
    dcn_interval: int = 1                       # of those, every dcn_interval-th block (authors' rule)
    dcn_impl: str = "fast"                      # portable DCN: "fast" (from primitives) or "native" (ops.deformable_conv2d)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of YOLACT / YOLACT++ besides the backbone."""
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    fpn_channels: int = 256                     # F, channels of P3-P7 and of the prediction head
    proto_channels: int = 256                   # hidden channels of the protonet
    num_prototypes: int = 32                    # K, prototype masks / coefficients per instance
    # Prior scales in input pixels, one tuple per pyramid level P3..P7.
    pred_scales: Tuple[Tuple[float, ...], ...] = ((24,), (48,), (96,), (192,), (384,))
    pred_aspect_ratios: Tuple[float, ...] = (1.0, 0.5, 2.0)  # width / height
    use_square_anchors: bool = True             # YOLACT v1 legacy bug: h = w for every ratio
    use_maskiou: bool = False                   # YOLACT++ mask re-scoring net
    maskiou_channels: Tuple[int, ...] = (8, 16, 32, 64, 128)
    # "cpu": the C++ CPU kernels (DCN sampling, Winograd 3x3 convs outside the backbone; need
    # g++ and the CPU device); "portable": MindSpore primitives only, any device (the DCN per
    # backbone.dcn_impl); "auto": cpu on the CPU device when a C++ compiler is found, else
    # portable. Same parameters and results either way.
    kernels: str = "auto"

    @property
    def num_anchors(self):
        """A, anchors per location."""
        return len(self.pred_scales[0]) * len(self.pred_aspect_ratios)


@dataclass(frozen=True)
class DataConfig:
    """Dataset and input pipeline."""
    class_names: Tuple[str, ...] = COCO_CLASSES  # foreground classes; label i = class_names[i]
    max_size: int = 550                         # images are resized to max_size x max_size
    max_num_gt: int = 100                       # G, padded ground-truth slots per image
    augmentation: str = "ssd"                   # "ssd" (the authors'), "light" (photometric + mirror), "none"
    num_parallel_workers: int = 4               # data pipeline worker processes/threads


@dataclass(frozen=True)
class LossConfig:
    """Matching thresholds and the weights/normalisations of the five losses."""
    positive_iou: float = 0.5                   # prior IoU >= this: positive
    negative_iou: float = 0.4                   # below this: background; in between: neutral
    crowd_iou: float = 0.7                      # intersection / prior area with a crowd box: neutral
    bbox_weight: float = 1.5
    conf_weight: float = 1.0
    mask_weight: float = 6.125
    semantic_weight: float = 1.0
    maskiou_weight: float = 25.0
    negpos_ratio: int = 3                       # OHEM negatives per positive
    masks_to_train: int = 100                   # M, positives per image used by the mask loss
    discard_mask_area: int = 25                 # maskiou loss ignores GT masks of <= this many pixels (prototype grid)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation schedule, stated for ``batch_size`` images per iteration in total."""
    batch_size: int = 8
    lr: float = 1e-3
    warmup_init_lr: float = 1e-4
    warmup_iters: int = 500
    lr_decay: str = "step"                      # after the warmup: "step" (x lr_gamma at each of
                                                # lr_steps, the authors') or "cosine" (to 0 at max_iter)
    lr_steps: Tuple[int, ...] = (280000, 600000, 700000, 750000)
    lr_gamma: float = 0.1
    max_iter: int = 800000
    optimizer: str = "momentum"                 # "momentum" (the authors' SGD) or "adamw"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    grad_clip_norm: float = 0.0                 # > 0: clip the gradients' global L2 norm to this
    ema_decay: float = 0.0                      # > 0: checkpoints hold this moving average of the weights
    freeze_bn: str = "auto"                     # "auto": frozen when per-device batch < 6; "yes" / "no"


@dataclass(frozen=True)
class EvalConfig:
    """Detection post-processing."""
    score_threshold: float = 0.05               # keep a prior whose best foreground score exceeds this
    nms_threshold: float = 0.5                  # Fast NMS IoU threshold, per class
    top_k: int = 200                            # candidates per class before NMS
    cross_class_nms: bool = False               # one NMS over all classes (authors' --cross_class_nms)
    max_detections: int = 100                   # D, detections kept per image
    mask_threshold: float = 0.5                 # binarisation of the upsampled soft masks


@dataclass(frozen=True)
class YolactConfig:
    """A complete model variant."""
    name: str
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @property
    def num_classes(self):
        """C, foreground classes plus background."""
        return len(self.data.class_names) + 1

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
