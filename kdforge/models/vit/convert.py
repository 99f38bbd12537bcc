"""timm Vision Transformer weights mapped onto the zoo's (torchvision-keyed) ViT.

timm's ``vit_*_patch16_224`` models (and DeiT's) and torchvision's ``vit_*_16`` compute the
same function (pre-norm blocks, fused q/k/v projection in q, k, v order, exact GELU,
LayerNorm eps 1e-6, a class token whose position is in the position table): only the names
differ. ``kdforge convert timm SRC DST`` writes such a checkpoint as a zoo ViT file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from torch import Tensor

from kdforge.errors import CheckpointError
from kdforge.models._convert import Conversion
from kdforge.models.factory import create_model
from kdforge.models.loading import read_state_dict

__all__ = ["convert_timm", "convert_timm_vit"]

# embedding width -> zoo ViT of that width (all 12 layers, patch 16, 224x224)
_WIDTHS = {192: "vit_ti_16", 384: "vit_s_16", 768: "vit_b_16"}

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


def convert_timm(
    src: str | Path, config: str | None = None, model: str | None = None, **overrides: Any
) -> Conversion:
    """Convert a timm ViT checkpoint (``.pth``/``.bin``/``.safetensors``) to the zoo ViT of
    its width, checked by a strict load (``config`` is unused: the weights say everything).

    Raises:
        CheckpointError: keys the zoo ViT lacks, no classifier, an unknown width, a patch
            size or image size other than the zoo's, or weights that do not load strictly.
    """
    del config  # the interface of the OpenMMLab converters; timm files need no config name
    state = convert_timm_vit(read_state_dict(src))
    if "heads.head.weight" not in state or "conv_proj.weight" not in state:
        raise CheckpointError(f"{src}: a timm ViT with a classifier head is needed")
    width, _, patch, _ = state["conv_proj.weight"].shape
    tokens = state["encoder.pos_embedding"].shape[1]
    if patch != 16 or tokens != 197 or (model is None and width not in _WIDTHS):
        raise CheckpointError(
            f"{src}: width {width}, patch {patch}, {tokens} tokens; the zoo ViTs are patch 16 "
            f"at 224x224 (197 tokens) of width {', '.join(map(str, _WIDTHS))}"
        )
    name = model or _WIDTHS[width]
    kwargs = {"num_classes": state["heads.head.weight"].shape[0], **overrides}
    try:
        create_model(name, **kwargs).load_state_dict(state, strict=True)
    except RuntimeError as err:  # missing, unexpected or misshapen keys
        raise CheckpointError(f"{src} does not fit {name}: {err}") from None
    origin = {k: "option" if k in overrides else "weights" for k in kwargs}
    return Conversion(name, kwargs, origin, state)
