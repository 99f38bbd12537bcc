"""A small Faster R-CNN R18 overfits three generated shapes images to COCO AP > 0.9."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kdforge.data.coco import CocoDetection
from kdforge.data.presets import detection_eval
from kdforge.data.shapes import write_shapes_dataset
from kdforge.engine.eval.detection import evaluate_coco
from kdforge.models import create_model


def test_faster_rcnn_overfits_three_shapes_images(tmp_path: Path) -> None:
    # seed 3: six shapes of all four classes, every side >= 22 px. mmdetection's RPN gives a
    # box no positive anchor below ~18 px (IoU with the 32 px anchors under min_pos_iou 0.3)
    root = write_shapes_dataset(
        tmp_path, num_train=3, num_val=0, image_size=(96, 96), max_objects=2, crowd_prob=0.0, seed=3
    )
    data = CocoDetection(
        root / "train", root / "annotations/instances_train.json", detection_eval((96, 96))
    )
    images = torch.stack([data[i][0] for i in range(3)])
    targets = [data[i][1] for i in range(3)]
    torch.manual_seed(0)
    model = create_model(
        "faster_rcnn_r18_fpn", num_classes=data.num_classes, fpn_channels=32, fc_out_channels=128
    ).train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    history = []
    for step in range(1, 201):
        losses = model.loss(model(images), targets, (96, 96))
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        if step >= 100 and step % 20 == 0:
            model.eval()
            with torch.no_grad():
                dets = model.predict(model(images), [t["img_shape"] for t in targets])
            model.train()
            preds = [{"image_id": t["image_id"], **d} for t, d in zip(targets, dets, strict=True)]
            history.append((step, evaluate_coco(preds, data)["AP"]))
            if history[-1][1] > 0.9:
                return
    pytest.fail(f"COCO AP (step, AP) {history} never above 0.9; last losses {losses}")
