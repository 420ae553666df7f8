"""MindRecord layout of a converted COCO-format split: the row schema shared by writer and reader.

On disk, ``<output_dir>/<split>/`` holds N shards named as MindSpore's ``FileWriter`` names
them (``shard_file_names``), each with its ``.db`` index file, and ``dataset_info.json`` (class
names, the label -> category id map, counts, the byte size of every file). Eval uses it to map
labels back; every reader goes through ``read_dataset_info``, which checks that the files are
all there and whole before MindSpore opens them.

One row per image. Masks are stored as compressed COCO RLE strings (pycocotools ``counts``),
concatenated in ``mask_rles`` and split by ``mask_rle_lengths``: it decodes to exactly
``COCO.annToMask``, needs no polygon rasterisation per epoch, and is the smaller option for the
small and medium objects that dominate COCO (random polygons of 8-64 px: 24-357 bytes of RLE
against 236-652 bytes of polygon JSON; about equal at 128 px). MindRecord reads an empty array
back as a garbage scalar, so per-object arrays hold max(G, 1) rows and ``num_objects`` gives G.

Images: the file's bytes, decoded by ``decode_image``. The writer decodes every file in full
(in threads, ahead of the writing), so an empty, truncated or undecodable image stops the
conversion, not a training run. Without an EXIF orientation tag the annotations' width/height
must equal the file's. With one, annotation tools disagree (older
tools and browsers show the stored pixels, newer ones the rotated view), so the writer picks the
reading whose size matches the annotation file: rotated (OpenCV's default, as the authors'
``cv2.imread``) if it matches, else the stored pixels, flagged ``ignore_exif_orientation``.
"""
import io
import itertools
import json
import os
import re
import secrets
import shutil
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from typing import Tuple

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError
from mindspore.mindrecord import FileWriter
from pycocotools import mask as mask_utils

from src.data.coco import DatasetError

SCHEMA_NAME = "yolact_coco_instances"
SCHEMA_VERSION = 1
INFO_FILE = "dataset_info.json"
MAX_SHARDS = 1000            # MindRecord's limit
ROWS_PER_WRITE = 64
# Images decoded ahead of the writer: enough to keep the threads busy while it writes a batch of
# rows, few enough to bound the memory they hold.
IMAGES_AHEAD = 2 * ROWS_PER_WRITE
IMAGE_FORMATS = "JPEG, PNG, BMP, TIFF or WebP"
CONVERT_AGAIN = "convert the split again with create_mindrecord.py --overwrite"


def mindrecord_schema():
    """Field -> MindRecord type; G = objects in the image (crowds last)."""
    return {
        "image": {"type": "bytes"},                         # the original file's bytes
        "file_name": {"type": "string"},
        "image_id": {"type": "int64"},
        "height": {"type": "int32"},                        # original size, as decode_image gives it
        "width": {"type": "int32"},
        "ignore_exif_orientation": {"type": "int32"},       # 1: decode the stored pixels unrotated
        "num_objects": {"type": "int32"},                   # G
        "boxes_abs": {"type": "float32", "shape": [-1, 4]},  # [max(G,1), 4] (x1, y1, x2, y2) pixels
        "labels": {"type": "int32", "shape": [-1]},          # [max(G,1)] 0-based foreground class
        "is_crowd": {"type": "int32", "shape": [-1]},        # [max(G,1)] 1 = crowd
        "mask_rle_lengths": {"type": "int32", "shape": [-1]},  # [max(G,1)] bytes of each RLE
        "mask_rles": {"type": "bytes"},                     # concatenated compressed RLE strings
    }


def record_to_row(record, image_bytes, ignore_exif_orientation=False):
    """MindRecord row (dict matching ``mindrecord_schema``) of a ``coco.ImageRecord``."""
    count = len(record.labels)
    slots = max(count, 1)

    def padded(values, shape, dtype):
        array = np.zeros(shape, dtype)
        array[:count] = values
        return array

    return {
        "image": image_bytes,
        "file_name": record.file_name,
        "image_id": int(record.image_id),
        "height": int(record.height),
        "width": int(record.width),
        "ignore_exif_orientation": int(ignore_exif_orientation),
        "num_objects": count,
        "boxes_abs": padded(record.boxes_abs, (slots, 4), np.float32),
        "labels": padded(record.labels, (slots,), np.int32),
        "is_crowd": padded(record.is_crowd, (slots,), np.int32),
        "mask_rle_lengths": padded([len(rle) for rle in record.mask_rles], (slots,), np.int32),
        "mask_rles": b"".join(record.mask_rles),
    }


@dataclass(frozen=True, eq=False)
class DecodedRow:
    """A row read back; boxes_abs [G, 4] float32 (x1, y1, x2, y2) pixels, labels [G] int32,
    is_crowd [G] bool, mask_rles G compressed RLE strings of size (height, width)."""
    image_id: int
    file_name: str
    height: int
    width: int
    image_bytes: bytes
    ignore_exif_orientation: bool
    boxes_abs: np.ndarray
    labels: np.ndarray
    is_crowd: np.ndarray
    mask_rles: Tuple[bytes, ...]


def field_bytes(value):
    """The bytes of a MindRecord ``bytes`` field as MindDataset yields it (bytes, or a [1] numpy
    ``S`` / uint8 array; ``tobytes`` keeps trailing NULs that indexing an ``S`` array drops)."""
    return value if isinstance(value, bytes) else np.asarray(value).tobytes()


def decode_row(row):
    """``DecodedRow`` of a row dict as ``MindDataset.create_dict_iterator(output_numpy=True)`` gives it."""
    count = int(row["num_objects"])
    lengths = np.asarray(row["mask_rle_lengths"]).reshape(-1)[:count]
    blob = field_bytes(row["mask_rles"])
    ends = np.cumsum(lengths)
    file_name = row["file_name"]
    return DecodedRow(
        image_id=int(row["image_id"]),
        file_name=file_name if isinstance(file_name, str) else str(np.asarray(file_name).item()),
        height=int(row["height"]), width=int(row["width"]),
        image_bytes=field_bytes(row["image"]),
        ignore_exif_orientation=bool(row["ignore_exif_orientation"]),
        boxes_abs=np.asarray(row["boxes_abs"], np.float32).reshape(-1, 4)[:count],
        labels=np.asarray(row["labels"], np.int32).reshape(-1)[:count],
        is_crowd=np.asarray(row["is_crowd"]).reshape(-1)[:count].astype(bool),
        mask_rles=tuple(blob[end - length:end] for end, length in zip(ends, lengths)))


def decode_image(image_bytes, ignore_exif_orientation):
    """[height, width, 3] uint8 BGR image of a row, in the pixel grid of its annotations."""
    flags = cv2.IMREAD_COLOR | (cv2.IMREAD_IGNORE_ORIENTATION if ignore_exif_orientation else 0)
    return cv2.imdecode(np.frombuffer(image_bytes, np.uint8), flags)


def decode_masks(mask_rles, height, width):
    """[G, height, width] uint8 0/1 masks of G compressed RLE strings (G may be 0)."""
    if not mask_rles:
        return np.zeros((0, height, width), np.uint8)
    rles = [{"size": [height, width], "counts": rle} for rle in mask_rles]
    return np.ascontiguousarray(mask_utils.decode(rles).transpose(2, 0, 1))


def split_dir(output_dir, split):
    return os.path.join(output_dir, split)


def shard_file_names(stem, num_shards):
    """The names ``FileWriter(stem, shard_num=num_shards)`` gives its shards: ``stem`` alone for
    one shard, else ``stem`` and the shard index zero-padded to the digits of ``num_shards - 1``
    (``0..9`` for 10 shards, ``00..10`` for 11)."""
    if num_shards == 1:
        return [stem]
    digits = len(str(num_shards - 1))
    return [f"{stem}{index:0{digits}d}" for index in range(num_shards)]


def _split_files(shard_files):
    """The files a split's shards are made of: each shard, then its ``.db`` index."""
    return [name for shard in shard_files for name in (shard, shard + ".db")]


def read_dataset_info(output_dir, split):
    """The ``dataset_info.json`` dict of a converted split (see ``write_mindrecord``), once every
    shard it lists and each shard's ``.db`` index are found with the byte size recorded when
    they were written. A split written before sizes were recorded is checked for presence only.

    Raises:
        DatasetError: naming the info file, or the first file that is missing or truncated.
    """
    folder = split_dir(output_dir, split)
    path = os.path.join(folder, INFO_FILE)
    try:
        with open(path, encoding="utf-8") as handle:
            info = json.load(handle)
    except OSError as error:
        raise DatasetError(f"{path}: cannot read dataset info ({error.strerror}); "
                           f"run create_mindrecord.py for split '{split}'") from None
    except json.JSONDecodeError as error:
        raise DatasetError(f"{path}: malformed JSON at line {error.lineno} column {error.colno}") from None
    if not isinstance(info, dict) or not isinstance(info.get("shard_files"), list):
        raise DatasetError(f"{path}: no 'shard_files' list; expected the dataset info "
                           f"create_mindrecord.py writes")
    _check_files(folder, _split_files(info["shard_files"]), info.get("file_sizes", {}))
    return info


def _check_files(folder, names, sizes):
    """DatasetError naming the first of ``names`` (in ``folder``) that is missing or whose byte
    size differs from ``sizes[name]`` (names without a recorded size pass when present)."""
    for name in names:
        path = os.path.join(folder, name)
        try:
            size = os.path.getsize(path)
        except OSError as error:
            raise DatasetError(f"{path}: MindRecord file missing or unreadable ({error.strerror}); "
                               f"{CONVERT_AGAIN}") from None
        if sizes.get(name, size) != size:
            raise DatasetError(f"{path}: {size} bytes, but {sizes[name]} were written (truncated "
                               f"or changed since); {CONVERT_AGAIN}")


def shard_paths(output_dir, split):
    """Paths of all shards of a converted split, for ``mindspore.dataset.MindDataset``; checked
    as ``read_dataset_info`` checks them."""
    info = read_dataset_info(output_dir, split)
    return [os.path.join(split_dir(output_dir, split), name) for name in info["shard_files"]]


def check_output_available(output_dir, split, overwrite):
    """Raise DatasetError when the split's output exists and ``overwrite`` is False."""
    target = split_dir(output_dir, split)
    if os.path.lexists(target) and not overwrite:
        raise DatasetError(f"{target}: output already exists; pass --overwrite (overwrite=True) "
                           f"to replace it")


def write_mindrecord(records, output_dir, split, num_shards=8, overwrite=False, *, categories,
                     source=None, log=None, log_every=1000, log_seconds=30.0):
    """Write ``coco.ImageRecord``s as ``num_shards`` MindRecord shards in ``<output_dir>/<split>/``.

    Every image is decoded in full as it is written (``read_checked_image``): a bad one stops
    the conversion. Everything is written to a hidden temporary folder in ``output_dir`` that is renamed into place only after the last
    shard and the info file are complete; on any error or KeyboardInterrupt the folder is
    removed, so no partial output is ever left. Folders get the umask's permissions. Progress is
    logged every ``log_every`` images or ``log_seconds`` seconds. ``source`` (a JSON-able dict)
    is saved in the info file. Returns the split folder.
    """
    log = log or (lambda line: print(line, flush=True))
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", split):
        raise DatasetError(f"split '{split}': expected a name of letters, digits, '_', '-' or '.'")
    if not 1 <= num_shards <= MAX_SHARDS:
        raise DatasetError(f"num_shards: expected 1..{MAX_SHARDS}, got {num_shards}")
    if len(records) == 0:
        raise DatasetError(f"split '{split}': no images to write")
    check_output_available(output_dir, split, overwrite)
    try:
        os.makedirs(output_dir, exist_ok=True)
        temp = _new_folder(output_dir, f".{split}.partial-")
    except OSError as error:
        raise DatasetError(f"{output_dir}: output directory cannot be created or written "
                           f"({error.strerror})") from None
    try:
        shard_files = _write_shards(records, temp, split, num_shards, _Progress(
            len(records), split, log, log_every, log_seconds))
        info = {"schema": SCHEMA_NAME, "schema_version": SCHEMA_VERSION, "split": split,
                "num_images": len(records), "shard_files": shard_files,
                "file_sizes": {name: os.path.getsize(os.path.join(temp, name))
                               for name in _split_files(shard_files)},
                "mask_encoding": "compressed COCO RLE (pycocotools counts), concatenated",
                **categories.to_dict(), "source": source or {}}
        with open(os.path.join(temp, INFO_FILE), "w", encoding="utf-8") as handle:
            json.dump(info, handle, indent=1)
        _move_into_place(temp, output_dir, split, overwrite)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return split_dir(output_dir, split)


def _new_folder(parent, prefix):
    """A new empty folder ``<parent>/<prefix><random hex>`` with the umask's permissions
    (``tempfile.mkdtemp`` makes 0700, which a split folder renamed from it would keep)."""
    path = os.path.join(parent, prefix + secrets.token_hex(8))
    os.mkdir(path)
    return path


def _write_shards(records, folder, split, num_shards, progress):
    """The rows of ``records`` as ``num_shards`` shards in ``folder``; returns their file names."""
    stem = f"{split}.mindrecord"
    writer = FileWriter(os.path.join(folder, stem), shard_num=num_shards)
    writer.add_schema(mindrecord_schema(), SCHEMA_NAME)
    rows = []
    with closing(_map_ahead(read_checked_image, records, IMAGES_AHEAD)) as checked:
        for done, (record, (image_bytes, ignore_orientation)) in enumerate(checked, start=1):
            rows.append(record_to_row(record, image_bytes, ignore_orientation))
            if len(rows) == ROWS_PER_WRITE:
                writer.write_raw_data(rows)
                rows = []
            progress.step(done)
    if rows:
        writer.write_raw_data(rows)
    writer.commit()
    return shard_file_names(stem, num_shards)


def _map_ahead(function, items, ahead):
    """Yield ``(item, function(item))`` in the order of ``items``, computed by a thread pool up to
    ``ahead`` items before they are consumed (OpenCV and file reads release the GIL). A call's
    exception is raised at its item; closing the generator cancels the calls not started."""
    pool = ThreadPoolExecutor()
    remaining = iter(items)
    try:
        pending = deque((item, pool.submit(function, item))
                        for item in itertools.islice(remaining, ahead))
        while pending:
            for item in itertools.islice(remaining, 1):
                pending.append((item, pool.submit(function, item)))
            item, future = pending.popleft()
            yield item, future.result()
    finally:
        pool.shutdown(cancel_futures=True)


def read_checked_image(record):
    """(file bytes, ignore_exif_orientation) of a record's image, decoded in full by
    ``decode_image`` to the record's width and height: rotated by its EXIF orientation
    (OpenCV's default) if that has the size, else as stored (the same without an EXIF tag).

    Raises:
        DatasetError: naming the file when it cannot be read, is empty, does not decode
            (truncated, corrupt, not an image) or has another size.
    """
    try:
        with open(record.path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise DatasetError(f"{record.path}: cannot read image file ({error.strerror})") from None
    if not data:
        raise DatasetError(f"{record.path}: image file is empty (0 bytes); expected a "
                           f"{IMAGE_FORMATS} file")
    expected = (record.width, record.height)
    sizes = []
    for ignore_orientation in (False, True):
        try:
            image = decode_image(data, ignore_orientation)
        except cv2.error as error:        # e.g. more pixels than OpenCV's limit
            raise DatasetError(f"{record.path}: OpenCV refuses to decode the image "
                               f"({error.err})") from None
        if image is None:
            raise DatasetError(f"{record.path}: {_undecodable_reason(data)}")
        size = (image.shape[1], image.shape[0])
        if size == expected:
            return data, ignore_orientation
        sizes.append(size)
    found = " or ".join(f"width {w}, height {h}" for w, h in dict.fromkeys(sizes))
    raise DatasetError(f"{record.path}: image is {found} as OpenCV loads it, but the annotation "
                       f"file gives 'width' {record.width}, 'height' {record.height}")


def _undecodable_reason(data):
    """Why OpenCV does not decode the (non-empty) file bytes ``data``, from Pillow's reading."""
    kind = "image"
    try:
        with Image.open(io.BytesIO(data)) as image:
            kind = f"{image.format} image"
            image.load()
    except UnidentifiedImageError:
        return f"not a decodable image file; expected a {IMAGE_FORMATS} file"
    except Exception:       # Pillow's decoders raise OSError, SyntaxError, ValueError... on bad data
        return f"{kind} file is truncated or corrupt: its data does not decode; expected a complete file"
    return f"{kind} that OpenCV cannot decode; expected a {IMAGE_FORMATS} file"


def _move_into_place(temp, output_dir, split, overwrite):
    """Rename ``temp`` to the split folder, swapping out an existing split (``overwrite``).

    The rename is the commit point: an interruption before it puts the old split back; after
    it, the output is complete, so the old split's removal is finished and the interruption
    dropped (nothing else is left to stop).
    """
    check_output_available(output_dir, split, overwrite)
    target = split_dir(output_dir, split)
    if not os.path.lexists(target):
        os.rename(temp, target)
        return
    replaced = _new_folder(output_dir, f".{split}.replaced-")
    old = os.path.join(replaced, "old")
    try:
        os.rename(target, old)
        os.rename(temp, target)
    except BaseException:
        if not os.path.lexists(target):
            os.rename(old, target)
        shutil.rmtree(replaced, ignore_errors=True)
        raise
    try:
        shutil.rmtree(replaced, ignore_errors=True)
    except KeyboardInterrupt:       # the split is complete: only this removal was cut short
        shutil.rmtree(replaced, ignore_errors=True)


class _Progress:
    """Logs count, rate and ETA every ``every`` images or ``seconds`` seconds, and at the end."""

    def __init__(self, total, split, log, every, seconds):
        self.total, self.split, self.log = total, split, log
        self.every, self.seconds = every, seconds
        self.start = self.last_time = time.monotonic()
        self.last_done = 0

    def step(self, done):
        now = time.monotonic()
        if done < self.total and done - self.last_done < self.every and now - self.last_time < self.seconds:
            return
        self.last_done, self.last_time = done, now
        elapsed = now - self.start
        rate = done / elapsed if elapsed > 0 else float("inf")
        eta = (self.total - done) / rate if rate > 0 else 0.0
        self.log(f"[{self.split}] {done}/{self.total} images ({100.0 * done / self.total:.1f}%), "
                 f"{rate:.1f} img/s, elapsed {_clock(elapsed)}, ETA {_clock(eta)}")


def _clock(seconds):
    seconds = int(round(seconds)) if seconds != float("inf") else 0
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
