"""Grounding DINO's feature enhancer and cross-modality decoder (mmdetection 3.x
``GroundingDinoTransformerEncoder`` / ``GroundingDinoTransformerDecoder``), post-norm layers
with mmdetection's parameter names.

Encoder layer ``i``: ``fusion_layers.i`` (image <-> text bi-attention) -> ``text_layers.i``
(self-attention among the tokens of one phrase, with the sine encoding of each token's
position within its phrase) -> ``layers.i`` (DINO's deformable encoder layer on the fused
image features). Decoder layer: self-attention -> norm -> ``cross_attn_text`` (queries read
the text) -> norm -> deformable ``cross_attn`` into the image memory -> norm -> FFN -> norm.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from kdforge.models.detection.deformable_transformer import (
    DeformableDetrTransformerEncoder,
    DinoTransformerDecoder,
    DinoTransformerDecoderLayer,
)
from kdforge.models.detection.grounding_fusion import SingleScaleBiAttentionBlock
from kdforge.models.detection.transformer_bricks import FFN, MultiheadAttention

__all__ = [
    "DetrTransformerEncoderLayer",
    "GroundingDinoTransformerDecoder",
    "GroundingDinoTransformerDecoderLayer",
    "GroundingDinoTransformerEncoder",
    "text_position_encoding",
]

Shapes = Sequence[tuple[int, int]]


def text_position_encoding(position_ids: Tensor, num_feats: int = 256) -> Tensor:
    """``(B, T)`` positions -> ``(B, T, num_feats)``: ``sin``/``cos`` of ``2 pi p / 10000 **
    (2 floor(i / 2) / num_feats)`` interleaved (mmdetection's ``get_text_sine_pos_embed``
    with ``exchange_xy=False``; it fixes ``num_feats`` at 256, the transformer width)."""
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=position_ids.device)
    dim_t = 10000 ** (2 * (dim_t // 2) / num_feats)
    pos = position_ids.float()[..., None] * (2 * math.pi) / dim_t  # (B, T, F)
    return torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), -1).flatten(-2)


class DetrTransformerEncoderLayer(nn.Module):
    """mmdetection's ``DetrTransformerEncoderLayer``: ``self_attn`` -> ``norms.0`` -> ``ffn``
    -> ``norms.1`` (Grounding DINO's text layers: 4 heads, FFN 1024, no dropout)."""

    def __init__(
        self,
        embed_dims: int = 256,
        num_heads: int = 4,
        feedforward_channels: int = 1024,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.self_attn = MultiheadAttention(embed_dims, num_heads, attn_drop=dropout)
        self.ffn = FFN(embed_dims, feedforward_channels, dropout)
        self.norms = nn.ModuleList(nn.LayerNorm(embed_dims) for _ in range(2))

    def forward(self, query: Tensor, query_pos: Tensor, attn_mask: Tensor | None) -> Tensor:
        """``(B, T, C)`` -> ``(B, T, C)``; ``attn_mask`` ``(B * heads, T, T)`` True = blocked."""
        query = self.self_attn(query, query_pos=query_pos, attn_mask=attn_mask)
        return self.norms[1](self.ffn(self.norms[0](query)))


class GroundingDinoTransformerEncoder(DeformableDetrTransformerEncoder):
    """The feature enhancer: ``layers`` (deformable, image), ``text_layers`` and
    ``fusion_layers``, ``num_layers`` each (6).

    Args:
        num_layers: encoder depth.
        text_layer: :class:`DetrTransformerEncoderLayer` keywords (``num_heads``,
            ``feedforward_channels``).
        fusion_layer: :class:`SingleScaleBiAttentionBlock` keywords besides the widths
            (``embed_dim`` 1024, ``num_heads`` 4, ``init_values`` 1e-4).
        num_cp: the first ``num_cp`` image and fusion layers recompute their activations in
            the backward pass (mmdetection's ``num_cp``; memory only, same results).
        **layer_kwargs: ``DeformableDetrTransformerEncoderLayer`` keywords.
    """

    def __init__(
        self,
        num_layers: int = 6,
        *,
        text_layer: dict | None = None,
        fusion_layer: dict | None = None,
        num_cp: int = 0,
        **layer_kwargs,
    ) -> None:
        super().__init__(num_layers, **layer_kwargs)
        dims = self.embed_dims
        text = {"num_heads": 4, "feedforward_channels": 1024, **(text_layer or {})}
        fusion = {"embed_dim": 1024, "num_heads": 4, "init_values": 1e-4, **(fusion_layer or {})}
        self.text_layers = nn.ModuleList(
            DetrTransformerEncoderLayer(dims, **text) for _ in range(num_layers)
        )
        self.fusion_layers = nn.ModuleList(
            SingleScaleBiAttentionBlock(dims, dims, **fusion) for _ in range(num_layers)
        )
        self.num_cp = num_cp

    def _run(self, index: int, fn, *args):
        if index < self.num_cp and self.training and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def forward(
        self,
        query: Tensor,
        query_pos: Tensor,
        key_padding_mask: Tensor | None,
        spatial_shapes: Shapes,
        valid_ratios: Tensor,
        memory_text: Tensor,
        text_attention_mask: Tensor,
        position_ids: Tensor,
        text_self_attention_masks: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """Fuse the flattened image features ``(B, S, C)`` with the text ``(B, T, C)``.

        Args:
            query, query_pos, key_padding_mask, spatial_shapes, valid_ratios: as
                :meth:`DeformableDetrTransformerEncoder.forward`.
            memory_text: ``(B, T, C)`` projected BERT features.
            text_attention_mask: ``(B, T)`` bool, True at padding tokens.
            position_ids: ``(B, T)`` each token's position within its phrase.
            text_self_attention_masks: ``(B, T, T)`` bool sub-sentence mask, True = may attend.

        Returns:
            The image memory ``(B, S, C)`` and the text memory ``(B, T, C)``.
        """
        ref = self.get_encoder_reference_points(spatial_shapes, valid_ratios, query.device)
        pos_text = text_position_encoding(position_ids, self.embed_dims).to(memory_text.dtype)
        heads = self.text_layers[0].num_heads
        # (B, T, T) may-attend -> (B * heads, T, T) blocked, batch-major as nn.MultiheadAttention
        # reads it (mmdetection's repeat is head-major: the same when the batch shares a caption)
        text_mask = (~text_self_attention_masks).repeat_interleave(heads, 0)
        for i, layer in enumerate(self.layers):
            query, memory_text = self._run(
                i,
                self.fusion_layers[i],
                query,
                memory_text,
                key_padding_mask,
                text_attention_mask,
            )
            memory_text = self.text_layers[i](memory_text, pos_text, text_mask)
            query = self._run(i, layer, query, query_pos, key_padding_mask, ref, spatial_shapes)
        return query, memory_text


class GroundingDinoTransformerDecoderLayer(DinoTransformerDecoderLayer):
    """``self_attn`` -> ``norms.0`` -> ``cross_attn_text`` -> ``norms.1`` -> ``cross_attn``
    (deformable) -> ``norms.2`` -> ``ffn`` -> ``norms.3`` (8 heads everywhere, FFN 2048);
    arguments as DINO's
    :class:`~kdforge.models.detection.deformable_transformer.DinoTransformerDecoderLayer`."""

    _text_attention = True

    def forward(
        self,
        query: Tensor,
        query_pos: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None,
        self_attn_mask: Tensor | None,
        reference_points: Tensor,
        spatial_shapes: Shapes,
        memory_text: Tensor,
        text_attention_mask: Tensor,
    ) -> Tensor:
        """``(B, Q, C)`` queries -> ``(B, Q, C)``; ``memory_text`` ``(B, T, C)``,
        ``text_attention_mask`` ``(B, T)`` True at padding tokens."""
        query = self.norms[0](self.self_attn(query, query_pos=query_pos, attn_mask=self_attn_mask))
        # mmcv adds query_pos to the text keys too when Q == T (shapes equal), as here
        query = self.cross_attn_text(
            query,
            memory_text,
            memory_text,
            query_pos=query_pos,
            key_padding_mask=text_attention_mask,
        )
        return self._image_attention_ffn(
            self.norms[1](query),
            query_pos,
            value,
            key_padding_mask,
            reference_points,
            spatial_shapes,
        )


class GroundingDinoTransformerDecoder(DinoTransformerDecoder):
    """DINO's decoder (positional queries from the boxes, refinement by ``reg_branches``,
    look-forward-twice) whose layers also read the text. ``ref_point_head`` and ``norm`` as
    :class:`~kdforge.models.detection.deformable_transformer.DinoTransformerDecoder`."""

    layer_cls = GroundingDinoTransformerDecoderLayer

    def forward(
        self,
        query: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None,
        self_attn_mask: Tensor | None,
        reference_points: Tensor,
        spatial_shapes: Shapes,
        valid_ratios: Tensor,
        reg_branches: Sequence[nn.Module],
        memory_text: Tensor,
        text_attention_mask: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """As ``DinoTransformerDecoder.forward``, plus the text memory ``(B, T, C)`` and its
        ``(B, T)`` padding mask. Returns ``(L, B, Q, C)`` states and ``(L + 1, B, Q, 4)`` boxes."""
        return super().forward(
            query,
            value,
            key_padding_mask,
            self_attn_mask,
            reference_points,
            spatial_shapes,
            valid_ratios,
            reg_branches,
            memory_text,
            text_attention_mask,
        )
