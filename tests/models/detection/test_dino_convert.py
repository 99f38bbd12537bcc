"""kdforge convert mmdet recognises DINO checkpoints (mmdetection 3.x key names)."""

from __future__ import annotations

import pytest
import torch

from kdforge.errors import CheckpointError
from kdforge.models import create_model
from kdforge.models.detection.convert import convert_mmdet, detect_mmdet_model

SMALL = {
    "num_queries": 30,
    "embed_dims": 64,
    "num_encoder_layers": 2,
    "num_decoder_layers": 2,
    "feedforward_channels": 128,
}

# keys of mmdetection's dino-4scale_r50_8xb2-12e_coco checkpoints, one per kind of tensor
MMDET_KEYS = [
    "level_embed",
    "query_embedding.weight",
    "memory_trans_fc.weight",
    "memory_trans_norm.bias",
    "dn_query_generator.label_embedding.weight",
    "neck.convs.2.conv.weight",
    "neck.convs.0.gn.weight",
    "neck.extra_convs.0.conv.weight",
    "neck.extra_convs.0.gn.bias",
    "encoder.layers.1.self_attn.sampling_offsets.weight",
    "encoder.layers.1.self_attn.attention_weights.bias",
    "encoder.layers.1.self_attn.value_proj.weight",
    "encoder.layers.1.self_attn.output_proj.weight",
    "encoder.layers.1.ffn.layers.0.0.weight",
    "encoder.layers.1.ffn.layers.1.bias",
    "encoder.layers.1.norms.1.weight",
    "decoder.layers.1.self_attn.attn.in_proj_weight",
    "decoder.layers.1.self_attn.attn.out_proj.bias",
    "decoder.layers.1.cross_attn.sampling_offsets.bias",
    "decoder.layers.1.norms.2.weight",
    "decoder.ref_point_head.layers.1.weight",
    "decoder.norm.weight",
    "bbox_head.cls_branches.2.bias",
    "bbox_head.reg_branches.2.4.weight",
    "backbone.layer4.1.bn2.running_mean",
]


def _mmdet_state(num_classes: int = 5) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = create_model("dino_4scale_r18", num_classes=num_classes, **SMALL)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_dino_checkpoint_is_detected_and_loads_strictly() -> None:
    state = _mmdet_state()
    assert set(MMDET_KEYS) <= set(state)
    name, kwargs = detect_mmdet_model(state)
    assert name == "dino_4scale_r18"
    assert kwargs == {"num_classes": 5, **SMALL}
    checkpoint = {"meta": {"epoch": 12}, "state_dict": {f"module.{k}": v for k, v in state.items()}}
    conversion = convert_mmdet(checkpoint, config="dino-4scale_r50_8xb2-12e_coco")
    assert conversion.name == "dino_4scale_r18" and conversion.kwargs == kwargs
    model = create_model(conversion.name, **conversion.kwargs)
    model.load_state_dict(conversion.state, strict=True)
    for key in ("query_embedding.weight", "bbox_head.reg_branches.1.4.weight"):
        torch.testing.assert_close(model.state_dict()[key], state[key])


def test_dino_checkpoint_missing_a_key_is_refused() -> None:
    state = _mmdet_state()
    del state["decoder.layers.1.cross_attn.value_proj.bias"]
    with pytest.raises(CheckpointError, match="value_proj"):
        convert_mmdet(state, config="dino-4scale_r50_8xb2-12e_coco")
