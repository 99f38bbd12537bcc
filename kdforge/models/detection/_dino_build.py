"""The parts that :func:`~kdforge.models.detection.dino.build_dino` and
:func:`~kdforge.models.detection.grounding_dino.build_grounding_dino` build alike: the ResNet
``C3..C5`` with its 4-level ``ChannelMapper``, the sine positional encoding and the
contrastive denoising query generator (mmdetection 3.x settings)."""

from __future__ import annotations

from pathlib import Path

from kdforge.models.detection.backbone import ResNetBackbone
from kdforge.models.detection.channel_mapper import ChannelMapper
from kdforge.models.detection.dino_denoising import CdnQueryGenerator
from kdforge.models.detection.positional_encoding import SinePositionalEncoding

__all__ = ["dino_backbone_and_neck", "dino_positional_encoding", "dino_query_generator"]


def dino_backbone_and_neck(
    depth: int,
    embed_dims: int,
    frozen_stages: int,
    backbone_pretrained: str | Path | None,
    neck_bias: bool | None = None,
) -> tuple[ResNetBackbone, ChannelMapper]:
    """A ResNet returning ``C3..C5`` (frozen BN, ``frozen_stages`` frozen, loaded from a
    torchvision-keyed checkpoint when given) and a ``ChannelMapper`` to ``embed_dims`` with
    one extra stride-64 level; ``neck_bias`` as :class:`ChannelMapper`'s ``bias``."""
    backbone = ResNetBackbone(
        depth,
        frozen_stages=frozen_stages,
        norm_eval=True,
        norm_requires_grad=False,
        out_indices=(1, 2, 3),
    )
    if backbone_pretrained is not None:
        backbone.load_torchvision(backbone_pretrained)
    channels = [i["num_chs"] for i in backbone.feature_info]
    return backbone, ChannelMapper(channels, embed_dims, kernel_size=1, num_outs=4, bias=neck_bias)


def dino_positional_encoding(embed_dims: int) -> SinePositionalEncoding:
    """The normalised sine encoding (temperature 20, offset 0) of ``embed_dims`` channels."""
    return SinePositionalEncoding(embed_dims // 2, temperature=20, normalize=True, offset=0.0)


def dino_query_generator(
    num_classes: int,
    embed_dims: int,
    num_queries: int,
    num_dn_queries: int,
    label_noise_scale: float = 0.5,
    box_noise_scale: float = 1.0,
) -> CdnQueryGenerator:
    """Contrastive denoising queries in dynamic groups of at most ``num_dn_queries``."""
    return CdnQueryGenerator(
        num_classes,
        embed_dims,
        num_queries,
        label_noise_scale=label_noise_scale,
        box_noise_scale=box_noise_scale,
        group_cfg={"dynamic": True, "num_groups": None, "num_dn_queries": num_dn_queries},
    )
