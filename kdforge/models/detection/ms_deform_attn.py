"""Multi-scale deformable attention (Zhu et al., "Deformable DETR", ICLR 2021) in plain torch.

:func:`multi_scale_deformable_attention` samples each level with ``F.grid_sample``
(bilinear, zero padding, ``align_corners=False``), as mmcv's
``multi_scale_deformable_attn_pytorch``, so it runs forward and backward on any device.
:class:`MultiScaleDeformableAttention` is mmcv's module with its parameter names
(``sampling_offsets``, ``attention_weights``, ``value_proj``, ``output_proj``) and init.

Memory. The sampled values are ``N * heads * head_dims * Q * levels * points`` numbers, all
kept for the backward pass. At DINO's training size (batch 2, an 800x1333 image: levels of
100x167, 50x84, 25x42 and 13x21 = 22,223 positions, every one an encoder query; 8 heads of
32 channels, 4 levels, 4 points) that is 2*8*32*22,223*16 = 182M floats = 728 MB per encoder
layer in float32, 4.4 GB over the six layers (the 900 + 100 decoder queries: 32 MB a
layer). mmcv's CUDA kernel keeps only its inputs. Above ``max_sampled_bytes`` (256 MiB by
default) the queries are processed in chunks that each stay under the budget and, when
autograd records, each chunk is recomputed in the backward pass
(``torch.utils.checkpoint``), so a layer keeps only its inputs, as the kernel does, and
the peak no longer grows with depth. Measured on CPU at training size (float32, forward
and backward): one call peaks 1.16 GB above its inputs unchunked and 1.07 GB chunked
(0.63 GB with a 64 MiB budget); three chained calls 2.8 GB unchunked and 1.07 GB chunked,
in the same time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

__all__ = ["MultiScaleDeformableAttention", "multi_scale_deformable_attention"]

DEFAULT_MAX_SAMPLED_BYTES = 2**28


def _shapes(spatial_shapes: Tensor | Sequence[Sequence[int]]) -> list[tuple[int, int]]:
    if isinstance(spatial_shapes, Tensor):
        spatial_shapes = spatial_shapes.tolist()
    return [(int(h), int(w)) for h, w in spatial_shapes]


def _sample(
    value: Tensor, shapes: list[tuple[int, int]], locations: Tensor, weights: Tensor
) -> Tensor:
    n, _, heads, dims = value.shape
    q = locations.shape[1]
    out_dtype = value.dtype
    # sampled in float32 at least: bfloat16 locations would be off by up to half a pixel
    dtype = torch.promote_types(value.dtype, torch.float32)
    value = value.to(dtype)
    grids = (2 * locations - 1).to(dtype)  # [0, 1] -> grid_sample's [-1, 1]
    weights = weights.to(dtype)
    out = None
    start = 0
    for level, (h, w) in enumerate(shapes):
        # (N, h*w, heads, D) -> (N*heads, D, h, w)
        v = value[:, start : start + h * w].permute(0, 2, 3, 1).reshape(n * heads, dims, h, w)
        start += h * w
        # (N, Q, heads, P, 2) -> (N*heads, Q, P, 2)
        grid = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampled = F.grid_sample(
            v, grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )  # (N*heads, D, Q, P)
        wl = weights[:, :, :, level].transpose(1, 2).flatten(0, 1)  # (N*heads, Q, P)
        term = torch.einsum("bdqp,bqp->bqd", sampled, wl)
        out = term if out is None else out + term
    assert out is not None
    # (N*heads, Q, D) -> (N, Q, heads*D)
    out = out.view(n, heads, q, dims).transpose(1, 2).reshape(n, q, heads * dims)
    return out.to(out_dtype)


def multi_scale_deformable_attention(
    value: Tensor,
    spatial_shapes: Tensor | Sequence[Sequence[int]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
    max_sampled_bytes: int | None = None,
) -> Tensor:
    """Weighted sum of bilinearly sampled values over levels and points.

    Args:
        value: ``(N, S, heads, D)``, the levels flattened and concatenated (``S = sum h*w``).
        spatial_shapes: ``(levels, 2)`` ``(h, w)`` of each level (a tensor or pairs).
        sampling_locations: ``(N, Q, heads, levels, points, 2)`` ``(x, y)`` in ``[0, 1]`` of
            each level (0 and 1 are the outer edges of the border pixels).
        attention_weights: ``(N, Q, heads, levels, points)``.
        max_sampled_bytes: process the queries in chunks whose sampled values stay under
            this many bytes, recomputing them in the backward pass; ``None``: one pass.

    Returns:
        ``(N, Q, heads * D)`` in ``value``'s dtype (half and bfloat16 inputs are sampled
        in float32).
    """
    shapes = _shapes(spatial_shapes)
    n, _, heads, dims = value.shape
    _, q, _, levels, points, _ = sampling_locations.shape
    if sum(h * w for h, w in shapes) != value.shape[1]:
        raise ValueError(f"value has {value.shape[1]} positions, the shapes {shapes} another")
    itemsize = max(value.element_size(), 4)  # sampled in float32 at least
    per_query = n * heads * dims * levels * points * itemsize
    chunk = q if max_sampled_bytes is None else max(1, max_sampled_bytes // per_query)
    if chunk >= q:
        return _sample(value, shapes, sampling_locations, attention_weights)
    record = torch.is_grad_enabled() and any(
        t.requires_grad for t in (value, sampling_locations, attention_weights)
    )
    outs = []
    for i in range(0, q, chunk):
        args = (
            value,
            shapes,
            sampling_locations[:, i : i + chunk],
            attention_weights[:, i : i + chunk],
        )
        outs.append(checkpoint(_sample, *args, use_reentrant=False) if record else _sample(*args))
    return torch.cat(outs, dim=1)


class MultiScaleDeformableAttention(nn.Module):
    """mmcv's ``MultiScaleDeformableAttention``: offsets and weights predicted from the query.

    Returns ``identity + dropout(output_proj(attention))`` (``identity`` defaults to the
    query before ``query_pos`` is added), as mmcv.

    Args:
        embed_dims: query and value channels.
        num_heads: attention heads (``embed_dims`` divisible by it).
        num_levels: feature levels sampled.
        num_points: points sampled per head and level.
        dropout: dropout on the output before the residual add.
        batch_first: ``(N, L, C)`` inputs instead of ``(L, N, C)``.
        max_sampled_bytes: the memory budget of :func:`multi_scale_deformable_attention`.
    """

    def __init__(
        self,
        embed_dims: int = 256,
        num_heads: int = 8,
        num_levels: int = 4,
        num_points: int = 4,
        dropout: float = 0.1,
        batch_first: bool = False,
        max_sampled_bytes: int | None = DEFAULT_MAX_SAMPLED_BYTES,
    ) -> None:
        super().__init__()
        if embed_dims % num_heads:
            raise ValueError(f"embed_dims {embed_dims} is not divisible by num_heads {num_heads}")
        self.embed_dims, self.num_heads = embed_dims, num_heads
        self.num_levels, self.num_points = num_levels, num_points
        self.batch_first, self.max_sampled_bytes = batch_first, max_sampled_bytes
        self.dropout = nn.Dropout(dropout)
        self.sampling_offsets = nn.Linear(embed_dims, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dims, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dims, embed_dims)
        self.output_proj = nn.Linear(embed_dims, embed_dims)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """mmcv's init: zero offset weights with biases pointing each head in its own
        direction (the ``i``-th point ``i + 1`` steps out), zero attention weights, Xavier
        uniform projections with zero biases."""
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.num_heads, dtype=torch.float32) * (2 * math.pi / self.num_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True).values  # onto the unit square
        grid = grid[:, None, None].repeat(1, self.num_levels, self.num_points, 1)
        grid *= torch.arange(1, self.num_points + 1, dtype=torch.float32)[None, None, :, None]
        self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(
        self,
        query: Tensor,
        value: Tensor | None = None,
        identity: Tensor | None = None,
        query_pos: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        reference_points: Tensor | None = None,
        spatial_shapes: Tensor | Sequence[Sequence[int]] | None = None,
    ) -> Tensor:
        """Attend from each query to points around its reference on every level.

        Args:
            query: ``(N, Q, C)`` (``(Q, N, C)`` unless ``batch_first``).
            value: ``(N, S, C)`` flattened levels; the query when None (self-attention).
            identity: added to the output; the query (before ``query_pos``) when None.
            query_pos: added to the query before predicting offsets and weights.
            key_padding_mask: ``(N, S)`` bool, True at padding (its values are zeroed).
            reference_points: ``(N, Q, levels, 2)`` normalised ``(x, y)``, offsets in
                pixels of each level, or ``(N, Q, levels, 4)`` ``(cx, cy, w, h)`` boxes,
                offsets in ``0.5 * (w, h) / points``.
            spatial_shapes: ``(levels, 2)`` ``(h, w)``.
        """
        if reference_points is None or spatial_shapes is None:
            raise ValueError("reference_points and spatial_shapes are required")
        value = query if value is None else value
        identity = query if identity is None else identity
        if query_pos is not None:
            query = query + query_pos
        if not self.batch_first:
            query, value = query.transpose(0, 1), value.transpose(0, 1)
        n, q, _ = query.shape
        shapes = _shapes(spatial_shapes)
        value = self.value_proj(value)
        if key_padding_mask is not None:
            value = value.masked_fill(key_padding_mask[..., None], 0.0)
        value = value.view(n, value.shape[1], self.num_heads, -1)
        heads, levels, points = self.num_heads, self.num_levels, self.num_points
        offsets = self.sampling_offsets(query).view(n, q, heads, levels, points, 2)
        weights = self.attention_weights(query).view(n, q, heads, levels * points)
        weights = weights.softmax(-1).view(n, q, heads, levels, points)
        ref = reference_points[:, :, None, :, None]  # (N, Q, 1, levels, 1, 2 or 4)
        if reference_points.shape[-1] == 2:
            # offsets in pixels of each level: divide by (w, h)
            size = torch.tensor([(w, h) for h, w in shapes], dtype=query.dtype, device=query.device)
            locations = ref + offsets / size[None, None, None, :, None, :]
        elif reference_points.shape[-1] == 4:
            locations = ref[..., :2] + offsets / points * ref[..., 2:] * 0.5
        else:
            raise ValueError(
                f"reference_points must end in 2 or 4 values, got {reference_points.shape[-1]}"
            )
        out = multi_scale_deformable_attention(
            value, shapes, locations, weights, self.max_sampled_bytes
        )
        out = self.output_proj(out)
        if not self.batch_first:
            out = out.transpose(0, 1)
        return self.dropout(out) + identity
