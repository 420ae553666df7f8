"""Export the inference graph of a checkpoint to MINDIR (any device) or AIR (Ascend).

    python export.py --config yolact_plus_resnet50 --ckpt yolact.ckpt \
        --file_format MINDIR --file_name yolact_plus_resnet50

writes ``yolact_plus_resnet50.mindir`` (MindSpore appends the format's suffix), reloads it
and checks that it computes what the checkpoint computes (``--no_verify`` skips that). The
graph's inputs and outputs are documented in ``src/deploy.py``. Errors are printed as one
line, exit code 2.
"""
import argparse
import sys

from src.utils.cpu_env import set_cpu_env_defaults


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="variant name or YAML file")
    parser.add_argument("--ckpt", required=True, help="checkpoint of that config")
    parser.add_argument("--file_name", required=True,
                        help="output path; MindSpore appends .mindir / .air when missing")
    parser.add_argument("--file_format", default="MINDIR", help="MINDIR, or AIR on Ascend")
    parser.add_argument("--batch_size", type=int, default=1,
                        help="images per call of the exported graph")
    parser.add_argument("--device_target", default="CPU", help="CPU, GPU or Ascend")
    parser.add_argument("--no_verify", action="store_true",
                        help="skip reloading the MINDIR and comparing it with the checkpoint")
    parser.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. data.max_size=512")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    set_cpu_env_defaults()
    # After the CPU defaults: these import MindSpore.
    from src.config.load import ConfigError, load_config
    from src.deploy import VERIFY_TOLERANCE, DeployError, export_checkpoint
    from src.utils.checkpoint import CheckpointError

    try:
        config = load_config(args.config, args.opts)
        size = config.max_size
        print(f"exporting {config.name} from {args.ckpt} (input [{args.batch_size}, 3, {size}, "
              f"{size}]) ...", flush=True)
        path, differences = export_checkpoint(
            config, args.ckpt, args.file_name, file_format=args.file_format,
            batch_size=args.batch_size, device_target=args.device_target, verify=not args.no_verify)
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
