"""The inference graph: ``InferenceNet``, what ``eval.py`` runs and ``export.py`` exports: backbone, FPN, heads,
Fast NMS, mask assembly and (YOLACT++) mask re-scoring, with static shapes. B is the export
batch size (``--batch_size``), S the config's ``data.max_size``, D its
``eval.max_detections``, M the prototype grid (twice the P3 side: 138 at 550, 64 at 256).

Input (one):
    images: [B, 3, S, S] float32, normalised RGB: the image resized to S x S (cv2
        INTER_LINEAR on float32, aspect ratio not kept), ``(x - mean) / std`` in BGR, then
        BGR -> RGB (``src.data.transforms.eval_transform``).

Outputs (six, in this order; a MINDIR keeps the order, not the names):
    0 boxes: [B, D, 4] float32 (x1, y1, x2, y2), relative to the image, decoded, not clamped.
    1 classes: [B, D] int32, 0-based foreground class (background excluded).
    2 box_scores: [B, D] float32 class probability, descending along D.
    3 mask_scores: [B, D] float32, YOLACT++: box score x predicted mask IoU; YOLACT: = box_scores.
    4 masks: [B, D, M, M] float32 soft masks in [0, 1] on the prototype grid, zero
        outside the (padded) box.
    5 valid: [B, D] bool; invalid slots come last. Read only valid slots: invalid ones
        hold zero boxes, classes and scores, but their masks are not all zero (the
        padding-1 crop of a zero box keeps pixel (0, 0) at sigmoid(0) = 0.5).

Turning one image's slice into pixel boxes and full-size binary masks is host work:
``src.inference.detector.detections_to_image``.
"""
from mindspore import nn

from src.postprocess.detect import Detect
from src.postprocess.masks import MaskRescoring, assemble_masks_tensor

OUTPUT_NAMES = ("boxes", "classes", "box_scores", "mask_scores", "masks", "valid")


class InferenceNet(nn.Cell):
    """Images -> at most D detections per image, with soft masks on the prototype grid.

    Args:
        model: a ``Yolact`` (set to eval mode by the caller).
        detect: a ``Detect`` cell.

    Inputs:
        images: [B, 3, S, S] float32, normalised RGB.

    Returns:
        boxes [B, D, 4] float32 (x1, y1, x2, y2) relative, unclamped; classes [B, D] int32
        0-based; box_scores [B, D]; mask_scores [B, D] (YOLACT++: box score x predicted mask
        IoU, else = box_scores); masks [B, D, S/4, S/4] float32 soft, cropped; valid [B, D] bool.
    """

    def __init__(self, model, detect):
        super().__init__()
        self.model = model
        self.detect = detect
        self.rescoring = None if model.maskiou_net is None else MaskRescoring(model.maskiou_net)

    def construct(self, images):
        loc, conf, coeff, proto, priors = self.model(images)
        boxes, classes, scores, coeffs, valid = self.detect(loc, conf, coeff, priors)
        masks = assemble_masks_tensor(proto, coeffs, boxes)
        if self.rescoring is None:
            mask_scores = scores
        else:
            mask_scores = self.rescoring(masks, classes, scores) * valid.astype(scores.dtype)
        return boxes, classes, scores, mask_scores, masks, valid


def build_inference_net(config, model):
    """``InferenceNet`` with the config's post-processing settings, in eval mode."""
    ev = config.eval
    net = InferenceNet(model, Detect(config.num_classes, score_threshold=ev.score_threshold,
                                     nms_threshold=ev.nms_threshold, top_k=ev.top_k,
                                     max_detections=ev.max_detections,
                                     cross_class_nms=ev.cross_class_nms))
    net.set_train(False)
    return net
