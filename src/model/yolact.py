"""YOLACT / YOLACT++: wires backbone, FPN, protonet and heads; no logic of its own."""
import mindspore as ms
from mindspore import nn, ops


class Yolact(nn.Cell):
    """The network from an RGB-normalised image batch to raw predictions.

    Args:
        backbone: cell ``[B, 3, S, S] -> (C3, C4, C5)``.
        fpn: cell ``(C3, C4, C5) -> (P3, ..., P7)``.
        proto_net: cell ``P3 -> [B, S/4, S/4, K]`` prototypes.
        prediction_head: cell ``(P3, ..., P7) -> (loc, conf logits, coeff)``.
        semantic_head: cell ``P3 -> [B, C-1, S/8, S/8]`` logits, run in training only.
        maskiou_net: the mask re-scoring net (YOLACT++) or None. It is not run here: the
            loss (training) and the post-processing (inference) call it on assembled masks.
        priors: [P, 4] float32 (cx, cy, w, h) numpy array, the constant prior boxes.

    Inputs:
        images: [B, 3, S, S] float32, normalised, RGB.

    Returns:
        training: ``loc [B,P,4], conf [B,P,C] logits, coeff [B,P,K], proto [B,S/4,S/4,K],
        segm [B,C-1,S/8,S/8]``; inference: ``loc, conf [B,P,C] softmax, coeff, proto,
        priors [P,4]``.
    """

    def __init__(self, backbone, fpn, proto_net, prediction_head, semantic_head, maskiou_net,
                 priors):
        super().__init__()
        self.backbone = backbone
        self.fpn = fpn
        self.proto_net = proto_net
        self.prediction_head = prediction_head
        self.semantic_head = semantic_head
        self.maskiou_net = maskiou_net
        self.priors = ms.Tensor(priors, ms.float32)

    def construct(self, images):
        c3, c4, c5 = self.backbone(images)
        features = self.fpn(c3, c4, c5)
        proto = self.proto_net(features[0])
        loc, conf, coeff = self.prediction_head(features)
        if self.training:
            return loc, conf, coeff, proto, self.semantic_head(features[0])
        return loc, ops.softmax(conf, axis=-1), coeff, proto, self.priors
