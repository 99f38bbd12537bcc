"""timm Vision Transformer weights mapped onto the zoo's (torchvision-keyed) ViT.

timm's ``vit_*_patch16_*`` models and torchvision's ``vit_*_16`` compute the same function
(pre-norm blocks, fused q/k/v projection in q, k, v order, exact GELU, LayerNorm eps 1e-6,
a class token whose position is in the position table): only the names differ.
"""

from __future__ import annotations

import re
from pathlib import Path

from torch import Tensor

from kdforge.errors import CheckpointError
from kdforge.models.loading import read_state_dict

__all__ = ["convert_timm_vit", "convert_timm_vit_checkpoint"]

# timm name (blocks.<i>. stripped) -> zoo name (encoder.layers.encoder_layer_<i>. stripped)
_BLOCK = {
    "norm1": "ln_1",
    "attn.qkv.weight": "self_attention.in_proj_weight",
    "attn.qkv.bias": "self_attention.in_proj_bias",
    "attn.proj": "self_attention.out_proj",
    "norm2": "ln_2",
    "mlp.fc1": "mlp.0",
    "mlp.fc2": "mlp.3",
}
_TOP = {
    "cls_token": "class_token",
    "pos_embed": "encoder.pos_embedding",
    "patch_embed.proj": "conv_proj",
    "norm": "encoder.ln",
    "head": "heads.head",
}


def _rename(key: str, table: dict[str, str]) -> str | None:
    for old, new in table.items():
        if key == old or key.startswith(old + "."):
            return new + key[len(old) :]
    return None


def convert_timm_vit(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A timm ViT state dict with the zoo ViT's keys; unknown keys are an error that lists
    them (e.g. a model with register tokens or layer scale, which the zoo ViT lacks)."""
    out, unknown = {}, []
    for key, value in state.items():
        block = re.match(r"blocks\.(\d+)\.(.+)", key)
        if block:
            rest = _rename(block.group(2), _BLOCK)
            new = rest and f"encoder.layers.encoder_layer_{block.group(1)}.{rest}"
        else:
            new = _rename(key, _TOP)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        raise CheckpointError(
            f"not a plain timm ViT: no zoo counterpart for {len(unknown)} keys "
            f"({', '.join(unknown[:6])}{' ...' if len(unknown) > 6 else ''})"
        )
    return out


def convert_timm_vit_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """Read a timm ViT checkpoint (``.pth``/``.bin``/``.safetensors``) and convert it."""
    return convert_timm_vit(read_state_dict(path))
