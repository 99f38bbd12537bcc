"""The deformable transformer of DINO (mmdetection 3.x ``DeformableDetrTransformerEncoder``
and ``DinoTransformerDecoder``), post-norm layers with mmcv's parameter names.

Encoder layer: multi-scale deformable self-attention over all pyramid positions -> norm ->
FFN -> norm. Decoder layer: self-attention among the queries (with DINO's denoising mask)
-> norm -> deformable cross-attention into the encoder memory -> norm -> FFN -> norm. The
decoder refines its boxes layer by layer through the head's ``reg_branches`` and returns
every layer's (normalised) queries and boxes, the boxes *before* detaching ("look forward
twice", Zhang et al., 2023).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from kdforge.models.detection.boxes import inverse_sigmoid
from kdforge.models.detection.ms_deform_attn import MultiScaleDeformableAttention
from kdforge.models.detection.positional_encoding import coordinate_to_encoding
from kdforge.models.detection.transformer_bricks import FFN, MLP, MultiheadAttention

__all__ = [
    "DeformableDetrTransformerEncoder",
    "DeformableDetrTransformerEncoderLayer",
    "DinoTransformerDecoder",
    "DinoTransformerDecoderLayer",
]

Shapes = Sequence[tuple[int, int]]


class DeformableDetrTransformerEncoderLayer(nn.Module):
    """``self_attn`` (deformable) -> ``norms.0`` -> ``ffn`` -> ``norms.1``.

    Args:
        embed_dims, num_heads, num_levels, num_points: of the deformable attention.
        feedforward_channels: hidden width of the FFN (2048 in DINO).
        dropout: of the attention and the FFN (0.0 in DINO).
    """

    def __init__(
        self,
        embed_dims: int = 256,
        num_heads: int = 8,
        num_levels: int = 4,
        num_points: int = 4,
        feedforward_channels: int = 2048,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.self_attn = MultiScaleDeformableAttention(
            embed_dims, num_heads, num_levels, num_points, dropout, batch_first=True
        )
        self.ffn = FFN(embed_dims, feedforward_channels, dropout)
        self.norms = nn.ModuleList(nn.LayerNorm(embed_dims) for _ in range(2))

    def forward(
        self,
        query: Tensor,
        query_pos: Tensor,
        key_padding_mask: Tensor | None,
        reference_points: Tensor,
        spatial_shapes: Shapes,
    ) -> Tensor:
        """``(N, S, C)`` -> ``(N, S, C)``; ``reference_points`` ``(N, S, levels, 2)``."""
        query = self.self_attn(
            query,
            query_pos=query_pos,
            key_padding_mask=key_padding_mask,
            reference_points=reference_points,
            spatial_shapes=spatial_shapes,
        )
        return self.norms[1](self.ffn(self.norms[0](query)))


class DeformableDetrTransformerEncoder(nn.Module):
    """``num_layers`` encoder layers over the flattened pyramid (6 in DINO)."""

    def __init__(self, num_layers: int = 6, **layer_kwargs) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DeformableDetrTransformerEncoderLayer(**layer_kwargs) for _ in range(num_layers)
        )
        self.embed_dims = self.layers[0].ffn.layers[1].out_features

    @staticmethod
    def get_encoder_reference_points(
        spatial_shapes: Shapes, valid_ratios: Tensor, device: torch.device | str | None = None
    ) -> Tensor:
        """Pixel centres of every level, normalised by the valid (unpadded) size of their
        level, then scaled by each level's valid ratio.

        Args:
            spatial_shapes: ``(h, w)`` per level.
            valid_ratios: ``(N, levels, 2)`` valid ``(w, h)`` fractions of each level.

        Returns:
            ``(N, S, levels, 2)`` ``(x, y)``: position ``s`` seen from every level.
        """
        refs = []
        for level, (h, w) in enumerate(spatial_shapes):
            ys = torch.linspace(0.5, h - 0.5, h, dtype=torch.float32, device=device)
            xs = torch.linspace(0.5, w - 0.5, w, dtype=torch.float32, device=device)
            ref_y, ref_x = torch.meshgrid(ys, xs, indexing="ij")
            ref_y = ref_y.reshape(-1)[None] / (valid_ratios[:, None, level, 1] * h)
            ref_x = ref_x.reshape(-1)[None] / (valid_ratios[:, None, level, 0] * w)
            refs.append(torch.stack((ref_x, ref_y), -1))  # (N, h*w, 2)
        return torch.cat(refs, 1)[:, :, None] * valid_ratios[:, None]

    def forward(
        self,
        query: Tensor,
        query_pos: Tensor,
        key_padding_mask: Tensor | None,
        spatial_shapes: Shapes,
        valid_ratios: Tensor,
    ) -> Tensor:
        """Flattened features ``(N, S, C)`` (with their positional and level encoding
        ``query_pos``) -> the memory ``(N, S, C)``."""
        ref = self.get_encoder_reference_points(spatial_shapes, valid_ratios, query.device)
        for layer in self.layers:
            query = layer(query, query_pos, key_padding_mask, ref, spatial_shapes)
        return query


class DinoTransformerDecoderLayer(nn.Module):
    """``self_attn`` -> ``norms.0`` -> ``cross_attn`` (deformable) -> ``norms.1`` -> ``ffn``
    -> ``norms.2``; arguments as :class:`DeformableDetrTransformerEncoderLayer`.

    A subclass with ``_text_attention = True`` also builds ``cross_attn_text`` (between
    ``self_attn`` and ``cross_attn``, in mmdetection's order) and a fourth norm.
    """

    _text_attention = False

    def __init__(
        self,
        embed_dims: int = 256,
        num_heads: int = 8,
        num_levels: int = 4,
        num_points: int = 4,
        feedforward_channels: int = 2048,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(embed_dims, num_heads, attn_drop=dropout)
        if self._text_attention:
            self.cross_attn_text = MultiheadAttention(embed_dims, num_heads, attn_drop=dropout)
        self.cross_attn = MultiScaleDeformableAttention(
            embed_dims, num_heads, num_levels, num_points, dropout, batch_first=True
        )
        self.ffn = FFN(embed_dims, feedforward_channels, dropout)
        num_norms = 4 if self._text_attention else 3
        self.norms = nn.ModuleList(nn.LayerNorm(embed_dims) for _ in range(num_norms))

    def forward(
        self,
        query: Tensor,
        query_pos: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None,
        self_attn_mask: Tensor | None,
        reference_points: Tensor,
        spatial_shapes: Shapes,
    ) -> Tensor:
        """``(N, Q, C)`` queries attending to ``value`` ``(N, S, C)`` -> ``(N, Q, C)``;
        ``reference_points`` ``(N, Q, levels, 4)``."""
        query = self.norms[0](self.self_attn(query, query_pos=query_pos, attn_mask=self_attn_mask))
        return self._image_attention_ffn(
            query, query_pos, value, key_padding_mask, reference_points, spatial_shapes
        )

    def _image_attention_ffn(
        self,
        query: Tensor,
        query_pos: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None,
        reference_points: Tensor,
        spatial_shapes: Shapes,
    ) -> Tensor:
        """The layer's tail: ``cross_attn`` -> ``norms[-2]`` -> ``ffn`` -> ``norms[-1]``."""
        query = self.cross_attn(
            query,
            value,
            query_pos=query_pos,
            key_padding_mask=key_padding_mask,
            reference_points=reference_points,
            spatial_shapes=spatial_shapes,
        )
        return self.norms[-1](self.ffn(self.norms[-2](query)))


class DinoTransformerDecoder(nn.Module):
    """DINO's decoder: positional queries from the current boxes, iterative refinement.

    Each layer's positional query is ``ref_point_head`` (an MLP ``2C -> C -> C``) of the
    sine encoding of its input boxes (scaled by the level-0 valid ratios). After each layer
    ``reg_branches[i]`` predicts a box delta in inverse-sigmoid space; the refined box feeds
    the next layer detached, and is returned undetached. ``norm`` is applied to every
    returned layer output. Subclasses set ``layer_cls`` to decode with other layers.

    Args:
        num_layers: decoder layers (6).
        return_intermediate: return every layer's output, not only the last (DINO: True).
        **layer_kwargs: :class:`DinoTransformerDecoderLayer` arguments.
    """

    layer_cls: type[DinoTransformerDecoderLayer] = DinoTransformerDecoderLayer

    def __init__(
        self, num_layers: int = 6, return_intermediate: bool = True, **layer_kwargs
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(self.layer_cls(**layer_kwargs) for _ in range(num_layers))
        self.num_layers, self.return_intermediate = num_layers, return_intermediate
        dims = self.layers[0].ffn.layers[1].out_features
        self.embed_dims = dims
        self.ref_point_head = MLP(dims * 2, dims, dims, 2)
        self.norm = nn.LayerNorm(dims)

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
        *layer_extras: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """Decode ``(N, Q, C)`` content queries from ``(N, Q, 4)`` sigmoid boxes.

        Args:
            query: content queries (denoising queries first, then the matching ones).
            value: the encoder memory ``(N, S, C)``.
            key_padding_mask: ``(N, S)`` True at padding, or None.
            self_attn_mask: ``(Q, Q)`` bool, True = may not attend (denoising groups), or None.
            reference_points: ``(N, Q, 4)`` normalised ``(cx, cy, w, h)``.
            spatial_shapes: ``(h, w)`` per level.
            valid_ratios: ``(N, levels, 2)``.
            reg_branches: at least ``num_layers`` box-delta predictors ``C -> 4``.
            *layer_extras: further inputs of every layer, after the usual ones (Grounding
                DINO's text memory and its padding mask).

        Returns:
            ``hidden_states`` ``(L, N, Q, C)`` (normalised by ``norm``; ``L`` = layers, or 1
            without ``return_intermediate``) and ``references`` ``(L + 1, N, Q, 4)``: the
            input boxes then each layer's refined boxes.
        """
        states, refs = [], [reference_points]
        ratios = torch.cat([valid_ratios, valid_ratios], -1)[:, None]  # (N, 1, levels, 4)
        for i, layer in enumerate(self.layers):
            ref_input = reference_points[:, :, None] * ratios  # (N, Q, levels, 4)
            query_pos = self.ref_point_head(
                coordinate_to_encoding(ref_input[:, :, 0], self.embed_dims // 2)
            )
            query = layer(
                query,
                query_pos,
                value,
                key_padding_mask,
                self_attn_mask,
                ref_input,
                spatial_shapes,
                *layer_extras,
            )
            new_ref = (reg_branches[i](query) + inverse_sigmoid(reference_points, 1e-3)).sigmoid()
            reference_points = new_ref.detach()
            if self.return_intermediate:
                states.append(self.norm(query))
                refs.append(new_ref)  # look forward twice: the gradient reaches layer i
        if not self.return_intermediate:
            return query[None], torch.stack([refs[0], reference_points])
        return torch.stack(states), torch.stack(refs)
