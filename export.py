"""Export the inference graph of a checkpoint to MINDIR (any device) or AIR (Ascend).

    python export.py --config yolact_plus_resnet50 --ckpt yolact.ckpt \\
        --file_format MINDIR --file_name yolact_plus_resnet50

writes ``yolact_plus_resnet50.mindir`` (MindSpore appends the format's suffix), reloads it
and checks that it computes what the checkpoint computes (``--no_verify`` skips that). The
graph's inputs and outputs are documented in ``src/inference/net.py``. Errors are printed as
one line, exit code 2.
"""
import argparse
import sys

from src.config.options import ConfigOptions
from src.runtime import add_device_argument

OPTIONS = ConfigOptions(flags={"batch_size": "eval.batch_size"}, sections=("eval",))


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    OPTIONS.add_to(parser)
    parser.add_argument("--ckpt", required=True, help="checkpoint of that config")
    parser.add_argument("--file_name", required=True,
                        help="output path; MindSpore appends .mindir / .air when missing")
    parser.add_argument("--file_format", default="MINDIR", help="MINDIR, or AIR on Ascend")
    add_device_argument(parser)
    parser.add_argument("--no_verify", action="store_true",
                        help="skip reloading the MINDIR and comparing it with the checkpoint")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    # Imported once the arguments are parsed: these load MindSpore.
    from src.checkpoint import CheckpointError
    from src.config.load import ConfigError, load_config
    from src.inference.export import VERIFY_TOLERANCE, DeployError, export_checkpoint

    try:
        config = load_config(args.config, args.opts, OPTIONS.given(args))
        size = config.max_size
        print(f"exporting {config.name} from {args.ckpt} (input [{config.eval.batch_size}, 3, "
              f"{size}, {size}]) ...", flush=True)
        path, differences = export_checkpoint(
            config, args.ckpt, args.file_name, file_format=args.file_format,
            device_target=args.device_target, verify=not args.no_verify)
    except (ConfigError, CheckpointError, DeployError) as error:
        print(f"export.py: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("export.py: interrupted; nothing written", file=sys.stderr)
        return 130
    if differences is not None:
        for name, difference in differences.items():
            print(f"verify {name}: max abs difference {difference:.3g} "
                  f"(tolerance {VERIFY_TOLERANCE:g})")
    print(f"exported {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
