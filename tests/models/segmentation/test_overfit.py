"""A zoo segmentor, trained with the task loss plus the 0.4-weighted auxiliary loss, learns
three generated shapes images (an end-to-end check of data, model, loss and mIoU)."""

from __future__ import annotations

import torch

from kdforge.data.cityscapes import SegmentationFolder
from kdforge.data.seg_transforms import SegNormalize, collate_segmentation
from kdforge.data.shapes import SEMANTIC_CLASSES, write_shapes_dataset
from kdforge.engine.eval.segmentation import evaluate_segmentation
from kdforge.models import create_model
from kdforge.models.segmentation import AUX_LOSS_WEIGHT, segmentation_loss
from kdforge.taps import FeatureTaps


def test_pspnet_r18_overfits_three_shapes_images(tmp_path) -> None:
    root = write_shapes_dataset(
        tmp_path, num_train=3, num_val=0, image_size=(64, 64), max_objects=2, crowd_prob=0.0, seed=2
    )
    data = SegmentationFolder(
        root / "train", root / "masks" / "train", SegNormalize(), SEMANTIC_CLASSES
    )
    images, masks = collate_segmentation([data[i] for i in range(len(data))])  # (3, 3, 64, 64)
    torch.manual_seed(0)
    model = create_model("pspnet_r18", num_classes=len(SEMANTIC_CLASSES))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    with FeatureTaps(model, [model.aux_name]) as taps:
        model.train()
        for _ in range(50):
            loss = segmentation_loss(model(images), masks)
            loss = loss + AUX_LOSS_WEIGHT * segmentation_loss(taps.outputs[model.aux_name], masks)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    metrics = evaluate_segmentation(
        model,
        [(images, masks)],
        torch.device("cpu"),
        len(SEMANTIC_CLASSES),
        class_names=SEMANTIC_CLASSES,
    )
    assert losses[-1] < losses[0] / 5
    assert metrics["mIoU"] > 75 and metrics["aAcc"] > 95, metrics["table"]
    assert model.training  # evaluate_segmentation puts the model back in training mode
