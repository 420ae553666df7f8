"""Train YOLACT / YOLACT++: parse arguments, set up the device, run ``src.train.trainer``."""
import argparse
import os
import signal
import sys

from src.utils.cpu_env import set_cpu_env_defaults


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="yolact_plus_resnet50",
                        help="variant name (src/config/variants.py) or a YAML file")
    parser.add_argument("--opts", nargs="*", default=[], metavar="SECTION.FIELD=VALUE",
                        help="config overrides, e.g. train.lr=0.002 data.max_size=400")
    parser.add_argument("--mindrecord_dir", required=True,
                        help="--output_dir of create_mindrecord.py (holds the train split)")
    parser.add_argument("--device_target", default="CPU", choices=("Ascend", "GPU", "CPU"))
    parser.add_argument("--distribute", action="store_true",
                        help="data-parallel over the devices of msrun / a rank table")
    parser.add_argument("--batch_size", type=int, default=0,
                        help="total batch over all devices (0: the config's train.batch_size, "
                             "8 for the authors' variants); the lr and schedule scale with it")
    parser.add_argument("--max_iter", type=int, default=0,
                        help="stop after this many iterations (0: the scaled schedule)")
    parser.add_argument("--backbone_ckpt", default="",
                        help="ImageNet backbone from 'python -m src.convert_weights --backbone'")
    parser.add_argument("--resume", default="",
                        help="training checkpoint to continue from, or 'auto' for the newest "
                             "in --output_dir")
    parser.add_argument("--output_dir", default="output")
    parser.add_argument("--save_every", type=int, default=10000, help="iterations between checkpoints")
    parser.add_argument("--keep_last", type=int, default=3, help="checkpoints kept (0: all)")
    parser.add_argument("--log_every", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_workers", type=int, default=0,
                        help="data pipeline workers (0: the config's)")
    parser.add_argument("--loss_scale", default="dynamic", choices=("dynamic", "static", "none"))
    parser.add_argument("--amp_level", default="O0", choices=("O0", "O1", "O2", "O3"),
                        help="mixed precision for Ascend/GPU (losses stay float32)")
    return parser.parse_args(argv)


def device_id_from_env(device_target):
    """The device a rank-table launcher (scripts/run_distribute_train.sh on Ascend) or the user
    chose with DEVICE_ID, on GPU/Ascend; None lets MindSpore pick (0, or msrun's choice)."""
    value = os.environ.get("DEVICE_ID", "")
    if device_target == "CPU" or not value:
        return None
    if not value.isdigit():
        raise ValueError(f"DEVICE_ID '{value}': expected a device number")
    return int(value)


def interrupt_on_sigterm(signum, frame):
    """Once a graph has run, MindSpore's own SIGINT handler turns Ctrl+C into SIGTERM (exit
    143, no Python exception); job schedulers and msrun stop processes with SIGTERM too.
    Raising KeyboardInterrupt lets the trainer save a checkpoint first."""
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None):
    args = parse_args(argv)
    set_cpu_env_defaults()
    signal.signal(signal.SIGTERM, interrupt_on_sigterm)
    from src.config.load import ConfigError, load_config
    from src.data.coco import DatasetError
    from src.train.context import init_context
    from src.train.trainer import TrainingError, TrainOptions, train
    from src.utils.checkpoint import CheckpointError
    from src.utils.logger import setup_logger

    try:
        config = load_config(args.config, args.opts)
        context = init_context(args.device_target, args.distribute,
                               device_id_from_env(args.device_target))
        setup_logger(context.rank)
        options = TrainOptions(
            mindrecord_dir=args.mindrecord_dir, output_dir=args.output_dir,
            batch_size=args.batch_size or config.train.batch_size, max_iter=args.max_iter,
            backbone_ckpt=args.backbone_ckpt, resume=args.resume, save_every=args.save_every,
            keep_last=args.keep_last, log_every=args.log_every, seed=args.seed,
            num_workers=args.num_workers, loss_scale=args.loss_scale, amp_level=args.amp_level)
        last = train(config, options, context)
    except (ConfigError, DatasetError, CheckpointError, TrainingError, ValueError) as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    print(f"done; last checkpoint: {last}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
