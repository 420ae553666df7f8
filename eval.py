"""Evaluate YOLACT / YOLACT++ on a COCO-format split (box and mask AP), benchmark it, or draw
its detections on images, folders and videos."""
import argparse
import sys

from src.utils.cpu_env import set_cpu_env_defaults


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="yolact_plus_resnet50",
                        help="variant name (src/config/variants.py) or a YAML file")
    parser.add_argument("--opts", nargs="*", default=[], metavar="SECTION.FIELD=VALUE")
    weights = parser.add_mutually_exclusive_group(required=True)
    weights.add_argument("--ckpt", help="checkpoint (trained, or converted from the authors' .pth)")
    weights.add_argument("--mindir", help="a MINDIR written by export.py")
    parser.add_argument("--device_target", default="CPU", choices=("Ascend", "GPU", "CPU"))
    parser.add_argument("--batch_size", type=int, default=1,
                        help="images per network call (a MINDIR fixes its own)")
    coco = parser.add_argument_group("COCO evaluation")
    coco.add_argument("--ann_file", help="COCO-format annotations of the split, e.g. "
                                         "annotations/instances_val2017.json")
    coco.add_argument("--image_dir", help="the split's images, e.g. val2017/")
    coco.add_argument("--mindrecord_dir", help="read the images from create_mindrecord.py output instead")
    coco.add_argument("--split", default="val", help="MindRecord split to read")
    coco.add_argument("--max_images", type=int, default=0, help="evaluate only the first N images")
    coco.add_argument("--output_json", default="",
                      help="write results to PREFIX_bbox.json and PREFIX_segm.json")
    coco.add_argument("--benchmark", action="store_true",
                      help="time the stages and print FPS instead of computing AP")
    media = parser.add_argument_group("pictures")
    media.add_argument("--image", help="IN.jpg:OUT.png")
    media.add_argument("--images", help="IN_DIR:OUT_DIR")
    media.add_argument("--video", help="IN.mp4:OUT.mp4")
    media.add_argument("--score_threshold", type=float, default=0.3,
                       help="drawing: hide detections below this score")
    media.add_argument("--top_k", type=int, default=15, help="drawing: at most this many per image")
    args = parser.parse_args(argv)
    if not (args.ann_file or args.image or args.images or args.video):
        parser.error("give --ann_file (COCO evaluation) or --image / --images / --video")
    if args.ann_file and not (args.image_dir or args.mindrecord_dir):
        parser.error("--ann_file needs --image_dir or --mindrecord_dir")
    if args.benchmark and args.mindir:
        parser.error("--benchmark times the network stages of a checkpoint; use --ckpt")
    return args


def run(args):
    from src.annotate import annotate_folder, annotate_image, annotate_video, split_pair
    from src.config.load import load_config
    from src.deploy import ExportedDetector
    from src.evaluation.evaluate import (evaluated_image_ids, images_from_folder,
                                         images_from_mindrecord, load_ground_truth,
                                         run_benchmark, run_coco_evaluation)
    from src.inference import Detector

    config = load_config(args.config, args.opts)
    if args.mindir:
        detector = ExportedDetector(args.mindir, config, args.device_target)
    else:
        detector = Detector(config, args.ckpt, args.device_target, batch_size=args.batch_size)
    names = config.data.class_names
    drawing = {"score_threshold": args.score_threshold, "top_k": args.top_k}
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
    if args.ann_file:
        coco_gt, category_ids = load_ground_truth(args.ann_file, config.num_classes - 1)
        image_ids = evaluated_image_ids(coco_gt, args.max_images)
        if args.mindrecord_dir:
            images = images_from_mindrecord(args.mindrecord_dir, args.split, image_ids)
        else:
            images = images_from_folder(coco_gt, args.image_dir, image_ids)
        if args.benchmark:
            run_benchmark(detector, images, len(image_ids))
        else:
            run_coco_evaluation(detector, coco_gt, category_ids, images, len(image_ids),
                                args.output_json)


def main(argv=None):
    args = parse_args(argv)
    set_cpu_env_defaults()
    from src.annotate import MediaError
    from src.config.load import ConfigError
    from src.data.coco import DatasetError
    from src.deploy import DeployError
    from src.utils.checkpoint import CheckpointError

    try:
        run(args)
    except (ConfigError, DatasetError, CheckpointError, DeployError, MediaError,
            ValueError) as error:
        print(f"eval.py: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
