"""kdforge convert mmdet recognises Grounding DINO checkpoints (mmdetection 3.x key names,
BERT inside them as transformers 4 saved it); the tiny BERT comes from tests/conftest.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kdforge.data.shapes import SHAPE_CLASSES
from kdforge.errors import CheckpointError
from kdforge.models import create_model
from kdforge.models.detection.convert import convert_mmdet, detect_mmdet_model

SMALL = {
    "num_queries": 30,
    "embed_dims": 64,
    "num_encoder_layers": 2,
    "num_decoder_layers": 2,
    "feedforward_channels": 128,
    "text_feedforward_channels": 32,
    "fusion_embed_dim": 64,
}
BERT = "language_model.language_backbone.body.model."
NAMES = list(SHAPE_CLASSES)


def _mmdet_state(folder: Path) -> dict[str, torch.Tensor]:
    """A tiny model's weights as an mmdetection checkpoint holds them: with BERT's
    position_ids buffer (transformers 4) and a pooler."""
    torch.manual_seed(0)
    model = create_model(
        "grounding_dino_r18", num_classes=4, class_names=NAMES, text_folder=folder, **SMALL
    )
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state[BERT + "embeddings.position_ids"] = torch.arange(64)[None]
    state[BERT + "pooler.dense.weight"] = torch.zeros(32, 32)
    return state


def test_grounding_dino_checkpoint_is_detected_and_loads_strictly(tiny_bert: Path) -> None:
    state = _mmdet_state(tiny_bert)
    name, kwargs = detect_mmdet_model(state)
    assert name == "grounding_dino_r18"
    assert kwargs == {"num_classes": 4, **SMALL, "load_text_weights": False}
    checkpoint = {"meta": {"epoch": 12}, "state_dict": {f"module.{k}": v for k, v in state.items()}}
    conversion = convert_mmdet(
        checkpoint,
        config="grounding_dino_r50_scratch_8xb2_1x_coco",
        text_folder=str(tiny_bert),
        class_names=NAMES,
    )
    assert conversion.name == "grounding_dino_r18"
    assert not any(k.endswith(("position_ids", "pooler.dense.weight")) for k in conversion.state)
    model = create_model(conversion.name, **conversion.kwargs)
    model.load_state_dict(conversion.state, strict=True)
    for key in (BERT + "encoder.layer.0.output.dense.weight", "encoder.fusion_layers.1.gamma_l"):
        torch.testing.assert_close(model.state_dict()[key], state[key])


def test_grounding_dino_conversion_needs_the_text_folder_and_names(tiny_bert: Path) -> None:
    state = _mmdet_state(tiny_bert)
    with pytest.raises(CheckpointError, match="text_folder=.*class_names="):
        convert_mmdet(state, config="grounding_dino_r50_scratch_8xb2_1x_coco")
    del state["encoder.text_layers.1.norms.0.bias"]
    with pytest.raises(CheckpointError, match="text_layers.1.norms.0.bias"):
        convert_mmdet(state, text_folder=str(tiny_bert), class_names=NAMES)
