"""Grounding DINO's image-text fusion (the "feature enhancer"'s cross-modality part), as
mmdetection 3.x ``BiMultiHeadAttention`` and ``SingleScaleBiAttentionBlock``
(``mmdet/models/utils/vlfuse_helper.py``, from GLIP).

One set of attention scores ``A = (W_v v)(W_l l)^T / sqrt(d)`` between every image position
and every text token serves both directions: a softmax over the tokens gives each image
position a mix of text values (image <- text), a softmax over the image positions gives each
token a mix of image values (text <- image). Scores are clamped to +-50,000 as mmdetection
does (half precision). The block normalises both inputs first, then adds the attention
outputs scaled by learnt per-channel ``gamma_v``/``gamma_l`` (layer scale, initialised to
``init_values``) to the *normalised* inputs.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kdforge.models.detection.window_attention import drop_path

__all__ = ["BiMultiHeadAttention", "SingleScaleBiAttentionBlock"]

MAX_CLAMP_VALUE = 50000.0  # mmdetection's bound on attention scores


class BiMultiHeadAttention(nn.Module):
    """Bidirectional multi-head attention between image positions and text tokens.

    Args:
        v_dim, l_dim: widths of the image and text features.
        embed_dim: width of the attention (1024 in Grounding DINO), split over the heads.
        num_heads: heads (4).
        dropout: on both attention maps (mmdetection's default 0.1 is what the config uses).
    """

    def __init__(
        self, v_dim: int, l_dim: int, embed_dim: int, num_heads: int, dropout: float = 0.1
    ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = embed_dim // num_heads
        self.scale = self.head_dim**-0.5
        self.dropout = nn.Dropout(dropout)
        self.v_proj = nn.Linear(v_dim, embed_dim)
        self.l_proj = nn.Linear(l_dim, embed_dim)
        self.values_v_proj = nn.Linear(v_dim, embed_dim)
        self.values_l_proj = nn.Linear(l_dim, embed_dim)
        self.out_v_proj = nn.Linear(embed_dim, v_dim)
        self.out_l_proj = nn.Linear(embed_dim, l_dim)
        for linear in (
            self.v_proj,
            self.l_proj,
            self.values_v_proj,
            self.values_l_proj,
            self.out_v_proj,
            self.out_l_proj,
        ):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)

    def _heads(self, x: Tensor) -> Tensor:
        """``(B, L, E)`` -> ``(B * heads, L, head_dim)``."""
        batch, length, _ = x.shape
        x = x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
        return x.reshape(batch * self.num_heads, length, self.head_dim)

    def _merge(self, x: Tensor, batch: int) -> Tensor:
        """``(B * heads, L, head_dim)`` -> ``(B, L, E)``."""
        x = x.view(batch, self.num_heads, -1, self.head_dim).transpose(1, 2)
        return x.reshape(batch, -1, self.embed_dim)

    def forward(
        self,
        vision: Tensor,
        lang: Tensor,
        attention_mask_v: Tensor | None = None,
        attention_mask_l: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Image ``(B, Nv, v_dim)`` and text ``(B, Nl, l_dim)`` -> their updates, same shapes.

        Args:
            attention_mask_v: ``(B, Nv)`` bool, True at padded image positions (no token
                reads them).
            attention_mask_l: ``(B, Nl)`` bool, True at padding tokens (no image position
                reads them). mmdetection's additive version of this mask is a no-op on a
                bool mask; the two agree whenever no caption is padded, as with one class
                list for the whole batch.
        """
        batch = vision.shape[0]
        query = self._heads(self.v_proj(vision) * self.scale)  # (B h, Nv, d)
        key = self._heads(self.l_proj(lang))  # (B h, Nl, d)
        value_v = self._heads(self.values_v_proj(vision))
        value_l = self._heads(self.values_l_proj(lang))
        scores = (query @ key.transpose(1, 2)).clamp(-MAX_CLAMP_VALUE, MAX_CLAMP_VALUE)
        # text <- image: per token, over the image positions (max-subtracted as mmdetection)
        scores_l = scores.transpose(1, 2)
        scores_l = scores_l - scores_l.max(-1, keepdim=True).values
        scores_l = scores_l.clamp(-MAX_CLAMP_VALUE, MAX_CLAMP_VALUE)
        if attention_mask_v is not None:
            mask_v = attention_mask_v.repeat_interleave(self.num_heads, 0)[:, None, :]
            scores_l = scores_l.masked_fill(mask_v, float("-inf"))
        if attention_mask_l is not None:
            mask_l = attention_mask_l.repeat_interleave(self.num_heads, 0)[:, None, :]
            scores = scores.masked_fill(mask_l, float("-inf"))
        probs_v = self.dropout(scores.softmax(-1))  # (B h, Nv, Nl)
        probs_l = self.dropout(scores_l.softmax(-1))  # (B h, Nl, Nv)
        out_v = self.out_v_proj(self._merge(probs_v @ value_l, batch))
        out_l = self.out_l_proj(self._merge(probs_l @ value_v, batch))
        return out_v, out_l


class SingleScaleBiAttentionBlock(nn.Module):
    """Pre-norm bidirectional fusion with layer scale (mmdetection's
    ``SingleScaleBiAttentionBlock``: the image levels come flattened into one sequence).

    Args:
        v_dim, l_dim, embed_dim, num_heads, dropout: of :class:`BiMultiHeadAttention`.
        drop_path: stochastic depth on both updates (0 in Grounding DINO).
        init_values: initial ``gamma_v``/``gamma_l`` (1e-4).
    """

    def __init__(
        self,
        v_dim: int,
        l_dim: int,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.1,
        drop_path: float = 0.0,
        init_values: float = 1e-4,
    ) -> None:
        super().__init__()
        self.layer_norm_v = nn.LayerNorm(v_dim)
        self.layer_norm_l = nn.LayerNorm(l_dim)
        self.attn = BiMultiHeadAttention(v_dim, l_dim, embed_dim, num_heads, dropout)
        self.drop_path = drop_path
        self.gamma_v = nn.Parameter(torch.full((v_dim,), init_values))
        self.gamma_l = nn.Parameter(torch.full((l_dim,), init_values))

    def forward(
        self,
        visual_feature: Tensor,
        lang_feature: Tensor,
        attention_mask_v: Tensor | None = None,
        attention_mask_l: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """``(B, Nv, v_dim)``, ``(B, Nl, l_dim)`` -> fused features of the same shapes
        (masks as :meth:`BiMultiHeadAttention.forward`)."""
        visual = self.layer_norm_v(visual_feature)
        lang = self.layer_norm_l(lang_feature)
        delta_v, delta_l = self.attn(visual, lang, attention_mask_v, attention_mask_l)
        visual = visual + drop_path(self.gamma_v * delta_v, self.drop_path, self.training)
        lang = lang + drop_path(self.gamma_l * delta_l, self.drop_path, self.training)
        return visual, lang
