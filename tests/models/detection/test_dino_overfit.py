"""A small DINO R18, and a tiny Grounding DINO R18 (tiny BERT) given the class names, overfit
three generated shapes images to COCO AP > 0.9."""

from __future__ import annotations

import pytest
import torch

from kdforge.data.shapes import SHAPE_CLASSES
from kdforge.models import create_model


@pytest.mark.parametrize("name", ["dino_4scale_r18", "grounding_dino_r18"])
def test_overfits_three_shapes_images(name: str, three_shapes, request) -> None:
    text = {}
    if name.startswith("grounding"):  # the class names are the text prompt
        text = {
            "class_names": list(SHAPE_CLASSES),
            "text_folder": request.getfixturevalue("tiny_bert"),
            "text_feedforward_channels": 64,
            "fusion_embed_dim": 64,
            "max_text_len": 16,
        }
    torch.manual_seed(0)
    # 30 queries, 2 + 2 layers of width 64, 5 denoising groups; the backbone frozen (its
    # optimizer step and backward were 2/3 of a step's time on one core)
    model = create_model(
        name,
        num_classes=three_shapes.data.num_classes,
        num_queries=30,
        embed_dims=64,
        num_encoder_layers=2,
        num_decoder_layers=2,
        feedforward_channels=128,
        num_dn_queries=10,
        frozen_stages=4,
        **text,
    ).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)
    three_shapes.overfit(
        model,
        optimizer,
        range(50, 151, 25),
        loss_keys={"loss_cls", "enc_loss_iou", "dn_loss_bbox", "d0.dn_loss_cls"},
        num_dets=30 * three_shapes.data.num_classes,  # 120 < 300
    )
