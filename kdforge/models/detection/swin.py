"""Swin Transformer backbone for detection (Liu et al., ICCV 2021, "Swin Transformer:
Hierarchical Vision Transformer using Shifted Windows"), as mmdetection 3.x's
``SwinTransformer``.

Parameter and buffer names are mmdetection's (``patch_embed.projection``,
``stages.{i}.blocks.{j}.attn.w_msa.relative_position_bias_table``, ``...ffn.layers.0.0``,
``stages.{i}.downsample.reduction``, ``norm{i}``), so its detector checkpoints load
strictly; ``relative_position_index`` is a persistent buffer there too, so it is one here.
mmdetection's numerics are kept where they differ from the official code and timm:

* the patch merging concatenates each 2x2 neighbourhood channel-major (``nn.Unfold``
  order ``c * 4 + dy * 2 + dx``); the official order is position-major (``(0,0), (1,0),
  (0,1), (1,1)``): :func:`convert_official_swin` permutes ImageNet weights as
  mmdetection's ``swin_converter`` does;
* feature maps not divisible by the window are zero-padded at the bottom/right **before**
  the cyclic shift (timm pads after it), and a stage no larger than the window still
  shifts and masks (the official code and timm, by default, switch the shift off);
* every returned stage has its own LayerNorm ``norm{i}`` (no final ``norm``).

Absolute position embeddings (``use_abs_pos_embed``, off in every detection config) are
not implemented.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from kdforge.errors import CheckpointError
from kdforge.models.detection.window_attention import (
    ShiftWindowMSA,
    drop_path,
    relative_position_index,
    shifted_window_mask,
)
from kdforge.models.loading import read_state_dict

__all__ = [
    "SWIN_ARCHS",
    "SwinTransformer",
    "convert_official_swin",
    "relative_position_index",
    "shifted_window_mask",
]

# mmdetection's Swin-T/S/B configs (all: patch 4, window 7, mlp_ratio 4)
SWIN_ARCHS: dict[str, dict] = {
    "swin_t": {"embed_dims": 96, "depths": (2, 2, 6, 2), "num_heads": (3, 6, 12, 24)},
    "swin_s": {"embed_dims": 96, "depths": (2, 2, 18, 2), "num_heads": (3, 6, 12, 24)},
    "swin_b": {"embed_dims": 128, "depths": (2, 2, 18, 2), "num_heads": (4, 8, 16, 32)},
}


class FFN(nn.Module):
    """mmcv's two-layer ``FFN`` (``layers.0.0`` -> GELU -> ``layers.1``) with stochastic depth
    on its output; the residual is added by the block."""

    def __init__(self, dims: int, hidden: int, drop: float, drop_path_rate: float) -> None:
        super().__init__()
        self.drop_path_rate = drop_path_rate
        self.layers = nn.Sequential(
            nn.Sequential(nn.Linear(dims, hidden), nn.GELU(), nn.Dropout(drop)),
            nn.Linear(hidden, dims),
            nn.Dropout(drop),
        )

    def forward(self, x: Tensor) -> Tensor:
        return drop_path(self.layers(x), self.drop_path_rate, self.training)


class SwinBlock(nn.Module):
    """``x + attn(norm1(x))``, then ``x + ffn(norm2(x))``; ``with_cp`` recomputes both in the
    backward pass (activation checkpointing) when ``x`` needs gradients."""

    def __init__(
        self, dims: int, num_heads: int, window: int, shift: bool, mlp_ratio: float,
        qkv_bias: bool, drop: float, attn_drop: float, drop_path_rate: float, with_cp: bool,
    ) -> None:  # fmt: skip
        super().__init__()
        self.with_cp = with_cp
        self.norm1 = nn.LayerNorm(dims)
        shift_size = window // 2 if shift else 0
        self.attn = ShiftWindowMSA(
            dims, num_heads, window, shift_size, qkv_bias, attn_drop, drop, drop_path_rate
        )
        self.norm2 = nn.LayerNorm(dims)
        self.ffn = FFN(dims, int(dims * mlp_ratio), drop, drop_path_rate)

    def _inner(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        x = x + self.attn(self.norm1(x), hw)
        return x + self.ffn(self.norm2(x))

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        """``(B, H*W, C)`` -> the same shape."""
        if self.with_cp and x.requires_grad:
            return checkpoint(self._inner, x, hw, use_reentrant=False)
        return self._inner(x, hw)


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch x patch`` conv (``projection``) and LayerNorm on the tokens;
    the image is zero-padded at the bottom/right to whole patches."""

    def __init__(self, dims: int, patch: int, norm: bool) -> None:
        super().__init__()
        self.patch = patch
        self.projection = nn.Conv2d(3, dims, patch, stride=patch)
        self.norm = nn.LayerNorm(dims) if norm else None

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """``(B, 3, H, W)`` -> ``(B, h*w, C)`` tokens and ``(h, w) = ceil((H, W) / patch)``."""
        h, w = x.shape[-2:]
        x = self.projection(F.pad(x, (0, -w % self.patch, 0, -h % self.patch)))
        hw = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)
        return (self.norm(x) if self.norm is not None else x), hw


class PatchMerging(nn.Module):
    """Each 2x2 neighbourhood (odd sizes zero-padded) concatenated channel-major
    (``c * 4 + dy * 2 + dx``, mmdetection's ``nn.Unfold`` order), LayerNorm, then a bias-free
    linear ``4C -> 2C``."""

    def __init__(self, dims: int, norm: bool) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dims) if norm else None
        self.reduction = nn.Linear(4 * dims, 2 * dims, bias=False)

    def forward(self, x: Tensor, hw: tuple[int, int]) -> tuple[Tensor, tuple[int, int]]:
        """``(B, H*W, C)`` -> ``(B, ceil(H/2) * ceil(W/2), 2C)`` and the new ``(h, w)``."""
        (h, w), (b, _, c) = hw, x.shape
        x = F.pad(x.view(b, h, w, c), (0, 0, 0, w % 2, 0, h % 2))
        h2, w2 = x.shape[1] // 2, x.shape[2] // 2
        # (B, h2, dy, w2, dx, C) -> (B, h2, w2, C, dy, dx) -> (B, h2*w2, 4C)
        x = x.view(b, h2, 2, w2, 2, c).permute(0, 1, 3, 5, 2, 4).reshape(b, h2 * w2, 4 * c)
        x = self.norm(x) if self.norm is not None else x
        return self.reduction(x), (h2, w2)


class SwinStage(nn.Module):
    """``depth`` blocks (odd ones shifted by ``window // 2``), then an optional merging."""

    def __init__(self, dims: int, depth: int, downsample: bool, patch_norm: bool, **block) -> None:
        super().__init__()
        rates = block.pop("drop_path_rates")
        self.blocks = nn.ModuleList(
            SwinBlock(dims, shift=j % 2 == 1, drop_path_rate=rates[j], **block)
            for j in range(depth)
        )
        self.downsample = PatchMerging(dims, patch_norm) if downsample else None

    def forward(self, x: Tensor, hw: tuple[int, int]) -> tuple[Tensor, Tensor, tuple[int, int]]:
        """``(B, H*W, C)`` tokens -> the stage's output tokens, then the merged tokens and
        their ``(h, w)`` (for the last stage: the output again and ``hw``)."""
        for block in self.blocks:
            x = block(x, hw)
        if self.downsample is None:
            return x, x, hw
        return x, *self.downsample(x, hw)


class OutputNorm(nn.LayerNorm):
    """LayerNorm of a stage's ``(B, H, W, C)`` map returned as ``(B, C, H, W)``: the module
    whose output a forward hook on ``backbone.norm{i}`` reads."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x).permute(0, 3, 1, 2).contiguous()


class SwinTransformer(nn.Module):
    """Swin Transformer returning the normalised stage outputs (strides 4, 8, 16, 32).

    Args:
        embed_dims: channels of stage 0 (doubled by each patch merging).
        depths, num_heads: blocks and attention heads per stage.
        window_size: attention window side (7).
        mlp_ratio: FFN hidden width / channels.
        qkv_bias: bias on the query/key/value projection.
        drop_rate, attn_drop_rate: dropout after the projections / on attention weights.
        drop_path_rate: stochastic depth, rising linearly over all blocks from 0 to this
            (mmdetection's default 0.1; 0.2 in its RetinaNet/Mask R-CNN Swin-T configs).
        patch_norm: LayerNorm after the patch embedding and in each patch merging.
        out_indices: the stages returned (``(1, 2, 3)`` under a RetinaNet FPN).
        frozen_stages: freeze the patch embedding (0) and also stages ``0..frozen_stages-1``
            with their output norms (parameters without gradients, modules in eval mode);
            -1 freezes nothing.
        with_cp: activation checkpointing of each block (``torch.utils.checkpoint``).
        patch_size: the patch embedding's kernel and stride.

    Attributes:
        feature_info: ``module`` (``norm{i}``), ``num_chs`` and ``reduction`` of each
            returned stage.
    """

    def __init__(
        self,
        embed_dims: int = 96,
        depths: tuple[int, ...] = (2, 2, 6, 2),
        num_heads: tuple[int, ...] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        patch_norm: bool = True,
        out_indices: tuple[int, ...] = (0, 1, 2, 3),
        frozen_stages: int = -1,
        with_cp: bool = False,
        patch_size: int = 4,
    ) -> None:
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError(f"depths {depths} and num_heads {num_heads} differ in length")
        if not set(out_indices) <= set(range(len(depths))):
            raise ValueError(f"out_indices {out_indices} must lie in 0..{len(depths) - 1}")
        self.out_indices, self.frozen_stages = tuple(out_indices), frozen_stages
        self.patch_embed = PatchEmbed(embed_dims, patch_size, patch_norm)
        self.drop_after_pos = nn.Dropout(drop_rate)
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.stages = nn.ModuleList()
        self.feature_info: list[dict] = []
        for i, (depth, heads) in enumerate(zip(depths, num_heads, strict=True)):
            dims = embed_dims * 2**i
            self.stages.append(
                SwinStage(
                    dims, depth, i < len(depths) - 1, patch_norm, num_heads=heads,
                    window=window_size, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop=drop_rate,
                    attn_drop=attn_drop_rate, with_cp=with_cp,
                    drop_path_rates=rates[sum(depths[:i]) : sum(depths[: i + 1])],
                )
            )  # fmt: skip
            if i in self.out_indices:
                self.add_module(f"norm{i}", OutputNorm(dims))
                self.feature_info.append(
                    {"module": f"norm{i}", "num_chs": dims, "reduction": patch_size * 2**i}
                )
        for m in self.modules():  # mmdetection's init without pretrained weights
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        self._freeze_stages()

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        frozen: list[nn.Module] = [self.patch_embed, self.drop_after_pos]
        for i in range(self.frozen_stages):
            frozen.append(self.stages[i])
            if i in self.out_indices:
                frozen.append(getattr(self, f"norm{i}"))
        return frozen

    def _freeze_stages(self) -> None:
        for module in self._frozen_modules():
            module.eval()
            module.requires_grad_(False)

    def train(self, mode: bool = True) -> SwinTransformer:
        """Set train/eval mode, keeping the frozen stages in eval mode."""
        super().train(mode)
        for module in self._frozen_modules():
            module.eval()
        return self

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        """``(N, 3, H, W)`` -> the selected stage outputs ``(N, C_i, h_i, w_i)``."""
        x, hw = self.patch_embed(x)
        x = self.drop_after_pos(x)
        outs = []
        for i, stage in enumerate(self.stages):
            out, x, next_hw = stage(x, hw)
            if i in self.out_indices:
                outs.append(getattr(self, f"norm{i}")(out.view(out.shape[0], *hw, out.shape[-1])))
            hw = next_hw
        return tuple(outs)

    def load_official(self, path_or_state: str | Path | dict[str, Tensor]) -> SwinTransformer:
        """Load an ImageNet checkpoint of the official release (``swin_tiny_patch4_window7_
        224.pth``) through :func:`convert_official_swin`, as mmdetection's
        ``convert_weights=True``: the output norms ``norm{i}`` keep their initial values.

        Raises:
            CheckpointError: a key left without a value or without a place, or a shape
                mismatch.
        """
        state = path_or_state
        if not isinstance(state, dict):
            state = read_state_dict(path_or_state)
        state = convert_official_swin(state)
        own = self.state_dict()
        for key, value in own.items():  # constants and the detection-only output norms
            if key.endswith("relative_position_index") or key.startswith("norm"):
                state.setdefault(key, value)
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
        if missing or unexpected or wrong:
            raise CheckpointError(
                f"the Swin checkpoint does not fit this backbone: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}, wrong shapes {wrong[:5]}; is it the official "
                "release of the same size (embed_dims, depths, window)?"
            )
        self.load_state_dict(state)
        return self


def _merge_order(x: Tensor) -> Tensor:
    """Patch-merging weights on the last dim from the official (position-major, positions
    ``(0,0), (1,0), (0,1), (1,1)`` as ``(dy, dx)``) to the channel-major unfold order."""
    c = x.shape[-1] // 4
    x = x.reshape(*x.shape[:-1], 4, c)[..., [0, 2, 1, 3], :]  # positions to dy*2 + dx
    return x.transpose(-1, -2).reshape(*x.shape[:-2], 4 * c)


def convert_official_swin(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename and permute an official (microsoft/Swin-Transformer) ImageNet state dict to this
    backbone's keys, as mmdetection's ``swin_converter``; the classifier ``head``, the final
    ``norm``, the ``attn_mask`` and ``relative_position_index`` buffers are dropped."""
    out = {}
    for key, value in state.items():
        if key.startswith(("head.", "norm.")) or key.endswith(("attn_mask", "position_index")):
            continue
        if key.startswith("layers."):
            key = "stages." + key.removeprefix("layers.")
            key = key.replace(".attn.", ".attn.w_msa.").replace(".mlp.fc1.", ".ffn.layers.0.0.")
            key = key.replace(".mlp.fc2.", ".ffn.layers.1.")
            if ".downsample." in key:
                value = _merge_order(value)
        key = key.replace("patch_embed.proj.", "patch_embed.projection.")
        out[key] = value
    return out
