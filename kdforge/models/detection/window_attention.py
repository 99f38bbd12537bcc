"""Shifted-window multi-head self-attention of the Swin Transformer (Liu et al., ICCV 2021),
with mmdetection's names (``w_msa.relative_position_bias_table``, ``w_msa.qkv``...) and
numerics: maps are zero-padded to whole windows before the cyclic shift, and the mask
between regions of the rolled map is -100."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ShiftWindowMSA",
    "WindowMSA",
    "drop_path",
    "relative_position_index",
    "shifted_window_mask",
]


def relative_position_index(window: int) -> Tensor:
    """``(w*w, w*w)`` index into the ``(2w-1)^2`` bias table of the offset between two tokens
    of a window (row-major): ``(dy + w - 1) * (2w - 1) + (dx + w - 1)``, ``d = a - b``."""
    ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy = ys[:, None] - ys[None, :] + window - 1
    dx = xs[:, None] - xs[None, :] + window - 1
    return dy * (2 * window - 1) + dx


def _partition(x: Tensor, window: int) -> Tensor:
    """``(B, H, W, C)`` -> ``(B * nW, w*w, C)``, windows in row-major order."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c).transpose(2, 3)
    return x.reshape(-1, window * window, c)


def _reverse(windows: Tensor, window: int, height: int, width: int) -> Tensor:
    """``(B * nW, w*w, C)`` -> ``(B, H, W, C)`` (inverse of :func:`_partition`)."""
    c = windows.shape[-1]
    x = windows.view(-1, height // window, width // window, window, window, c).transpose(2, 3)
    return x.reshape(-1, height, width, c)


def shifted_window_mask(
    height: int, width: int, window: int, shift: int, device: torch.device | None = None
) -> Tensor:
    """Additive attention mask ``(nW, w*w, w*w)`` of shifted windows on a padded
    ``height x width`` map: 0 between tokens of one region of the rolled map, -100 across
    regions (bands ``[0, H-w)``, ``[H-w, H-shift)``, ``[H-shift, H)`` per axis, mmdetection's
    values)."""

    def bands(size: int) -> Tensor:
        band = torch.zeros(size, dtype=torch.long, device=device)
        band[size - window : size - shift] = 1
        band[size - shift :] = 2
        return band

    region = bands(height)[:, None] * 3 + bands(width)[None, :]  # (H, W) in 0..8
    windows = _partition(region[None, :, :, None], window).squeeze(-1)  # (nW, w*w)
    differ = windows[:, None, :] != windows[:, :, None]
    return torch.zeros(differ.shape, device=device).masked_fill(differ, -100.0)


def drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth: zero whole samples with probability ``p``, scale the rest."""
    if p == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1 - p)
    return x * keep / (1 - p)


class WindowMSA(nn.Module):
    """Multi-head self-attention within windows, with a learned relative position bias."""

    def __init__(
        self, dims: int, num_heads: int, window: int, qkv_bias: bool, attn_drop: float,
        proj_drop: float,
    ) -> None:  # fmt: skip
        super().__init__()
        self.num_heads, self.window = num_heads, window
        self.scale = (dims // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window - 1) ** 2, num_heads)
        )
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(dims, dims * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dims, dims)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """``(B * nW, N, C)`` windows (and an ``(nW, N, N)`` mask) -> ``(B * nW, N, C)``."""
        bw, n, c = x.shape
        q, k, v = self.qkv(x).view(bw, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        attn = (q * self.scale) @ k.transpose(-2, -1)  # (B*nW, heads, N, N)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        attn = attn + bias.view(n, n, -1).permute(2, 0, 1)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(bw // nw, nw, self.num_heads, n, n) + mask[None, :, None]
            attn = attn.view(bw, self.num_heads, n, n)
        attn = self.attn_drop(attn.softmax(dim=-1))
        return self.proj_drop(self.proj((attn @ v).transpose(1, 2).reshape(bw, n, c)))


class ShiftWindowMSA(nn.Module):
    """Pads to whole windows, rolls by ``shift`` (masking across regions), attends per
    window, rolls back, crops, then applies stochastic depth."""

    def __init__(
        self, dims: int, num_heads: int, window: int, shift: int, qkv_bias: bool, attn_drop: float,
        proj_drop: float, drop_path_rate: float,
    ) -> None:  # fmt: skip
        super().__init__()
        if not 0 <= shift < window:
            raise ValueError(f"shift must be in [0, window={window}), got {shift}")
        self.window, self.shift, self.drop_path_rate = window, shift, drop_path_rate
        self.w_msa = WindowMSA(dims, num_heads, window, qkv_bias, attn_drop, proj_drop)

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        """``(B, H*W, C)`` tokens of an ``hw`` map -> the same shape."""
        (h, w), (b, _, c), win = hw, x.shape, self.window
        x = F.pad(x.view(b, h, w, c), (0, 0, 0, (win - w % win) % win, 0, (win - h % win) % win))
        hp, wp = x.shape[1:3]
        mask = None
        if self.shift:
            x = torch.roll(x, (-self.shift, -self.shift), dims=(1, 2))
            mask = shifted_window_mask(hp, wp, win, self.shift, x.device).to(x.dtype)
        x = _reverse(self.w_msa(_partition(x, win), mask), win, hp, wp)
        if self.shift:
            x = torch.roll(x, (self.shift, self.shift), dims=(1, 2))
        x = x[:, :h, :w].reshape(b, h * w, c)
        return drop_path(x, self.drop_path_rate, self.training)
