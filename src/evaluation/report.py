"""What a COCO evaluation does once its images are detected: the ranks of a sharded run hand
their results to rank 0 (``src.evaluation.sharding``), which writes the results json, then
either scores them with COCOeval (the AP table, and the AP per class with ``--classwise``) or,
on a split without annotations, packs them for the COCO evaluation server
(``src.evaluation.testdev``)."""
import os

from src.evaluation.classwise import classwise_rows, format_classwise_table, write_classwise
from src.evaluation.coco_eval import format_results_table
from src.evaluation.sharding import gather, hand_over
from src.evaluation.testdev import SERVER, write_upload_zips

# Where the results go when --output_json is not given but a file must be written (per-class
# AP, test-dev upload, a sharded run's meeting folder): eval_results/<annotation file name>.
DEFAULT_RESULTS_DIR = "eval_results"


def default_results_prefix(ann_file):
    """``eval_results/<annotation file name without .json>`` in the current folder."""
    return os.path.join(DEFAULT_RESULTS_DIR, os.path.splitext(os.path.basename(ann_file))[0])


def finish_coco_evaluation(evaluator, evaluation):
    """Report a detected COCO evaluation.

    Args:
        evaluator: the ``CocoEvaluator`` holding this process's detections.
        evaluation: the ``CocoEvaluation`` of ``prepare_coco_evaluation``.
    Returns:
        {"bbox": {AP, AP50, ...}, "segm": {...}} as fractions; None on ranks > 0 of a sharded
        run and on a split without annotations (nothing is scored here).
    """
    shard = evaluation.shard
    if shard is not None and shard.size > 1:
        if shard.rank > 0:
            path = hand_over(evaluator, shard)
            print(f"rank {shard.rank}: handed the results of {len(evaluator.image_ids)} images "
                  f"to rank 0 ({path})")
            return None
        evaluator = gather(evaluator, shard)
        print(f"gathered the results of {len(evaluator.image_ids)} images from {shard.size} ranks")
    if evaluation.output_json:
        written = evaluator.write_json(evaluation.output_json)
        for kind, path in written.items():
            print(f"wrote {kind} results to {path}")
    if evaluation.upload:
        for kind, path in write_upload_zips(written, evaluation.upload).items():
            print(f"wrote the {kind} upload to {path}")
        print(f"AP: this split has no public annotations; upload each zip to the COCO "
              f"evaluation server ({SERVER}), which computes the AP")
        return None
    metrics = evaluator.evaluate(evaluation.coco_gt)
    print(format_results_table(metrics))
    if evaluation.classwise:
        if not evaluator.coco_evals:
            print("AP per class: no image was evaluated")
            return metrics
        rows = classwise_rows(evaluator.coco_evals, evaluation.coco_gt)
        print("\nAP per class (%):")
        print(format_classwise_table(rows))
        for kind, path in write_classwise(rows, evaluation.output_json).items():
            print(f"wrote the AP per class ({kind}) to {path}")
    return metrics
