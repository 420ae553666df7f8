"""``eval.py --distribute``: a COCO evaluation sharded over the ranks of msrun.

Rank r of n detects every n-th evaluated image, ``image_ids[r::n]`` (strided, so that each
rank gets a like mix of a folder's images whatever their order). Ranks 1..n-1 then write
their COCO result entries to ``rank_<r>.json`` in a folder next to the results
(``<dir of --output_json>/.<its name>_ranks``; temp file + rename, so a part is never read half
written) and exit. Rank 0 waits for every part, checks that each holds exactly its rank's
images, merges them in image order and evaluates once: COCOeval sees the same entries as on
one device, so the AP is the same.

The ranks join the group (msrun also runs the script in its scheduler process, which must
stay in ``init()``), but the results travel through files, not collectives: MindSpore's CPU
backend has no eager AllGather, and a rank that dies or hangs cannot block the others inside
a collective. Rank 0 waits at most ``MIN_WAIT_SECONDS`` or as long as it took itself,
whichever is longer (the ranks do equal work), then stops with an error naming the missing
rank. The ranks need a folder they all see: one machine, or a shared
file system. Rank 0 removes parts an interrupted earlier run left there when it starts, long
before any other rank has detected its images.
"""
import glob
import json
import os
import time
from collections import defaultdict
from typing import NamedTuple

from src.evaluation.coco_eval import IOU_TYPES, CocoEvaluator
from src.utils.files import write_text_atomic

MIN_WAIT_SECONDS = 600.0
POLL_SECONDS = 0.5


def rank_share(image_ids, rank, size):
    """The images rank ``rank`` of ``size`` detects: every ``size``-th from the ``rank``-th."""
    return image_ids[rank::size]


class Shard(NamedTuple):
    """One rank's place in a sharded evaluation."""
    rank: int
    size: int
    image_ids: tuple    # every evaluated image of all ranks, in evaluation order
    folder: str         # where ranks 1..size-1 leave their results for rank 0
    started: float      # time.time() when this rank planned its shard

    @property
    def own_image_ids(self):
        """The images this rank detects."""
        return rank_share(self.image_ids, self.rank, self.size)


def check_launcher(environ=None):
    """Raise ValueError unless this process was started by msrun (``MS_ROLE`` set) or with a
    rank table (``RANK_TABLE_FILE``): joining the group would fail with a long trace."""
    environ = os.environ if environ is None else environ
    if not (environ.get("MS_ROLE") or environ.get("RANK_TABLE_FILE")):
        raise ValueError("--distribute: this process was not started by msrun (no MS_ROLE) or "
                         "with a rank table (no RANK_TABLE_FILE); run bash scripts/run_eval.sh "
                         "... DEVICE_TARGET NUM_DEVICES")


def parts_folder(path_prefix):
    """The folder where the ranks of an evaluation writing ``path_prefix`` meet."""
    return os.path.join(os.path.dirname(os.path.abspath(path_prefix)),
                        f".{os.path.basename(path_prefix)}_ranks")


def _part_path(folder, rank):
    return os.path.join(folder, f"rank_{rank}.json")


def plan_shard(rank, size, image_ids, path_prefix):
    """The ``Shard`` of ``rank`` over ``image_ids``; creates the parts folder of
    ``path_prefix`` (rank 0 also empties it)."""
    folder = parts_folder(path_prefix)
    os.makedirs(folder, exist_ok=True)
    if rank == 0:
        for stale in glob.glob(os.path.join(folder, "rank_*.json")):
            os.remove(stale)
    return Shard(rank, size, tuple(int(i) for i in image_ids), folder, time.time())


def hand_over(evaluator, shard):
    """Rank > 0: write this rank's result entries for rank 0. Returns the part's path."""
    path = _part_path(shard.folder, shard.rank)
    part = {"rank": shard.rank, "size": shard.size, "image_ids": evaluator.image_ids,
            **{iou_type: evaluator.results[iou_type] for iou_type in IOU_TYPES}}
    write_text_atomic(path, json.dumps(part))
    return path


def _read_part(shard, rank, deadline, waited):
    path = _part_path(shard.folder, rank)
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise ValueError(f"rank {rank} of {shard.size} left no results ({path}) within "
                             f"{waited:.0f} s of rank 0's end: it failed or hangs; see its log "
                             f"(msrun: worker_{rank}.log)")
        time.sleep(POLL_SECONDS)
    with open(path, encoding="utf-8") as stream:
        part = json.load(stream)
    expected = list(rank_share(shard.image_ids, rank, shard.size))
    if (part.get("rank"), part.get("size")) != (rank, shard.size) or \
            sorted(part.get("image_ids", [])) != sorted(expected):
        raise ValueError(f"{path}: not the results of rank {rank} of {shard.size} over this "
                         f"evaluation's images (a part of another run?)")
    return part


def gather(evaluator, shard, wait_seconds=None):
    """Rank 0: merge the parts of ranks 1..size-1 with its own results.

    Args:
        evaluator: rank 0's ``CocoEvaluator`` over ``shard.own_image_ids``.
        shard: rank 0's ``Shard``.
        wait_seconds: how long to wait for the parts; default max(``MIN_WAIT_SECONDS``, the
            time since ``plan_shard``).
    Returns:
        a ``CocoEvaluator`` over ``shard.image_ids`` with the entries of every rank, image by
        image in ``shard.image_ids`` order (each image's entries in detection order).
    Raises:
        ValueError: a part did not come in time or is not the expected rank's.
    """
    if wait_seconds is None:
        wait_seconds = max(MIN_WAIT_SECONDS, time.time() - shard.started)
    deadline = time.monotonic() + wait_seconds
    parts = [{"image_ids": evaluator.image_ids, **evaluator.results}]
    parts += [_read_part(shard, rank, deadline, wait_seconds) for rank in range(1, shard.size)]
    entries = {iou_type: defaultdict(list) for iou_type in IOU_TYPES}
    for part in parts:
        for iou_type in IOU_TYPES:
            for entry in part[iou_type]:
                entries[iou_type][entry["image_id"]].append(entry)
    merged = CocoEvaluator(evaluator.label_to_category_id)
    for image_id in shard.image_ids:
        merged.add_entries(image_id, entries["bbox"][image_id], entries["segm"][image_id])
    for rank in range(1, shard.size):
        os.remove(_part_path(shard.folder, rank))
    if not os.listdir(shard.folder):
        os.rmdir(shard.folder)
    return merged
