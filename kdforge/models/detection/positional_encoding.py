"""Sine positional encoding of feature maps (Carion et al., "End-to-End Object Detection
with Transformers", ECCV 2020), mmdetection's ``SinePositionalEncoding``, and the sine
encoding of normalised boxes that DINO's decoder turns into positional queries."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["SinePositionalEncoding", "coordinate_to_encoding"]


def _sin_cos(embed: Tensor, dim_t: Tensor) -> Tensor:
    """``(...)`` positions -> ``(..., F)``: sin of even, cos of odd frequencies, interleaved."""
    pos = embed[..., None] / dim_t
    return torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=-1).flatten(-2)


def _frequencies(num_feats: int, temperature: float, like: Tensor) -> Tensor:
    dim_t = torch.arange(num_feats, dtype=like.dtype, device=like.device)
    return temperature ** (2 * (dim_t // 2) / num_feats)


class SinePositionalEncoding(nn.Module):
    """Per-pixel encoding of the (cumulative, unpadded) row and column index.

    With ``normalize``, the positions ``1..h`` of the valid region become
    ``(y + offset) / (h_valid + eps) * scale``; padding (``mask`` True) does not count. The
    output concatenates ``num_feats`` y channels then ``num_feats`` x channels. DINO uses
    ``num_feats=128, normalize=True, offset=0.0, temperature=20``. No parameters.

    Args:
        num_feats: channels per axis (the output has twice as many).
        temperature: base of the frequencies.
        normalize: scale positions to ``(0, scale]`` over the valid region.
        scale: the normalised range (``2 * pi``).
        eps: added to the denominator of the normalisation.
        offset: added to the positions before normalising.
    """

    def __init__(
        self,
        num_feats: int = 128,
        temperature: float = 10000,
        normalize: bool = False,
        scale: float = 2 * math.pi,
        eps: float = 1e-6,
        offset: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_feats, self.temperature, self.normalize = num_feats, temperature, normalize
        self.scale, self.eps, self.offset = scale, eps, offset

    def forward(self, mask: Tensor) -> Tensor:
        """``(N, H, W)`` bool mask (True at padding) -> ``(N, 2 * num_feats, H, W)``."""
        not_mask = (~mask.bool()).float()
        y = not_mask.cumsum(1)  # (N, H, W): 1-based row index within the valid region
        x = not_mask.cumsum(2)
        if self.normalize:
            y = (y + self.offset) / (y[:, -1:, :] + self.eps) * self.scale
            x = (x + self.offset) / (x[:, :, -1:] + self.eps) * self.scale
        dim_t = _frequencies(self.num_feats, self.temperature, y)
        return torch.cat((_sin_cos(y, dim_t), _sin_cos(x, dim_t)), dim=-1).permute(0, 3, 1, 2)


def coordinate_to_encoding(
    coords: Tensor, num_feats: int = 128, temperature: float = 10000, scale: float = 2 * math.pi
) -> Tensor:
    """``(..., 2)`` ``(x, y)`` or ``(..., 4)`` ``(cx, cy, w, h)`` in ``[0, 1]`` ->
    ``(..., 2 * num_feats)`` or ``(..., 4 * num_feats)``: the sine encodings of ``y, x``
    (then ``w, h``) concatenated (mmdetection's ``coordinate_to_encoding``)."""
    if coords.shape[-1] not in (2, 4):
        raise ValueError(f"coordinates must end in 2 or 4 values, got {coords.shape[-1]}")
    dim_t = _frequencies(num_feats, temperature, coords)
    enc = [_sin_cos(coords[..., i] * scale, dim_t) for i in range(coords.shape[-1])]
    enc[0], enc[1] = enc[1], enc[0]  # y before x
    return torch.cat(enc, dim=-1)
