"""MindSpore data pipelines over the MindRecord shards of ``create_mindrecord.py``.

Training: read -> decode -> augment (``transforms.train_transform``) -> targets
(``targets.build_targets``: padded GT, prototype-size masks, semantic target, prior matching,
sampled positives) -> fixed-shape batches. (Evaluation reads images in
``src.evaluation.evaluate``.)

The order of the samples is ours, not the reader's: epoch ``e`` visits the images in the
permutation ``default_rng([seed, e])``, split between the data-parallel ranks, and the
reader follows that list (``SubsetSampler``). Every random draw of a sample comes from
``default_rng([seed, epoch, image_id])``. So a sample does not depend on which worker made it
or on what ran before: a run is reproducible, and resuming at an iteration replays exactly
the batches of the original run, without reading the skipped ones.
"""
import numpy as np
import mindspore.dataset as ds

from src.box.priors import feature_map_sizes, prototype_size
from src.data.coco import DatasetError
from src.data.mindrecord import (decode_image, decode_masks, decode_row, mindrecord_schema,
                                  read_dataset_info, shard_paths)
from src.data.targets import MatchThresholds, TargetShapes, build_targets
from src.data.transforms import normalize_image, resize_sample, train_transform

RECORD_COLUMNS = tuple(mindrecord_schema())
TRAIN_COLUMNS = ("images", "loc_t", "conf_t", "idx_t", "gt_boxes", "gt_labels", "gt_masks",
                 "semantic_t", "pos_sample_idx", "pos_sample_valid")

# Augmentation draws before falling back to a plain resize, when every non-crowd box of an
# image is lost (the authors draw another image instead; a map cannot, so we redraw).
_AUGMENT_ATTEMPTS = 10


def read_image(image_bytes, ignore_exif_orientation, file_name):
    """BGR uint8 image of a row, or a DatasetError naming the file."""
    image = decode_image(image_bytes, ignore_exif_orientation)
    if image is None:
        raise DatasetError(f"{file_name}: image bytes in the MindRecord cannot be decoded")
    return image


class TrainSampleMaker:
    """``MindDataset`` row -> the fixed-shape arrays of ``TRAIN_COLUMNS`` (a picklable callable
    for ``dataset.map``).

    Args:
        priors: [P, 4] float32 (cx, cy, w, h) of the config.
        max_size: S, the network input size.
        shapes: ``TargetShapes``. thresholds: ``MatchThresholds``.
        seed: with the epoch and the image id, it fixes every random draw of a sample.
        samples_per_epoch: rows of the stream per epoch (its ``position`` column / this = epoch).
        augmentation: "ssd" (the authors'), "light" (photometric + mirror) or "none" (the
            plain resize).
    """

    def __init__(self, priors, max_size, shapes, thresholds, seed, samples_per_epoch,
                 augmentation="ssd"):
        self.priors = priors
        self.max_size = max_size
        self.shapes = shapes
        self.thresholds = thresholds
        self.seed = seed
        self.samples_per_epoch = samples_per_epoch
        self.augmentation = augmentation

    def __call__(self, *columns):
        image, masks, boxes, labels, is_crowd, image_id, rng = self.sample(*columns)
        targets = build_targets(masks, boxes, labels, is_crowd, self.priors, self.shapes,
                                self.thresholds, rng, image_id=image_id)
        return (image,) + targets

    def sample(self, *columns):
        """The augmented (or plainly resized) sample of a row, before targets.

        Args:
            columns: the row's ``RECORD_COLUMNS`` and its stream ``position``.

        Returns:
            image [3, S, S] float32 normalised RGB, masks [G, S, S] uint8, boxes [G, 4]
            float32 (x1, y1, x2, y2) relative, labels [G], is_crowd [G] bool, the image id,
            and the sample's random generator (for the draws that follow).
        """
        row = decode_row(dict(zip(RECORD_COLUMNS, columns[:-1])))
        epoch = int(columns[-1]) // self.samples_per_epoch
        rng = np.random.default_rng([self.seed, epoch, row.image_id])
        image = read_image(row.image_bytes, row.ignore_exif_orientation, row.file_name)
        masks = decode_masks(row.mask_rles, row.height, row.width)
        if self.augmentation != "none" and not row.is_crowd.all():
            for _ in range(_AUGMENT_ATTEMPTS):
                augmented = train_transform(image, masks, row.boxes_abs, row.labels,
                                            row.is_crowd, self.max_size, rng,
                                            augmentation=self.augmentation)
                if augmented is not None:
                    return tuple(augmented) + (row.image_id, rng)
        resized, masks, boxes_abs, labels, is_crowd = resize_sample(
            image.astype(np.float32), masks, row.boxes_abs, row.labels, row.is_crowd,
            self.max_size)
        return (normalize_image(resized), masks, boxes_abs / np.float32(self.max_size), labels,
                is_crowd, row.image_id, rng)


def target_shapes(config):
    """``TargetShapes`` of a config (prototype and P3 grid sizes derived from max_size)."""
    return TargetShapes(max_num_gt=config.data.max_num_gt,
                        mask_size=prototype_size(config.max_size),
                        semantic_size=feature_map_sizes(config.max_size)[0],
                        num_fg_classes=config.num_fg_classes,
                        masks_to_train=config.loss.masks_to_train)


def epoch_schedule(num_images, batch_size, seed, rank=0, group_size=1):
    """Images of each epoch for one rank: a function ``epoch -> [E] row indices``, and E.

    Epoch ``e`` permutes all images with ``default_rng([seed, e])``; rank r takes every
    group_size-th of them from position r, cut to whole batches (the last partial batch is
    dropped, as the authors' loader does).
    """
    per_rank = num_images // group_size
    samples_per_epoch = per_rank // batch_size * batch_size

    def rows(epoch):
        order = np.random.default_rng([seed, epoch]).permutation(num_images)
        return order[rank::group_size][:samples_per_epoch]

    return rows, samples_per_epoch


class _StreamPosition:
    """Numbers the rows in stream order (run by a single in-order worker)."""

    def __init__(self, start):
        self.next_position = start

    def __call__(self, image_id):
        position = self.next_position
        self.next_position += 1
        return image_id, np.int64(position)


def create_train_dataset(config, mindrecord_dir, batch_size, priors, seed=0, start_iteration=0,
                         num_iterations=None, rank=0, group_size=1):
    """Batches of ``TRAIN_COLUMNS`` for iterations ``[start_iteration, start_iteration +
    num_iterations)`` of this device (across epochs; keep it to tens of epochs per pipeline,
    each epoch is one reader).

    Args:
        config: ``YolactConfig``; ``data.augmentation`` and ``data.num_parallel_workers``
            (map workers, processes when > 1) come from it.
        mindrecord_dir: ``--output_dir`` of create_mindrecord.py (with a ``train`` split).
        batch_size: images per batch on this device.
        priors: [P, 4] prior boxes of the config.
        seed: sample order and augmentation draws.
        start_iteration: iterations already trained (resume).
        num_iterations: batches to produce; default one epoch.
        rank, group_size: data-parallel shard of this device.

    Raises:
        DatasetError: the split has fewer images than one batch per device.
    """
    files = shard_paths(mindrecord_dir, "train")
    num_images = read_dataset_info(mindrecord_dir, "train")["num_images"]
    rows, samples_per_epoch = epoch_schedule(num_images, batch_size, seed, rank, group_size)
    if samples_per_epoch == 0:
        raise DatasetError(f"{mindrecord_dir}: {num_images} training images are fewer than one "
                           f"batch of {batch_size} on each of {group_size} devices")
    num_iterations = num_iterations or samples_per_epoch // batch_size
    first, last = start_iteration * batch_size, (start_iteration + num_iterations) * batch_size
    # One reader per epoch (a SubsetSampler may not list more rows than the file has),
    # concatenated into one stream.
    dataset = None
    for epoch in range(first // samples_per_epoch, (last - 1) // samples_per_epoch + 1):
        begin = max(first - epoch * samples_per_epoch, 0)
        end = min(last - epoch * samples_per_epoch, samples_per_epoch)
        reader = ds.MindDataset(files, columns_list=list(RECORD_COLUMNS),
                                sampler=ds.SubsetSampler(rows(epoch)[begin:end].tolist()),
                                num_parallel_workers=1)
        dataset = reader if dataset is None else dataset + reader
    dataset = dataset.map(operations=_StreamPosition(first), input_columns=["image_id"],
                          output_columns=["image_id", "position"], num_parallel_workers=1,
                          python_multiprocessing=False)
    loss = config.loss
    maker = TrainSampleMaker(priors, config.max_size, target_shapes(config),
                             MatchThresholds(loss.positive_iou, loss.negative_iou, loss.crowd_iou),
                             seed, samples_per_epoch, config.data.augmentation)
    workers = config.data.num_parallel_workers
    dataset = dataset.map(operations=maker, input_columns=list(RECORD_COLUMNS) + ["position"],
                          output_columns=list(TRAIN_COLUMNS), num_parallel_workers=workers,
                          python_multiprocessing=workers > 1)
    return dataset.batch(batch_size, drop_remainder=True)
