"""Train YOLACT / YOLACT++: parse arguments, set up the device, run ``src.train.trainer``.

Every setting is a config key (``src/config/schema.py``); the flags below are shorthands for
the most used ones, ``--opts KEY=VALUE`` sets any other.
"""
import argparse
import signal
import sys

from src.config.options import ConfigOptions
from src.runtime import CompileDumps, add_device_argument

OPTIONS = ConfigOptions(
    flags={"mindrecord_dir": "run.mindrecord_dir", "output_dir": "run.output_dir",
           "batch_size": "train.batch_size", "stop_iter": "run.stop_iter",
           "resume": "run.resume", "overwrite": "run.overwrite",
           "backbone_ckpt": "run.backbone_ckpt", "pretrained": "run.pretrained",
           "save_every": "run.save_every", "keep_last": "run.keep_last",
           "log_every": "run.log_every", "seed": "run.seed",
           "num_workers": "data.num_parallel_workers", "loss_scale": "run.loss_scale",
           "amp_level": "run.amp_level", "eval_every": "run.eval_every",
           "eval_images": "run.eval_images"},
    sections=("model", "data", "loss", "train", "run"))


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    OPTIONS.add_to(parser)
    add_device_argument(parser)
    parser.add_argument("--distribute", action="store_true",
                        help="data-parallel over the devices of msrun / a rank table")
    return parser


def interrupt_on_sigterm(signum, frame):
    """Once a graph has run, MindSpore's own SIGINT handler turns Ctrl+C into SIGTERM (exit
    143, no Python exception); job schedulers and msrun stop processes with SIGTERM too.
    Raising KeyboardInterrupt lets the trainer save a checkpoint first."""
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None):
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, interrupt_on_sigterm)
    from src.checkpoint import CheckpointError
    from src.config.load import ConfigError, load_config
    from src.data.coco import DatasetError
    from src.kernels.build import KernelBuildError
    from src.runtime import init_context
    from src.train.output_folder import OutputFolderError
    from src.train.setup import TrainingError
    from src.train.trainer import train
    from src.utils.logger import setup_logger

    compile_dumps = CompileDumps()
    try:
        config = load_config(args.config, args.opts, OPTIONS.given(args))
        context = init_context(args.device_target, args.distribute)
        setup_logger(context.rank)
        last = train(config, context)
    except (ConfigError, DatasetError, CheckpointError, TrainingError, KernelBuildError,
            OutputFolderError, ValueError) as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        compile_dumps.remove_new()
        return 130
    print(f"done; last checkpoint: {last}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
