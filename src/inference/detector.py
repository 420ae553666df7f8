"""The ``Detector`` API: images in, detections in original pixels out.

``BatchDetector`` is the host side shared by the checkpoint ``Detector`` and the MINDIR
``ExportedDetector`` (``src.inference.exported``): preprocessing, fixed-size batches around
the ``InferenceNet`` graph (``src.inference.net``), and the host-side end: masks resized to
the original image and binarised, boxes turned into integer pixels.
"""
import contextlib

import numpy as np
from mindspore import Tensor

from src.checkpoint import load_weights
from src.config.load import load_config
from src.data.transforms import eval_transform
from src.inference.net import build_inference_net
from src.model.build import build_model
from src.postprocess.masks import boxes_to_image, mask_windows
from src.runtime import init_context


def detections_to_image(outputs, index, height, width, mask_threshold=0.5, timer=None):
    """One image's slice of ``InferenceNet`` outputs (numpy) -> its detections in pixels.

    The masks stay as windows (``MaskWindows``): the COCO evaluation encodes them as RLE
    from there, and ``with_dense_masks`` gives the ``Detector`` result.

    Args:
        outputs: tuple of numpy arrays as ``InferenceNet`` returns them.
        index: the image's position in the batch.
        height, width: its original size in pixels.
        timer: optional ``timer(stage)`` context manager timing the stages "boxes" and
            "masks to image" (``src.evaluation.pipeline.StageTimes``).

    Returns:
        dict of ``boxes [N,4] int64`` (original pixels), ``classes [N]``, ``box_scores [N]``,
        ``mask_scores [N]``, ``masks`` (``MaskWindows`` of N masks), sorted by box score.
    """
    timer = timer or (lambda stage: contextlib.nullcontext())
    with timer("boxes"):
        boxes, classes, box_scores, mask_scores, masks, valid = (o[index] for o in outputs)
        keep = np.flatnonzero(valid)
        detections = {
            "boxes": boxes_to_image(boxes[keep], width, height),
            "classes": classes[keep].astype(np.int64),
            "box_scores": box_scores[keep].astype(np.float32),
            "mask_scores": mask_scores[keep].astype(np.float32),
        }
    with timer("masks to image"):
        detections["masks"] = mask_windows(masks[keep], height, width, mask_threshold)
    return detections


def with_dense_masks(detections):
    """``detections_to_image``'s dict with ``masks`` as [N, H, W] bool (the Detector result)."""
    return {**detections, "masks": detections["masks"].to_dense()}


def check_bgr_image(image, name="image"):
    """Raise ValueError unless ``image`` is what the detectors take: a numpy [H, W, 3] uint8
    BGR array with H, W >= 1 (as ``cv2.imread`` returns).

    Other dtypes are refused rather than converted: the network expects 0-255 pixel values,
    so a float image in [0, 1], a uint16 or a bool image would give silently wrong scores.
    """
    expected = "expected a numpy [H, W, 3] uint8 BGR array with H, W >= 1 (as cv2.imread returns)"
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{name}: {expected}, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"{name}: {expected}, got dtype {image.dtype} (shape {image.shape})")
    if image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
        raise ValueError(f"{name}: {expected}, got shape {image.shape}")


class BatchDetector:
    """The shared host side of the detectors: preprocessing, fixed-size batches, and the
    results in original image pixels. Subclasses set ``config``, ``batch_size`` and
    ``run_network(batch) -> InferenceNet outputs as numpy``."""

    config = None
    batch_size = 1

    def preprocess(self, image_bgr, name="image"):
        """[H, W, 3] uint8 BGR -> [1, 3, S, S] float32 normalised RGB (the authors' eval path).

        Raises ValueError (``check_bgr_image``, the message starting with ``name``) for
        anything else.
        """
        check_bgr_image(image_bgr, name)
        return eval_transform(image_bgr, self.config.max_size)[None]

    def run_network(self, batch):
        raise NotImplementedError(f"{type(self).__name__} must define run_network")

    def __call__(self, image_bgr):
        """Detect instances in one image.

        Args:
            image_bgr: [H, W, 3] uint8 BGR numpy array (as ``cv2.imread`` returns), any size;
                anything else raises ValueError (``check_bgr_image``).

        Returns:
            dict sorted by box score: ``boxes [N,4]`` int64 (x1, y1, x2, y2) original pixels,
            ``classes [N]`` 0-based (no background), ``box_scores [N]``, ``mask_scores [N]``
            (YOLACT++: box score x mask IoU; YOLACT: = box score), ``masks [N,H,W]`` bool.
        """
        return self.detect_batch([image_bgr])[0]

    def detect_batch(self, images_bgr):
        """Detect instances in up to ``batch_size`` images with one network call.

        The network always sees ``batch_size`` images (one compiled graph): unused slots
        stay zero and their outputs are not read.

        Args:
            images_bgr: list or tuple of [H, W, 3] uint8 BGR images, any sizes.

        Returns:
            list of ``__call__`` result dicts, one per image, in order.

        Raises:
            ValueError: naming the first image that is not [H, W, 3] uint8, before the
                network runs.
        """
        if not isinstance(images_bgr, (list, tuple)):
            raise ValueError(f"images: expected a list of 1 to {self.batch_size} [H, W, 3] uint8 "
                             f"BGR images, got {type(images_bgr).__name__}")
        outputs = self.run_network(self.prepare_batch(images_bgr))
        threshold = self.config.eval.mask_threshold
        return [with_dense_masks(detections_to_image(outputs, index, image.shape[0],
                                                     image.shape[1], threshold))
                for index, image in enumerate(images_bgr)]

    def prepare_batch(self, images_bgr):
        """Up to ``batch_size`` [H, W, 3] uint8 BGR images -> the network's input
        [batch_size, 3, S, S] float32 (unused slots zero).

        Raises:
            ValueError: naming the first image that is not [H, W, 3] uint8.
        """
        if not 1 <= len(images_bgr) <= self.batch_size:
            raise ValueError(f"images: expected 1 to {self.batch_size} images, "
                             f"got {len(images_bgr)}")
        size = self.config.max_size
        batch = np.zeros((self.batch_size, 3, size, size), np.float32)
        for index, image in enumerate(images_bgr):
            batch[index] = self.preprocess(image, f"image {index}")[0]
        return batch


class Detector(BatchDetector):
    """Instance segmentation of images with a trained or converted checkpoint.

    Example::

        det = Detector(config="yolact_plus_resnet50", ckpt="x.ckpt", device_target="CPU")
        result = det(cv2.imread("dog.jpg"))      # dict of numpy arrays, see ``__call__``

    Args:
        config: a variant name, a YAML path, or a ``YolactConfig``.
        ckpt: checkpoint of that config (trained here or made by ``tools/convert_weights.py``).
        device_target: "CPU", "GPU" or "Ascend".
        overrides: ``section.field=value`` strings applied to a named config.
        batch_size: images per network call in ``detect_batch``; default the config's
            ``eval.batch_size``.

    Raises:
        CheckpointError: the checkpoint is missing or belongs to another config.
    """

    def __init__(self, config="yolact_plus_resnet50", ckpt=None, device_target="CPU",
                 overrides=(), batch_size=None):
        self.config = load_config(config, overrides) if isinstance(config, str) else config
        self.batch_size = batch_size or self.config.eval.batch_size
        init_context(device_target)
        self.model = build_model(self.config, device_target)
        if ckpt is not None:
            load_weights(self.model, ckpt)
        self.model.set_train(False)
        self.net = build_inference_net(self.config, self.model)

    def run_network(self, batch):
        """``InferenceNet`` outputs (numpy) of a [batch_size, 3, S, S] normalised batch."""
        return tuple(o.asnumpy() for o in self.net(Tensor(batch)))

    def raw(self, batch_nchw):
        """Network outputs for an already normalised RGB batch [B, 3, S, S] float32.

        Returns:
            numpy ``(loc [B,P,4], conf [B,P,C] softmax, coeff [B,P,K], proto [B,S/4,S/4,K])``.
        """
        batch = np.ascontiguousarray(batch_nchw, dtype=np.float32)
        size = self.config.max_size
        if batch.ndim != 4 or batch.shape[1:] != (3, size, size):
            raise ValueError(f"expected a [B, 3, {size}, {size}] batch, got shape {batch.shape}")
        loc, conf, coeff, proto, _ = self.model(Tensor(batch))
        return loc.asnumpy(), conf.asnumpy(), coeff.asnumpy(), proto.asnumpy()
