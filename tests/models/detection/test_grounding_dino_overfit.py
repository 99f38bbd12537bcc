"""A tiny Grounding DINO R18 (tiny BERT) overfits three shapes images, given their class
names, to COCO AP > 0.9."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kdforge.data.coco import CocoDetection
from kdforge.data.presets import detection_eval
from kdforge.data.shapes import SHAPE_CLASSES, write_shapes_dataset
from kdforge.engine.eval.detection import evaluate_coco
from kdforge.models import create_model


def test_grounding_dino_overfits_three_shapes_images(tmp_path: Path, tiny_bert: Path) -> None:
    root = write_shapes_dataset(
        tmp_path, num_train=3, num_val=0, image_size=(96, 96), max_objects=2, crowd_prob=0.0, seed=3
    )
    data = CocoDetection(
        root / "train", root / "annotations/instances_train.json", detection_eval((96, 96))
    )
    images = torch.stack([data[i][0] for i in range(3)])
    targets = [data[i][1] for i in range(3)]
    torch.manual_seed(0)
    # 30 queries, 2 + 2 layers of width 64, 5 denoising groups, the backbone frozen (as the
    # DINO overfit test); the class names are the text prompt
    model = create_model(
        "grounding_dino_r18",
        num_classes=data.num_classes,
        class_names=list(SHAPE_CLASSES),
        text_folder=tiny_bert,
        num_queries=30,
        embed_dims=64,
        num_encoder_layers=2,
        num_decoder_layers=2,
        feedforward_channels=128,
        text_feedforward_channels=64,
        fusion_embed_dim=64,
        max_text_len=16,
        num_dn_queries=10,
        frozen_stages=4,
    ).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)
    history = []
    for step in range(1, 151):
        losses = model.loss(model(images), targets, (96, 96))
        assert {"loss_cls", "enc_loss_iou", "dn_loss_bbox", "d0.dn_loss_cls"} <= set(losses)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        if step >= 50 and step % 25 == 0:
            model.eval()
            with torch.no_grad():
                dets = model.predict(model(images), [t["img_shape"] for t in targets])
            model.train()
            assert all(len(d["scores"]) == 30 * data.num_classes for d in dets)  # 120 < 300
            preds = [{"image_id": t["image_id"], **d} for t, d in zip(targets, dets, strict=True)]
            history.append((step, evaluate_coco(preds, data)["AP"]))
            if history[-1][1] > 0.9:
                return
    pytest.fail(f"COCO AP (step, AP) {history} never above 0.9; last losses {losses}")
