"""Convert a COCO-format split (instances json + image folder) into MindRecord shards.

    python create_mindrecord.py --ann_file annotations/instances_train2017.json \
        --image_dir train2017 --output_dir mindrecord --split train

writes ``<output_dir>/<split>/`` (shards + dataset_info.json). Run once per split before
training / evaluation. Dataset errors are printed as one line, exit code 2. SIGINT and SIGTERM
stop it with nothing written (exit code 130 / 143, 128 + the signal as shells report it).
"""
import argparse
import dataclasses
import os
import signal
import sys

import src  # noqa: F401  (the CPU environment defaults)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ann_file", required=True, help="COCO-format instances json")
    parser.add_argument("--image_dir", required=True,
                        help="folder the json's file_name entries are relative to")
    parser.add_argument("--output_dir", required=True, help="the split is written to <output_dir>/<split>/")
    parser.add_argument("--split", required=True, choices=("train", "val"))
    parser.add_argument("--num_shards", type=int, default=8, help="MindRecord shard files (1-1000)")
    parser.add_argument("--keep_empty", action="store_true", help="also write images without annotations")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output of this split")
    return parser.parse_args(argv)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; ``signum`` is which."""

    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def interrupt(signum, frame):
    """Signal handler: raise ``Interrupted`` in the main thread, so that the writer removes its
    temporary folder as on any error (the default SIGTERM action kills the process before it
    can). Later signals are ignored, so that a second Ctrl+C cannot cut that clean-up short."""
    for held in (signal.SIGINT, signal.SIGTERM):
        signal.signal(held, signal.SIG_IGN)
    raise Interrupted(signum)


def main(argv=None):
    args = parse_args(argv)
    # A broken image is our one error line; OpenCV would print its own warning first (it reads
    # this variable when it loads).
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    from src.data.coco import DatasetError, load_coco

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, interrupt)
    try:
        # Inside the handlers' reach: this imports MindSpore (~1 s).
        from src.data.mindrecord import check_output_available, write_mindrecord

        check_output_available(args.output_dir, args.split, args.overwrite)
        print(f"reading {args.ann_file} ...", flush=True)
        dataset = load_coco(args.ann_file, args.image_dir, keep_empty=args.keep_empty)
        print(f"{args.ann_file}: {dataset.stats.summary()}", flush=True)
        source = {"ann_file": os.path.abspath(args.ann_file), "image_dir": os.path.abspath(args.image_dir),
                  "keep_empty": args.keep_empty, "stats": dataclasses.asdict(dataset.stats)}
        folder = write_mindrecord(dataset.images, args.output_dir, args.split, args.num_shards,
                                  args.overwrite, categories=dataset.categories, source=source)
    except DatasetError as error:
        print(f"create_mindrecord.py: error: {error}", file=sys.stderr)
        return 2
    except Interrupted as interruption:
        print(f"create_mindrecord.py: interrupted by {interruption}; no output written",
              file=sys.stderr)
        return 128 + interruption.signum
    print(f"wrote {len(dataset.images)} images to {folder}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
