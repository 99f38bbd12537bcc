"""Encoder-decoder segmentors and the zoo: PSPNet and DeepLabV3 on dilated ResNet/MobileNetV2.

Importing this module registers ``pspnet_{r18,r50,r101,mobilenetv2}`` and
``deeplabv3_{r18,r50,r101,mobilenetv2}`` (family ``"segmentation"``, Cityscapes: 19
classes at 512x1024 crops) with mmsegmentation's ``*-d8`` Cityscapes settings: decode
head on stage 4 (``in_index=3``), auxiliary ``FCNHead`` on stage 3 (``in_index=2``,
one conv, loss weight 0.4), dropout 0.1 in both heads.

| name | decode in/channels | aux in/channels |
|---|---|---|
| ``*_r18`` | 512 / 128 | 256 / 64 |
| ``*_r50``, ``*_r101`` | 2048 / 512 | 1024 / 256 |
| ``*_mobilenetv2`` | 320 / 512 | 96 / 256 |
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from kdforge.models._registry import register_model
from kdforge.models.factory import read_state_dict
from kdforge.models.segmentation.heads import ASPPHead, DecodeHead, FCNHead, PSPHead
from kdforge.models.segmentation.mobilenetv2 import MobileNetV2Backbone
from kdforge.models.segmentation.resnet import ResNetV1c

__all__ = ["AUX_LOSS_WEIGHT", "EncoderDecoder", "build_segmentor", "load_imagenet_backbone"]

AUX_LOSS_WEIGHT = 0.4  # mmsegmentation's auxiliary FCNHead loss_weight

# backbone -> (decode in, decode channels, aux in, aux channels)
_WIDTHS = {
    "r18": (512, 128, 256, 64),
    "r50": (2048, 512, 1024, 256),
    "r101": (2048, 512, 1024, 256),
    "mobilenetv2": (320, 512, 96, 256),
}
_HEADS: dict[str, type[PSPHead | ASPPHead]] = {"pspnet": PSPHead, "deeplabv3": ASPPHead}


class EncoderDecoder(nn.Module):
    """Backbone -> decode head (+ auxiliary head while training), as mmsegmentation's.

    ``forward(images)`` returns the decode head's logits at the backbone's output stride,
    ``(N, num_classes, ceil(H/8), ceil(W/8))``, in train and eval mode alike; upsample them
    to the label size for the loss (:func:`segmentation_loss`) and for metrics. In training
    mode the auxiliary head also runs, and its logits (same shape) are the output of the
    module ``auxiliary_head``: record them with ``FeatureTaps(model, [model.aux_name])``.
    In eval mode the auxiliary head is skipped.

    Args:
        backbone: returns a tuple of feature maps and has ``feature_info`` (one entry each).
        decode_head: reads ``features[decode_index]``.
        auxiliary_head: reads ``features[aux_index]``; ``None`` for no auxiliary head.
        decode_index: which backbone output feeds ``decode_head``.
        aux_index: which backbone output feeds ``auxiliary_head``.

    Attributes:
        feature_info: the backbone's stages with full module paths (``backbone.layer4``).
        aux_name: module path of the auxiliary head (``"auxiliary_head"``) or ``None``.
        num_classes: logits per pixel.
        output_stride: input size / logits size (8).
    """

    def __init__(
        self,
        backbone: nn.Module,
        decode_head: DecodeHead,
        auxiliary_head: DecodeHead | None = None,
        decode_index: int = 3,
        aux_index: int = 2,
    ) -> None:
        super().__init__()
        self.backbone, self.decode_head = backbone, decode_head
        self.auxiliary_head = auxiliary_head
        self.decode_index, self.aux_index = decode_index, aux_index
        self.feature_info = [
            dict(d, module=f"backbone.{d['module']}") for d in backbone.feature_info
        ]
        self.aux_name = "auxiliary_head" if auxiliary_head is not None else None
        self.num_classes = decode_head.num_classes
        self.output_stride = self.feature_info[decode_index]["reduction"]

    def forward(self, images: Tensor) -> Tensor:
        feats = self.backbone(images)  # tuple of (N, C_i, H/r_i, W/r_i)
        if self.training and self.auxiliary_head is not None:
            self.auxiliary_head(feats[self.aux_index])  # read through a tap on aux_name
        return self.decode_head(feats[self.decode_index])  # (N, K, H/8, W/8)


def load_imagenet_backbone(backbone: nn.Module, path: str | Path) -> nn.Module:
    """Load ImageNet weights into a segmentation backbone, as mmseg's ``pretrained=``.

    Takes mmcv's ResNet-V1c checkpoints (``open-mmlab://resnet{18,50,101}_v1c``: keys
    ``stem.*``, ``layer*``, ``fc.*``) and mmpretrain's MobileNetV2 (``backbone.conv1.*``,
    ``backbone.layer*``, ``backbone.conv2.*``, ``head.*``); a ``backbone.`` prefix is
    stripped and the classifier parts the backbone lacks (``fc``, ``head``, ``conv2``)
    are dropped. Every other key must fit the backbone exactly.
    """
    own = backbone.state_dict()
    state = {k.removeprefix("backbone."): v for k, v in read_state_dict(path).items()}
    state = {
        k: v for k, v in state.items() if k in own or not k.startswith(("fc.", "head.", "conv2."))
    }
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in state if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        raise ValueError(
            f"{path}: ImageNet weights do not fit {type(backbone).__name__}: "
            f"missing {missing[:4]} ({len(missing)}), unexpected {unexpected[:4]} "
            f"({len(unexpected)}), wrong shape {wrong[:4]} ({len(wrong)}); expected mmcv "
            "ResNet-V1c or mmpretrain MobileNetV2 keys of the same depth"
        )
    backbone.load_state_dict(state, strict=False)  # only num_batches_tracked may be absent
    return backbone


def build_segmentor(
    head: str,
    backbone: str,
    num_classes: int = 19,
    *,
    backbone_pretrained: str | Path | None = None,
) -> EncoderDecoder:
    """Build ``head`` (``"pspnet"`` or ``"deeplabv3"``) on ``backbone`` (``"r18"``, ``"r50"``,
    ``"r101"`` or ``"mobilenetv2"``) with mmsegmentation's Cityscapes widths.

    ``backbone_pretrained`` starts the backbone from ImageNet weights
    (:func:`load_imagenet_backbone`), as mmseg's configs do; the heads keep their init.
    """
    if head not in _HEADS or backbone not in _WIDTHS:
        raise ValueError(
            f"unknown segmentor {head}_{backbone}: heads {sorted(_HEADS)}, "
            f"backbones {sorted(_WIDTHS)}"
        )
    net = MobileNetV2Backbone() if backbone == "mobilenetv2" else ResNetV1c(int(backbone[1:]))
    if backbone_pretrained is not None:
        load_imagenet_backbone(net, backbone_pretrained)
    dec_in, dec_chs, aux_in, aux_chs = _WIDTHS[backbone]
    return EncoderDecoder(
        net,
        _HEADS[head](dec_in, dec_chs, num_classes),
        FCNHead(aux_in, aux_chs, num_classes, num_convs=1, concat_input=False),
    )


def _register(head: str, backbone: str) -> None:
    name = f"{head}_{backbone}"

    def builder(
        num_classes: int = 19, *, backbone_pretrained: str | Path | None = None
    ) -> EncoderDecoder:
        return build_segmentor(head, backbone, num_classes, backbone_pretrained=backbone_pretrained)

    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = f"{name}: mmsegmentation's ``{head}`` on ``{backbone}``-d8 (Cityscapes)."
    register_model(name, input_size=(3, 512, 1024), family="segmentation", num_classes=19)(builder)


for _head in _HEADS:
    for _backbone in _WIDTHS:
        _register(_head, _backbone)
