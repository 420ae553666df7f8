"""Evaluate YOLACT / YOLACT++ on a COCO-format split (box and mask AP), benchmark it, or draw
its detections on images, folders and videos.

Post-processing (``eval.*``) and drawing (``draw.*``) settings are config keys; the flags
below are shorthands for some of them, ``--opts KEY=VALUE`` sets any other.
"""
import argparse
import sys

from src.config.options import ConfigOptions
from src.runtime import add_device_argument, init_context

OPTIONS = ConfigOptions(
    flags={"batch_size": "eval.batch_size", "draw_score_threshold": "draw.score_threshold",
           "draw_top_k": "draw.top_k"},
    sections=("eval", "draw"))


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    OPTIONS.add_to(parser)
    weights = parser.add_mutually_exclusive_group(required=True)
    weights.add_argument("--ckpt", help="checkpoint (trained, or converted from the authors' .pth)")
    weights.add_argument("--mindir", help="a MINDIR written by export.py")
    add_device_argument(parser)
    coco = parser.add_argument_group("COCO evaluation")
    coco.add_argument("--ann_file", help="COCO-format annotations of the split, e.g. "
                                         "annotations/instances_val2017.json")
    coco.add_argument("--image_dir", help="the split's images, e.g. val2017/")
    coco.add_argument("--mindrecord_dir", help="read the images from create_mindrecord.py "
                                               "output instead")
    coco.add_argument("--split", default="val", help="MindRecord split to read")
    coco.add_argument("--max_images", type=int, default=0, help="evaluate only the first N images")
    coco.add_argument("--output_json", default="",
                      help="write results to PREFIX_bbox.json and PREFIX_segm.json (default "
                           "eval_results/<ann_file name> where files are needed)")
    coco.add_argument("--benchmark", action="store_true",
                      help="time the stages and print FPS instead of computing AP")
    coco.add_argument("--classwise", action="store_true",
                      help="also AP per class, printed and written to PREFIX_classwise.json/.csv")
    coco.add_argument("--distribute", action="store_true",
                      help="under msrun: each rank detects every N-th image, rank 0 evaluates")
    media = parser.add_argument_group("pictures (drawn with the draw.* keys)")
    media.add_argument("--image", help="IN.jpg:OUT.png")
    media.add_argument("--images", help="IN_DIR:OUT_DIR")
    media.add_argument("--video", help="IN.mp4:OUT.mp4")
    return parser


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not (args.ann_file or args.image or args.images or args.video):
        parser.error("give --ann_file (COCO evaluation) or --image / --images / --video")
    if args.ann_file and not (args.image_dir or args.mindrecord_dir):
        parser.error("--ann_file needs --image_dir or --mindrecord_dir")
    if args.benchmark and args.mindir:
        parser.error("--benchmark times the network stages of a checkpoint; use --ckpt")
    if (args.classwise or args.distribute) and not args.ann_file:
        parser.error("--classwise and --distribute need --ann_file (a COCO evaluation)")
    if args.benchmark and (args.classwise or args.distribute):
        parser.error("--benchmark times one device and computes no AP; drop --classwise and "
                     "--distribute")
    if args.distribute and (args.image or args.images or args.video):
        parser.error("--distribute shards a COCO evaluation; draw pictures on one device")
    return args


def run(args):
    """Returns the COCO evaluation's {"bbox": {AP, ...}, "segm": {...}}, or None (no
    --ann_file, --benchmark, a split without annotations, ranks > 0 of --distribute)."""
    from src.config.load import load_config
    from src.evaluation.evaluate import (prepare_coco_evaluation, run_benchmark,
                                         run_coco_evaluation)
    from src.evaluation.sharding import check_launcher
    from src.inference import Detector, ExportedDetector
    from src.inference.annotate import (annotate_folder, annotate_image, annotate_video,
                                        split_pair)

    config = load_config(args.config, args.opts, OPTIONS.given(args))
    distributed = None
    if args.distribute:
        # First: msrun runs this script in its scheduler process too, which stays in init().
        check_launcher()
        context = init_context(args.device_target, distributed=True)
        distributed = (context.rank, context.group_size)
    # Before the model is built: a wrong annotation file, image or output place is reported
    # in seconds, not after every image was detected.
    evaluation = prepare_coco_evaluation(
        args.ann_file, config.data.class_names, args.image_dir, args.mindrecord_dir, args.split,
        args.max_images, args.output_json, classwise=args.classwise, algorithm=config.name,
        distributed=distributed, benchmark=args.benchmark) if args.ann_file else None
    if args.mindir:
        detector = ExportedDetector(args.mindir, config, args.device_target)
    else:
        detector = Detector(config, args.ckpt, args.device_target)
    names = config.data.class_names
    drawing = {"score_threshold": config.draw.score_threshold, "top_k": config.draw.top_k}
    if args.image:
        source, target = split_pair(args.image, "--image")
        result = annotate_image(detector, source, target, names, **drawing)
        print(f"{len(result['classes'])} detections; wrote {target}")
    if args.images:
        source, target = split_pair(args.images, "--images")
        print(f"wrote {annotate_folder(detector, source, target, names, **drawing)} images to {target}")
    if args.video:
        source, target = split_pair(args.video, "--video")
        print(f"wrote {annotate_video(detector, source, target, names, **drawing)} frames to {target}")
    if evaluation is not None and args.benchmark:
        run_benchmark(detector, evaluation)
    elif evaluation is not None:
        return run_coco_evaluation(detector, evaluation)
    return None


def main(argv=None):
    args = parse_args(argv)
    from src.checkpoint import CheckpointError
    from src.config.load import ConfigError
    from src.data.coco import DatasetError
    from src.inference.annotate import MediaError
    from src.inference.exported import DeployError
    from src.kernels.build import KernelBuildError

    try:
        run(args)
    except (ConfigError, DatasetError, CheckpointError, DeployError, MediaError,
            KernelBuildError, ValueError) as error:
        print(f"eval.py: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        # Writing results after the inputs were checked: a full disk, a path that became a
        # folder, a shared folder of a distributed run gone away.
        path = error.filename2 or error.filename or "results"
        print(f"eval.py: error: {path}: cannot write ({error.strerror or error})", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
