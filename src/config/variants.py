"""The model variants, each its parent plus a difference (the authors' lineage and names)."""
from src.config.schema import (BackboneConfig, DataConfig, LossConfig, ModelConfig, TrainConfig,
                               YolactConfig, replace)
from src.data.classes import SHAPE_CLASSES

RESNET101 = BackboneConfig(layers=(3, 4, 23, 3))
RESNET50 = BackboneConfig(layers=(3, 4, 6, 3))

yolact_base = YolactConfig(
    name="yolact_base",
    model=ModelConfig(backbone=RESNET101),
    data=DataConfig(max_size=550),
    loss=LossConfig(),
    train=TrainConfig(),
)

yolact_resnet50 = replace(yolact_base, name="yolact_resnet50", **{"model.backbone": RESNET50})


def _rescaled_v1_scales(max_size):
    """YOLACT v1 at another input size: the authors truncate scale * max_size / 550 to int."""
    return tuple((int(scales[0] / yolact_base.max_size * max_size),)
                 for scales in yolact_base.model.pred_scales)


yolact_im400 = replace(yolact_base, name="yolact_im400",
                       **{"data.max_size": 400, "model.pred_scales": _rescaled_v1_scales(400)})

yolact_im700 = replace(yolact_base, name="yolact_im700",
                       **{"data.max_size": 700, "model.pred_scales": _rescaled_v1_scales(700),
                          "loss.masks_to_train": 300})

yolact_plus_base = replace(
    yolact_base, name="yolact_plus_base",
    **{"model.backbone": replace(RESNET101, dcn_layers=(0, 4, 23, 3), dcn_interval=3),
       "model.pred_scales": tuple(tuple(base * 2 ** (j / 3.0) for j in range(3))
                                  for base in (24, 48, 96, 192, 384)),
       "model.use_square_anchors": False,
       "model.use_maskiou": True})

yolact_plus_resnet50 = replace(
    yolact_plus_base, name="yolact_plus_resnet50",
    **{"model.backbone": replace(RESNET50, dcn_layers=(0, 4, 6, 3), dcn_interval=1)})

VARIANTS = {config.name: config for config in (
    yolact_base, yolact_resnet50, yolact_im400, yolact_im700, yolact_plus_base,
    yolact_plus_resnet50)}


def for_dataset(config, class_names, max_size=None, name=None):
    """Derive a variant for a custom dataset: its foreground class names (which fix
    ``num_classes``) and optionally another input size. Prior scales are kept in pixels,
    as the authors do for custom datasets."""
    changes = {"data.class_names": tuple(class_names),
               "name": name or f"{config.name}_custom"}
    if max_size is not None:
        changes["data.max_size"] = int(max_size)
    return replace(config, **changes)


# The built-in CPU demo on the synthetic shapes data set (``python tools/make_synthetic.py``): the
# YOLACT++ code paths (DCN in the last block of C4 and C5, all five losses, mask re-scoring) at
# a size a 2-core CPU trains at 0.6-0.9 s per batch of 8 (the shared hosts' speed varies).
# Objects there are 20-130 px in ~160 px images, shown at 256: the prior scales are set for
# that range. From scratch, AdamW learns several times faster than the authors' SGD (mask AP
# on the val split, data version 1.0: SGD at lr 4e-3 0.9 after 1000 iterations; AdamW with
# the decay near the end: lr 1e-3 20.3, 7e-4 27.2, 5e-4 35.8; a cosine decay from 7e-4 20.7).
# Iterations are what the 20-minute budget buys and what the result depends on most (data
# version 2.0, mask AP50 on 200 val images: 71.5 after 1400, 83.5 after 1900; single runs vary
# by ~10 points with the order the data is read in), so the width goes where it helps: a
# 96-channel FPN and no DCN in C3 (its 32x32 sampling costs as much as the wider FPN) gave 83.5
# against 76.9 for 64 channels with DCN in C3; a 1-1-1-1 backbone, ~20% faster per step,
# reached only 51.6 after 1600 (50 val images); a 32-channel protonet is 5-7% faster than 64
# and no worse. What the short run gets wrong is mostly the class (box AP50 65 with classes,
# 86 without), so the class loss weighs 3x: mask AP50 after 1400 iterations 60.9 -> 70.9 with
# the demo script's data order, 71.5 -> 74.4 (weight 5) with another; after 1600, 77.5 and
# 81.5 with the two orders.
yolact_plus_demo = replace(
    for_dataset(yolact_plus_resnet50, SHAPE_CLASSES, max_size=256, name="yolact_plus_demo"),
    **{"model.backbone": BackboneConfig(layers=(2, 2, 2, 2), base_width=16,
                                        dcn_layers=(0, 0, 1, 1), dcn_interval=1),
       "model.fpn_channels": 96, "model.proto_channels": 32, "model.num_prototypes": 16,
       "model.pred_scales": tuple(tuple(base * 2 ** (j / 3.0) for j in range(3))
                                  for base in (16, 32, 64, 128, 256)),
       "data.num_parallel_workers": 2,
       # The C++ CPU kernels gain nothing on these narrow layers at 256 px (train step 0.30x
       # a ResNet-50 step with them, 0.28x without, bench/train_step.py, docs/performance.md),
       # and the figures above were measured on MindSpore primitives.
       "model.kernels": "portable",
       # A few dozen positives per image here: 32 mask slots instead of 100 cut the mask
       # and mask-IoU losses' cost ~3x with the same result (sampling only starts above 32).
       "loss.masks_to_train": 32,
       "loss.conf_weight": 3.0,
       "data.augmentation": "light",
       "train.optimizer": "adamw", "train.lr": 5e-4, "train.warmup_iters": 100,
       "train.max_iter": 1600, "train.lr_steps": (1360, 1520)})

VARIANTS[yolact_plus_demo.name] = yolact_plus_demo
