"""Each detector overfits three synthetic 64x64 images until its top detection is right."""

from __future__ import annotations

import pytest
import torch

from kdforge.models import create_model
from kdforge.models.detection.boxes import bbox_overlaps

BOXES = torch.tensor([[8.0, 10.0, 40.0, 34.0], [20.0, 16.0, 56.0, 60.0], [4.0, 30.0, 30.0, 58.0]])


def _images() -> torch.Tensor:
    """Dim noise with one red, green or blue rectangle per image; class = colour."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 64, 64, generator=g) * 0.2
    for i, (x1, y1, x2, y2) in enumerate(BOXES.long().tolist()):
        images[i, :, y1:y2, x1:x2] = torch.eye(3)[i][:, None, None]
    return (images - 0.5) / 0.25


def _top_detections_right(dets: list[dict]) -> int:
    """How many images' top detection has the right class and IoU > 0.5 with the box."""
    return sum(
        len(d["scores"]) > 0
        and d["labels"][0].item() == i
        and bbox_overlaps(d["boxes"][:1], BOXES[i : i + 1]).item() > 0.5
        for i, d in enumerate(dets)
    )


@pytest.mark.parametrize("kind", ["retinanet", "fcos", "atss", "gfl"])
def test_detector_overfits_three_images(kind: str, overfit) -> None:
    torch.manual_seed(0)
    model = create_model(
        f"{kind}_r18_fpn", num_classes=3, fpn_channels=32, feat_channels=32, stacked_convs=2
    ).train()
    images = _images()
    targets = [
        {"boxes": BOXES[i : i + 1], "labels": torch.tensor([i]), "img_shape": (64, 64)}
        for i in range(3)
    ]
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    # score > 2: all three images right
    overfit(model, optimizer, images, targets, _top_detections_right, 2, range(20, 151, 10))
