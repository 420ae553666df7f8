"""The output folder of a training run, made safe before the first step: never a checkpoint
lost to a new run, never a run lost to a folder that cannot hold its first checkpoint."""
import datetime
import glob
import os
import shutil

from src.checkpoint import list_checkpoints
from src.train.run_record import RECORD_PATTERNS
from src.utils.files import TEMP_PREFIX, cannot_write_reason

# Free space asked for beyond one checkpoint: the atomic save holds the new file beside the
# previous ones until rotation, and logs grow.
ROOM_MARGIN = 1.2


class OutputFolderError(RuntimeError):
    """The output folder cannot be used as asked; the message says why and what to pass."""


def best_checkpoint_path(folder, name):
    """Where validation while training keeps the best checkpoint of ``name``."""
    return os.path.join(folder, f"{name}_best.ckpt")


def prepare_output_folder(folder, name, resume, overwrite, checkpoint_bytes):
    """Make ``folder`` ready for a run of config ``name``.

    A folder that holds checkpoints of ``name`` belongs to an earlier run: it is continued
    (``resume`` set), or, with ``overwrite``, its files (checkpoints, the best checkpoint,
    metrics.jsonl, config yaml files) are moved into ``previous-<time>/`` inside it; otherwise
    this is an error. A new run also moves there the records of an earlier one that stopped
    before its first checkpoint. Temporary files left by a
    killed save are removed. The folder must accept a file and have room for
    ``checkpoint_bytes`` (times ``ROOM_MARGIN``).

    Returns:
        the folder the earlier checkpoints were moved to, or None.

    Raises:
        OutputFolderError: naming the folder and the flag that resolves it.
    """
    created = not os.path.isdir(folder)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as error:
        raise OutputFolderError(f"{folder}: cannot create the output folder ({error.strerror}); "
                                f"choose another --output_dir") from None
    try:
        return _prepare(folder, name, resume, overwrite, checkpoint_bytes)
    except OutputFolderError:
        if created and not os.listdir(folder):
            os.rmdir(folder)
        raise


def _prepare(folder, name, resume, overwrite, checkpoint_bytes):
    best = best_checkpoint_path(folder, name)
    earlier = list_checkpoints(folder, name) + ([best] if os.path.isfile(best) else [])
    moved_to = None
    if not resume:
        if earlier and not overwrite:
            raise OutputFolderError(
                f"{folder}: holds {len(earlier)} checkpoint(s) of {name} from an earlier run "
                f"(newest {os.path.basename(earlier[-1])}); continue it with --resume auto, "
                f"start a new run there with --overwrite (they are moved to "
                f"{folder}/previous-<time>), or choose another --output_dir")
        records = [path for pattern in RECORD_PATTERNS
                   for path in glob.glob(os.path.join(folder, pattern))]
        if earlier or records:
            moved_to = _move_aside(folder, earlier + records)
    _remove_stale_temporaries(folder)
    _check_room(folder, checkpoint_bytes)
    return moved_to


def _move_aside(folder, paths):
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    target = os.path.join(folder, f"previous-{stamp}")
    os.makedirs(target, exist_ok=True)
    for path in paths:
        os.replace(path, os.path.join(target, os.path.basename(path)))
    return target


def _remove_stale_temporaries(folder):
    """Temporary files of saves that never finished (the process was killed, the disk was
    full): ours (``TEMP_PREFIX``) and MindSpore's own next to them."""
    for path in glob.glob(os.path.join(folder, TEMP_PREFIX + "*")):
        os.remove(path)


def _check_room(folder, checkpoint_bytes):
    reason = cannot_write_reason(folder)
    if reason:
        raise OutputFolderError(f"{folder}: cannot write into the output folder ({reason}); "
                                f"choose another --output_dir")
    free = shutil.disk_usage(folder).free
    needed = int(checkpoint_bytes * ROOM_MARGIN)
    if free < needed:
        raise OutputFolderError(f"{folder}: {_megabytes(free)} free, a checkpoint needs "
                                f"{_megabytes(needed)}; free some space or choose another "
                                f"--output_dir")


def _megabytes(count):
    return f"{count / 2 ** 20:.1f} MB"
