"""RoIAlign (He et al., Mask R-CNN, ICCV 2017) in plain PyTorch, or torchvision's kernel
when it imports; both compute what mmcv's ``RoIAlign`` (avg pooling) does.

Each RoI ``(batch index, x1, y1, x2, y2)`` is scaled by ``spatial_scale`` (and moved by
-0.5 pixel when ``aligned``, so that a box's corners fall on pixel corners), split into
``output_size`` bins, and each bin is the mean of ``g_h x g_w`` bilinear samples at the
centres of a regular sub-grid; ``sampling_ratio <= 0`` picks ``g = ceil(bin size)`` per
RoI (adaptive). A sample more than one pixel outside the map contributes 0; one inside
that margin is clamped to the border, as torchvision and mmcv do.

The plain version groups the RoIs by their sample grid, gathers the four neighbours of
every sample from the channels-last map and lets autograd scatter the gradients back.
"""

from __future__ import annotations

import torch
from torch import Tensor

try:  # torchvision is optional: its compiled kernel is faster, the results are the same
    from torchvision.ops import roi_align as _tv_roi_align
except Exception:  # ImportError, or a torchvision built against another torch
    _tv_roi_align = None

__all__ = ["roi_align", "roi_align_plain"]


def roi_align(
    features: Tensor,
    rois: Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = 0,
    aligned: bool = True,
) -> Tensor:
    """Pool ``(K, 5)`` RoIs from ``(N, C, H, W)`` features into ``(K, C, out_h, out_w)``."""
    if _tv_roi_align is not None:
        return _tv_roi_align(features, rois, output_size, spatial_scale, sampling_ratio, aligned)
    return roi_align_plain(features, rois, output_size, spatial_scale, sampling_ratio, aligned)


def _axis_samples(
    start: Tensor, length: Tensor, bins: int, grid: int, size: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per RoI and sample along one axis: (low index, high index, low weight, high weight);
    samples beyond the one-pixel margin get both weights 0."""
    bin_size = (length / bins)[:, None]  # (R, 1)
    steps = torch.arange(bins * grid, device=start.device)
    bin_index, sub_index = (steps // grid).to(start.dtype), (steps % grid).to(start.dtype)
    # in torchvision's order of operations, so that float32 results agree to the last bits
    pos = start[:, None] + bin_index * bin_size + (sub_index + 0.5) * bin_size / grid
    outside = (pos < -1.0) | (pos > size)
    pos = pos.clamp(min=0)
    low = pos.floor().long()
    at_edge = low >= size - 1
    low = torch.where(at_edge, torch.full_like(low, size - 1), low)
    high = torch.where(at_edge, low, low + 1)
    pos = torch.where(at_edge, low.to(pos.dtype), pos)
    frac = pos - low.to(pos.dtype)
    keep = (~outside).to(pos.dtype)
    return low, high, (1 - frac) * keep, frac * keep


def roi_align_plain(
    features: Tensor,
    rois: Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = 0,
    aligned: bool = True,
) -> Tensor:
    """:func:`roi_align` without torchvision (same arguments, same result)."""
    out_h, out_w = (output_size, output_size) if isinstance(output_size, int) else output_size
    n, c, height, width = features.shape
    k = rois.shape[0]
    if k == 0:
        return features.new_zeros(0, c, out_h, out_w)
    rois = rois.to(features.dtype)
    offset = 0.5 if aligned else 0.0
    x1 = rois[:, 1] * spatial_scale - offset
    y1 = rois[:, 2] * spatial_scale - offset
    roi_w = rois[:, 3] * spatial_scale - offset - x1
    roi_h = rois[:, 4] * spatial_scale - offset - y1
    if not aligned:  # legacy: force malformed RoIs to be at least 1x1
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    if sampling_ratio > 0:
        grid_h = torch.full((k,), sampling_ratio, dtype=torch.long, device=rois.device)
        grid_w = grid_h
    else:
        grid_h = torch.ceil(roi_h / out_h).long()
        grid_w = torch.ceil(roi_w / out_w).long()
    flat = features.permute(0, 2, 3, 1).reshape(n * height * width, c)  # channels last
    batch = rois[:, 0].long()
    groups = torch.stack([grid_h, grid_w], 1)
    order, shapes, indices, weights = [], [], [], []
    for gh, gw in torch.unique(groups, dim=0).tolist():
        idx = ((grid_h == gh) & (grid_w == gw)).nonzero().squeeze(1)
        order.append(idx)
        shapes.append((len(idx), max(gh, 0), max(gw, 0)))
        if gh <= 0 or gw <= 0:  # an empty RoI (aligned, zero size) pools to 0
            continue
        ylo, yhi, wy_lo, wy_hi = _axis_samples(y1[idx], roi_h[idx], out_h, gh, height)
        xlo, xhi, wx_lo, wx_hi = _axis_samples(x1[idx], roi_w[idx], out_w, gw, width)
        base = (batch[idx] * height * width)[:, None, None]
        # the four neighbours of every sample: (R, Sy, Sx, 4)
        corners = [(ys, xs) for ys in (ylo, yhi) for xs in (xlo, xhi)]
        indices.append(
            torch.stack([base + ys[:, :, None] * width + xs[:, None, :] for ys, xs in corners], -1)
        )
        factors = [(wy, wx) for wy in (wy_lo, wy_hi) for wx in (wx_lo, wx_hi)]
        weights.append(torch.stack([wy[:, :, None] * wx[:, None, :] for wy, wx in factors], -1))
    # one gather for every group, so that backward scatters into the map once
    index = torch.cat([i.reshape(-1) for i in indices]) if indices else batch[:0]
    gathered = flat.index_select(0, index)
    gathered = gathered * torch.cat([w.reshape(-1) for w in weights] or [flat[:0, 0]])[:, None]
    sizes = [r * out_h * gh * out_w * gw * 4 for r, gh, gw in shapes if gh and gw]
    chunks = iter(torch.split(gathered, sizes))
    pooled = []
    for r, gh, gw in shapes:
        if gh == 0 or gw == 0:
            pooled.append(features.new_zeros(r, c, out_h, out_w))
            continue
        samples = next(chunks).view(r, out_h, gh, out_w, gw, 4, c)
        bins = samples.sum((2, 4, 5)) / (gh * gw)  # (R, out_h, out_w, C)
        pooled.append(bins.permute(0, 3, 1, 2))
    inverse = torch.empty(k, dtype=torch.long, device=rois.device)
    inverse[torch.cat(order)] = torch.arange(k, device=rois.device)
    return torch.cat(pooled)[inverse]
