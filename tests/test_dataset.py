"""Synthetic COCO -> MindRecord -> training pipeline: what comes out is what was annotated,
the targets are consistent with the matcher, and the pipeline is deterministic."""
import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

import mindspore.dataset as ds

from src.box.matching import match
from src.data.coco import load_coco
from src.config.schema import replace
from src.data.dataset import (RECORD_COLUMNS, TRAIN_COLUMNS, TrainSampleMaker,
                              create_train_dataset, epoch_schedule, target_shapes)
from src.data.mindrecord import shard_paths, write_mindrecord
from src.data.targets import MatchThresholds
from src.data.transforms import downsample_masks, normalize_image
from src.model.build import prior_boxes
from src.data.synthetic import generate_dataset
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    # Seed 0 puts a crowd annotation among the 6 training images.
    paths = generate_dataset(str(root / "synthetic"), num_train=6, num_val=2, image_size=96,
                             seed=0)
    for split in ("train", "val"):
        dataset = load_coco(paths[f"{split}_annotations"], paths[f"{split}_images"])
        write_mindrecord(dataset.images, str(root / "mindrecord"), split, num_shards=2,
                         categories=dataset.categories, log=lambda line: None)
    config = tiny_config(num_classes=7)
    return config, str(root / "mindrecord"), paths


def _rows(mindrecord_dir):
    """Each row's record columns and a stream position of 0 (epoch 0)."""
    dataset = ds.MindDataset(shard_paths(mindrecord_dir, "train"),
                             columns_list=list(RECORD_COLUMNS), shuffle=False)
    return [tuple(row[c] for c in RECORD_COLUMNS) + (np.int64(0),)
            for row in dataset.create_dict_iterator(output_numpy=True, num_epochs=1)]


def _maker(config, augmentation, seed=0):
    loss = config.loss
    return TrainSampleMaker(prior_boxes(config), config.max_size, target_shapes(config),
                            MatchThresholds(loss.positive_iou, loss.negative_iou, loss.crowd_iou),
                            seed=seed, samples_per_epoch=6, augmentation=augmentation)


def test_unaugmented_samples_give_back_the_annotations(converted):
    config, mindrecord_dir, paths = converted
    coco = COCO(paths["train_annotations"])
    size = config.max_size
    maker = _maker(config, augmentation="none")
    crowds_seen = 0
    for columns in _rows(mindrecord_dir):
        image, masks, boxes, labels, is_crowd, image_id, _ = maker.sample(*columns)
        info = coco.imgs[image_id]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
        # Crowds come last; labels are category ids in sorted order.
        anns = sorted(anns, key=lambda a: a["iscrowd"])
        category_ids = sorted(coco.getCatIds())
        assert len(anns) == len(labels)
        np.testing.assert_array_equal(labels, [category_ids.index(a["category_id"]) for a in anns])
        np.testing.assert_array_equal(is_crowd, [bool(a["iscrowd"]) for a in anns])
        crowds_seen += int(is_crowd.sum())
        expected_boxes = np.array([[x / info["width"], y / info["height"], (x + w) / info["width"],
                                    (y + h) / info["height"]] for x, y, w, h in
                                   (a["bbox"] for a in anns)], np.float32)
        np.testing.assert_allclose(boxes, expected_boxes, atol=1e-6)
        for mask, ann in zip(masks, anns):
            expected = cv2.resize(coco.annToMask(ann), (size, size), interpolation=cv2.INTER_LINEAR)
            assert (mask == expected).all(), "mask differs from annToMask after the same resize"
        original = cv2.imread(f"{paths['train_images']}/{info['file_name']}")
        resized = cv2.resize(original.astype(np.float32), (size, size),
                             interpolation=cv2.INTER_LINEAR)
        np.testing.assert_allclose(image, normalize_image(resized), atol=1e-5)
    assert crowds_seen > 0, "the fixture should contain a crowd annotation"


def test_targets_are_the_matcher_and_masks_of_the_sample(converted):
    config, mindrecord_dir, _ = converted
    maker = _maker(config, augmentation="ssd", seed=3)
    shapes = target_shapes(config)
    priors = prior_boxes(config)
    for columns in _rows(mindrecord_dir)[:3]:
        _, masks, boxes, labels, is_crowd, _, _ = maker.sample(*columns)
        (image, loc_t, conf_t, idx_t, gt_boxes, gt_labels, gt_masks, semantic_t,
         pos_idx, pos_valid) = maker(*columns)
        solid = ~is_crowd
        count = int(solid.sum())
        np.testing.assert_allclose(gt_boxes[:count], boxes[solid])
        assert not gt_boxes[count:].any()
        np.testing.assert_array_equal(gt_labels[:count], labels[solid])
        np.testing.assert_array_equal(gt_masks[:count],
                                      downsample_masks(masks[solid], shapes.mask_size) > 0.5)
        want_loc, want_conf, want_idx = match(boxes[solid], labels[solid], boxes[is_crowd], priors)
        np.testing.assert_array_equal(conf_t, want_conf)
        np.testing.assert_array_equal(idx_t, want_idx)
        np.testing.assert_allclose(loc_t, want_loc)
        positives = np.flatnonzero(conf_t > 0)
        assert int(pos_valid.sum()) == min(len(positives), shapes.masks_to_train)
        assert set(pos_idx[pos_valid > 0]) <= set(positives)
        small = downsample_masks(masks[solid], shapes.semantic_size) > 0.5
        for label in range(shapes.num_fg_classes):
            expected = small[labels[solid] == label].any(axis=0) if label in labels[solid] else 0
            np.testing.assert_array_equal(semantic_t[label], expected)
        assert semantic_t.shape == (6, shapes.semantic_size, shapes.semantic_size)
        assert image.shape == (3, config.max_size, config.max_size)


def test_positive_sampling_caps_at_masks_to_train(converted):
    config, mindrecord_dir, _ = converted
    from src.config.schema import replace
    small = replace(config, **{"loss.masks_to_train": 2})
    maker = _maker(small, augmentation="none")
    conf_t, pos_idx, pos_valid = None, None, None
    for columns in _rows(mindrecord_dir):
        outputs = maker(*columns)
        conf_t, pos_idx, pos_valid = outputs[2], outputs[8], outputs[9]
        if (conf_t > 0).sum() > 2:
            break
    assert (conf_t > 0).sum() > 2 and pos_idx.shape == (2,)
    assert pos_valid.tolist() == [1.0, 1.0] and (conf_t[pos_idx] > 0).all()
    assert len(set(pos_idx.tolist())) == 2


def test_pipeline_is_deterministic_and_batched(converted):
    config, mindrecord_dir, _ = converted
    priors = prior_boxes(config)

    def first_batch(workers, seed):
        dataset = create_train_dataset(
            replace(config, **{"data.num_parallel_workers": workers}), mindrecord_dir, 2,
            priors, seed=seed)
        return next(dataset.create_tuple_iterator(output_numpy=True, num_epochs=1))

    one, two, other = first_batch(1, 0), first_batch(2, 0), first_batch(1, 1)
    shapes = target_shapes(config)
    num_priors = len(priors)
    expected = {"images": (2, 3, 256, 256), "loc_t": (2, num_priors, 4), "conf_t": (2, num_priors),
                "idx_t": (2, num_priors), "gt_boxes": (2, shapes.max_num_gt, 4),
                "gt_labels": (2, shapes.max_num_gt),
                "gt_masks": (2, shapes.max_num_gt, shapes.mask_size, shapes.mask_size),
                "semantic_t": (2, 6, shapes.semantic_size, shapes.semantic_size),
                "pos_sample_idx": (2, shapes.masks_to_train),
                "pos_sample_valid": (2, shapes.masks_to_train)}
    for name, a, b in zip(TRAIN_COLUMNS, one, two):
        assert a.shape == expected[name], name
        np.testing.assert_array_equal(a, b, err_msg=f"{name} depends on the worker count")
    assert not np.array_equal(one[0], other[0]), "another seed should give other samples"
    # 6 images, batch 2: 3 iterations per epoch. Iterations 2-4 cross into epoch 1, and a
    # run resumed at iteration 2 must get exactly the batches of the uninterrupted one.
    config = replace(config, **{"data.num_parallel_workers": 1})
    straight = list(create_train_dataset(config, mindrecord_dir, 2, priors, seed=0,
                                         num_iterations=5)
                    .create_tuple_iterator(output_numpy=True, num_epochs=1))
    assert len(straight) == 5
    resumed = list(create_train_dataset(config, mindrecord_dir, 2, priors, seed=0,
                                        start_iteration=2, num_iterations=3)
                   .create_tuple_iterator(output_numpy=True, num_epochs=1))
    for want, got in zip(straight[2:], resumed):
        for a, b in zip(want, got):
            np.testing.assert_array_equal(a, b)
    assert not np.array_equal(straight[0][0], straight[3][0]), "epoch 1 should differ"


def test_epoch_schedule_covers_each_image_once_per_epoch_and_splits_ranks():
    rows, per_epoch = epoch_schedule(11, batch_size=2, seed=4)
    assert per_epoch == 10
    for epoch in range(3):
        assert len(set(rows(epoch))) == 10 and set(rows(epoch)) <= set(range(11))
    assert not np.array_equal(rows(0), rows(1))
    rank0, per_rank = epoch_schedule(11, batch_size=2, seed=4, rank=0, group_size=2)
    rank1, _ = epoch_schedule(11, batch_size=2, seed=4, rank=1, group_size=2)
    assert per_rank == 4
    assert not set(rank0(0)) & set(rank1(0))
