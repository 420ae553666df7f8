"""Validation while training: box and mask AP of the weights being trained, on the val split
of the training run's MindRecord folder, with the same detector and COCOeval code as eval.py.

The ground truth is what the split stores (``create_mindrecord.py`` kept: boxes, classes, crowd
flags and RLE masks), so no annotation file is needed during training. Its AP, AP50 and AP75
equal eval.py's with the annotation file the split was converted from when the converter kept
every object; the area split (APs/APm/APl) uses the mask area, as COCO's own ``area`` field.
"""
import contextlib
import io
import time

import mindspore.dataset as ds
from mindspore import Tensor
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from src.data.coco import CategoryMap, DatasetError
from src.data.mindrecord import decode_row, read_dataset_info, shard_paths
from src.evaluation.coco_eval import format_results_table
from src.evaluation.evaluate import (CocoEvaluation, check_split_categories, evaluated_image_ids,
                                     read_split_images, run_coco_evaluation)
from src.inference.detector import BatchDetector
from src.inference.net import build_inference_net
from src.model.build import build_model

SPLIT = "val"


def split_ground_truth(mindrecord_dir, split=SPLIT):
    """pycocotools ``COCO`` of the objects stored in a MindRecord split, and its label ->
    category id map.

    Every row becomes an image (its id, file name and size); every object an annotation with
    its compressed RLE mask, its box as COCO's [x, y, width, height] pixels, its crowd flag and
    the mask's area.

    Raises:
        DatasetError: the split is missing or incomplete (``read_dataset_info``).
    """
    categories = CategoryMap.from_dict(read_dataset_info(mindrecord_dir, split))
    images, annotations = [], []
    reader = ds.MindDataset(shard_paths(mindrecord_dir, split), shuffle=False)
    for raw in reader.create_dict_iterator(output_numpy=True, num_epochs=1):
        row = decode_row(raw)
        images.append({"id": row.image_id, "file_name": row.file_name, "height": row.height,
                       "width": row.width})
        for box, label, crowd, counts in zip(row.boxes_abs, row.labels, row.is_crowd,
                                             row.mask_rles):
            rle = {"size": [row.height, row.width], "counts": counts}
            x1, y1, x2, y2 = (float(value) for value in box)
            annotations.append({
                "id": len(annotations) + 1, "image_id": row.image_id,
                "category_id": categories.category_ids[int(label)], "iscrowd": int(crowd),
                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": float(mask_utils.area(rle)),
                "segmentation": rle})
    coco_gt = COCO()
    coco_gt.dataset = {"images": images, "annotations": annotations, "categories": [
        {"id": category_id, "name": name}
        for category_id, name in zip(categories.category_ids, categories.class_names)]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt.createIndex()
    return coco_gt, tuple(categories.category_ids)


class _ModelDetector(BatchDetector):
    """A detector over a model built here, whose weights the validator copies in."""

    def __init__(self, config, device_target):
        self.config = config
        self.batch_size = config.eval.batch_size
        self.model = build_model(config, device_target)
        self.model.set_train(False)
        self.net = build_inference_net(config, self.model)

    def run_network(self, batch):
        return tuple(output.asnumpy() for output in self.net(Tensor(batch)))


class TrainingValidator:
    """Evaluates a training run's weights on split ``val`` of its MindRecord folder.

    Everything is checked when it is made, before training compiles: the split exists, holds
    annotated images, and has the config's classes. The inference model is built at the first
    evaluation, from the config alone, and receives a copy of the weights each time: the
    training model, its optimizer and the random state are never touched.

    Args:
        config: the run's ``YolactConfig``.
        mindrecord_dir: the run's ``run.mindrecord_dir``.
        max_images: evaluate the first N annotated images (by id); 0: all.
        device_target: where the inference graph runs (the training device).

    Raises:
        DatasetError: naming the folder and what is missing or different.
    """

    def __init__(self, config, mindrecord_dir, max_images, device_target):
        self.config, self.mindrecord_dir, self.device_target = config, mindrecord_dir, device_target
        where = f"{mindrecord_dir} (split '{SPLIT}', for run.eval_every)"
        try:
            self.coco_gt, self.category_ids = split_ground_truth(mindrecord_dir)
        except DatasetError as error:
            raise DatasetError(f"{error}; validation while training needs a val split: run "
                               f"create_mindrecord.py --split val, or set --eval_every 0") from None
        check_split_categories(where, self.coco_gt, config.data.class_names, mindrecord_dir, SPLIT)
        self.image_ids = tuple(evaluated_image_ids(self.coco_gt, max_images))
        if not self.image_ids:
            raise DatasetError(f"{where}: no image with objects to evaluate on")
        self.detector = None

    def evaluate(self, state):
        """Box and mask AP of the weights in ``state`` ((name, Parameter) pairs holding every
        model parameter under the model's names, e.g. ``TrainingSetup.state()``, whose model
        names hold the weight average when there is one).

        Returns:
            ({"bbox": {AP, ...}, "segm": {...}} as fractions, the AP table as text, seconds).
        """
        start = time.time()
        if self.detector is None:
            self.detector = _ModelDetector(self.config, self.device_target)
        weights = dict(state)
        for name, param in self.detector.model.parameters_and_names():
            param.set_data(Tensor(weights[name].asnumpy()))
        evaluation = CocoEvaluation(
            self.coco_gt, self.category_ids, self.image_ids,
            read_split_images(self.mindrecord_dir, SPLIT, set(self.image_ids)), "")
        # COCOeval prints its summaries; the run's log gets the compact table.
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            metrics = run_coco_evaluation(self.detector, evaluation)
        return metrics, format_results_table(metrics), time.time() - start


def mask_ap(metrics):
    """The number the best checkpoint is chosen by: COCO mask AP (IoU .50:.95)."""
    return float(metrics["segm"]["AP"])

