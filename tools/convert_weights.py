"""Convert PyTorch weights into a MindSpore checkpoint of our model.

    python tools/convert_weights.py --config yolact_plus_resnet50 \\
        --src yolact_plus_resnet50_54_800000.pth --dst yolact_plus_resnet50.ckpt
    python tools/convert_weights.py --config yolact_plus_base --backbone \\
        --src resnet101_reducedfc.pth --dst resnet101_imagenet.ckpt

The name map and what is dropped are described in ``src/utils/weights.py``.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import src  # noqa: E402,F401  (the CPU environment defaults)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Convert the authors' YOLACT .pth (or, with --backbone, a torchvision "
                    "ImageNet ResNet .pth) into a MindSpore checkpoint of our model.")
    parser.add_argument("--config", required=True, help="variant name or .yaml config")
    parser.add_argument("--src", required=True, help="PyTorch state dict (.pth)")
    parser.add_argument("--dst", required=True, help="MindSpore checkpoint to write (.ckpt)")
    parser.add_argument("--backbone", action="store_true",
                        help="the source is an ImageNet ResNet: write backbone.* only")
    args = parser.parse_args(argv)
    from src.config.load import ConfigError, load_config
    from src.utils.weights import (WeightConversionError, convert, load_torch_state_dict,
                                   require_ckpt_suffix, summary_lines, write_checkpoint)

    try:
        config = load_config(args.config)
        require_ckpt_suffix(args.dst)  # fail before the slow part
        state_dict = load_torch_state_dict(args.src)
        conversion = convert(state_dict, config, backbone_only=args.backbone)
        write_checkpoint(conversion.arrays, args.dst)
    except (WeightConversionError, ConfigError, OSError) as error:
        print(f"convert_weights: error: {error}", file=sys.stderr)
        return 2
    print("\n".join(summary_lines(conversion, args.src, args.dst)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
