"""A small Faster R-CNN R18 overfits three generated shapes images to COCO AP > 0.9."""

from __future__ import annotations

import torch

from kdforge.models import create_model


def test_faster_rcnn_overfits_three_shapes_images(three_shapes) -> None:
    torch.manual_seed(0)
    model = create_model(
        "faster_rcnn_r18_fpn",
        num_classes=three_shapes.data.num_classes,
        fpn_channels=32,
        fc_out_channels=128,
    ).train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    three_shapes.overfit(model, optimizer, range(100, 201, 20))
