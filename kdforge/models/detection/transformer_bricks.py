"""mmcv's transformer bricks with their parameter names, so mmdetection DETR-family
checkpoints load: ``MultiheadAttention`` (``attn.in_proj_weight``...), ``FFN``
(``layers.0.0``, ``layers.1``) and mmdetection's ``MLP`` (``layers.{i}``)."""

from __future__ import annotations

import itertools

from torch import Tensor, nn

__all__ = ["FFN", "MLP", "MultiheadAttention"]


class MultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` wrapped as mmcv's ``MultiheadAttention``: positional
    encodings added to query and key (not to the value), residual ``identity + dropout(out)``.

    Args:
        embed_dims: channels.
        num_heads: heads.
        attn_drop: dropout on the attention weights (mmcv's ``dropout`` / ``attn_drop``).
        proj_drop: dropout on the output before the residual add.
        batch_first: ``(N, L, C)`` inputs instead of ``(L, N, C)``.
    """

    def __init__(
        self,
        embed_dims: int = 256,
        num_heads: int = 8,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        batch_first: bool = True,
    ) -> None:
        super().__init__()
        self.embed_dims, self.num_heads = embed_dims, num_heads
        self.attn = nn.MultiheadAttention(
            embed_dims, num_heads, dropout=attn_drop, batch_first=batch_first
        )
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(
        self,
        query: Tensor,
        key: Tensor | None = None,
        value: Tensor | None = None,
        identity: Tensor | None = None,
        query_pos: Tensor | None = None,
        key_pos: Tensor | None = None,
        attn_mask: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
    ) -> Tensor:
        """Attention of ``query + query_pos`` over ``key + key_pos``; ``key`` defaults to the
        query, ``value`` to the key (before ``key_pos``), ``key_pos`` to ``query_pos`` when
        shapes agree. ``attn_mask`` ``(Lq, Lk)`` bool: True = may not attend."""
        key = query if key is None else key
        value = key if value is None else value
        identity = query if identity is None else identity
        if key_pos is None and query_pos is not None and query_pos.shape == key.shape:
            key_pos = query_pos
        if query_pos is not None:
            query = query + query_pos
        if key_pos is not None:
            key = key + key_pos
        out = self.attn(
            query,
            key,
            value,
            attn_mask=attn_mask,
            key_padding_mask=key_padding_mask,
            need_weights=False,
        )[0]
        return identity + self.proj_drop(out)


class FFN(nn.Module):
    """mmcv's two-layer ``FFN``: ``x + Linear(Dropout(ReLU(Linear(x))))`` (dropouts ``ffn_drop``).

    Keys: ``layers.0.0.{weight,bias}`` (``embed_dims -> feedforward_channels``) and
    ``layers.1.{weight,bias}`` (back to ``embed_dims``).
    """

    def __init__(
        self, embed_dims: int = 256, feedforward_channels: int = 1024, ffn_drop: float = 0.0
    ) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Sequential(
                nn.Linear(embed_dims, feedforward_channels),
                nn.ReLU(inplace=True),
                nn.Dropout(ffn_drop),
            ),
            nn.Linear(feedforward_channels, embed_dims),
            nn.Dropout(ffn_drop),
        )

    def forward(self, x: Tensor) -> Tensor:
        """``(..., embed_dims)`` -> same shape, with the residual added."""
        return x + self.layers(x)


class MLP(nn.Module):
    """mmdetection's ``MLP``: ``num_layers`` linear layers (``layers.{i}``), ReLU between."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(dims))

    def forward(self, x: Tensor) -> Tensor:
        """``(..., input_dim)`` -> ``(..., output_dim)``."""
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = x.relu()
        return x
