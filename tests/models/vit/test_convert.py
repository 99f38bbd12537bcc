"""timm ViT checkpoints -> zoo ViT files (``kdforge convert timm``): names, model choice,
refusals. tests/interop/ checks the outputs against real timm models."""

from __future__ import annotations

import pytest
import torch

from kdforge import create_model, load_model
from kdforge.cli import main
from kdforge.errors import CheckpointError
from kdforge.models.vit.convert import convert_timm_vit


def timm_keys(zoo_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A zoo ViT state dict under timm's names, written out by hand from timm's layout."""
    top = {
        "class_token": "cls_token",
        "encoder.pos_embedding": "pos_embed",
        "conv_proj.weight": "patch_embed.proj.weight",
        "conv_proj.bias": "patch_embed.proj.bias",
        "encoder.ln.weight": "norm.weight",
        "encoder.ln.bias": "norm.bias",
        "heads.head.weight": "head.weight",
        "heads.head.bias": "head.bias",
    }
    block = {
        "ln_1": "norm1",
        "self_attention.in_proj_weight": "attn.qkv.weight",
        "self_attention.in_proj_bias": "attn.qkv.bias",
        "self_attention.out_proj": "attn.proj",
        "ln_2": "norm2",
        "mlp.0": "mlp.fc1",
        "mlp.3": "mlp.fc2",
    }
    out = {}
    for key, value in zoo_state.items():
        if key in top:
            out[top[key]] = value
            continue
        prefix, rest = key.removeprefix("encoder.layers.encoder_layer_").split(".", 1)
        new = next(new + rest[len(old) :] for old, new in block.items() if rest.startswith(old))
        out[f"blocks.{prefix}.{new}"] = value
    return out


def test_names_map_one_to_one():
    zoo = create_model("vit_ti_16").state_dict()
    converted = convert_timm_vit(timm_keys(zoo))
    assert converted.keys() == zoo.keys()
    assert all(converted[k] is zoo[k] for k in zoo)


def test_cli_writes_a_file_load_model_rebuilds(tmp_path, capsys):
    torch.manual_seed(0)
    reference = create_model("vit_ti_16", num_classes=7).eval()
    for p in reference.parameters():
        p.data.normal_(0, 0.02)
    torch.save({"model": timm_keys(reference.state_dict())}, tmp_path / "deit_tiny.pth")
    main(["convert", "timm", str(tmp_path / "deit_tiny.pth"), str(tmp_path / "vit.safetensors")])
    assert "-> vit_ti_16" in capsys.readouterr().out
    model = load_model(tmp_path / "vit.safetensors").eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


def test_keys_the_zoo_vit_lacks_are_named(tmp_path):
    state = timm_keys(create_model("vit_ti_16").state_dict())
    state["reg_token"] = torch.zeros(1, 4, 192)  # a ViT with register tokens
    with pytest.raises(CheckpointError, match="no zoo counterpart for 1 keys.*reg_token"):
        convert_timm_vit(state)


def test_other_patch_sizes_are_refused(tmp_path):
    state = timm_keys(create_model("vit_ti_16").state_dict())
    state["patch_embed.proj.weight"] = torch.zeros(192, 3, 8, 8)
    torch.save(state, tmp_path / "vit_p8.pth")
    with pytest.raises(SystemExit, match="patch 8.*the zoo ViTs are patch 16"):
        main(["convert", "timm", str(tmp_path / "vit_p8.pth"), str(tmp_path / "out.safetensors")])
    assert not (tmp_path / "out.safetensors").exists()
