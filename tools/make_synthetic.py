"""Write the synthetic shapes data set (COCO format) that the CPU demo and the tests train on.

    python tools/make_synthetic.py --out data/synthetic

The generator and the data set's layout are described in ``src/data/synthetic.py``.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from src.data.synthetic import (  # noqa: E402
    DATA_VERSION, IMAGE_SIZE, NUM_TRAIN, NUM_VAL, generate_dataset, is_current)


def main(argv=None):
    """Command-line entry point; returns the process exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output directory (created if missing)")
    parser.add_argument("--num_train", type=int, default=NUM_TRAIN, help="training images")
    parser.add_argument("--num_val", type=int, default=NUM_VAL, help="validation images")
    parser.add_argument("--image_size", type=int, default=IMAGE_SIZE,
                        help="nominal side in px; each side is drawn in 0.75-1.25 x this")
    parser.add_argument("--seed", type=int, default=0, help="random seed (>= 0)")
    parser.add_argument("--overwrite", action="store_true",
                        help="allow a non-empty output directory; replaces earlier output")
    parser.add_argument("--keep_current", action="store_true",
                        help="leave --out as it is if it already holds this data set, written "
                             "by this version of the generator with the same arguments")
    args = parser.parse_args(argv)
    if args.keep_current and is_current(args.out, args.num_train, args.num_val,
                                        args.image_size, args.seed):
        print(f"{args.out} already holds this data set (version {DATA_VERSION}); kept")
        return 0
    try:
        paths = generate_dataset(args.out, args.num_train, args.num_val, args.image_size,
                                 args.seed, args.overwrite)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for key in sorted(paths):
        print(f"{key}: {paths[key]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
