"""COCO mask AP: ground-truth masks score 1, shifted ones less; predicted mask probabilities
are pasted at the original image size; boxes-only annotations are refused for mask AP."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_util
from torch import Tensor, nn

from kdforge.data.coco import CocoDetection
from kdforge.data.det_transforms import collate_detection
from kdforge.data.presets import detection_eval
from kdforge.data.shapes import write_shapes_dataset
from kdforge.engine.eval.detection import encode_masks, evaluate_coco, evaluate_detector
from kdforge.errors import DataError
from kdforge.models import create_model


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_shapes_dataset(
        tmp_path_factory.mktemp("shapes"), num_train=0, num_val=4, image_size=(64, 64), crowd_prob=0
    )


def _gt_predictions(ann_file: Path, shift: int = 0) -> list[dict[str, Any]]:
    """The annotations as predictions, masks decoded from their RLEs (moved ``shift`` px)."""
    data = json.loads(ann_file.read_text())
    cats = sorted(c["id"] for c in data["categories"])
    preds = []
    for img in data["images"]:
        anns = [a for a in data["annotations"] if a["image_id"] == img["id"]]
        rles = [dict(a["segmentation"], counts=a["segmentation"]["counts"].encode()) for a in anns]
        masks = np.roll(mask_util.decode(rles), shift, axis=1).transpose(2, 0, 1)
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float).reshape(-1, 4)
        preds.append(
            {
                "image_id": img["id"],
                "boxes": torch.cat((boxes[:, :2], boxes[:, :2] + boxes[:, 2:]), 1),
                "scores": torch.linspace(1.0, 0.5, len(anns)),
                "labels": torch.tensor([cats.index(a["category_id"]) for a in anns]),
                "segmentation": encode_masks(masks),
            }
        )
    return preds


def test_mask_ap_of_the_ground_truth_and_of_shifted_masks(root: Path) -> None:
    ann_file = root / "annotations" / "instances_val.json"
    perfect = evaluate_coco(_gt_predictions(ann_file), ann_file, iou_type="segm")
    assert perfect["AP"] == pytest.approx(1.0)
    shifted = evaluate_coco(_gt_predictions(ann_file, shift=6), ann_file, iou_type="segm")
    assert 0 <= shifted["AP"] < 0.9
    # the boxes are untouched: bbox AP stays perfect
    assert evaluate_coco(_gt_predictions(ann_file, shift=6), ann_file)["AP"] == pytest.approx(1)


def test_mask_ap_needs_ground_truth_masks(root: Path, tmp_path: Path) -> None:
    data = json.loads((root / "annotations" / "instances_val.json").read_text())
    for ann in data["annotations"]:
        del ann["segmentation"]
    boxes_only = tmp_path / "boxes.json"
    boxes_only.write_text(json.dumps(data))
    preds = _gt_predictions(root / "annotations" / "instances_val.json")
    with pytest.raises(DataError, match="has boxes only: evaluate with iou_type='bbox'"):
        evaluate_coco(preds, boxes_only, iou_type="segm")


class _BoxMasks(nn.Module):
    """Predicts each image's ground-truth boxes, masks filling them (probability 1)."""

    def __init__(self, targets: list[dict[str, Tensor]]) -> None:
        super().__init__()
        self.targets = iter(targets)

    def forward(self, images: Tensor) -> Tensor:
        return images

    def predict(self, images: Tensor, sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        out = []
        for _ in sizes:
            t = next(self.targets)
            n = len(t["boxes"])
            out.append(
                {
                    "boxes": t["boxes"],
                    "scores": torch.ones(n),
                    "labels": t["labels"],
                    "mask_probs": torch.ones(n, 28, 28),
                }
            )
        return out


def test_masks_are_pasted_at_the_original_size(root: Path) -> None:
    ann_file = root / "annotations" / "instances_val.json"
    data = CocoDetection(root / "val", ann_file, detection_eval((128, 128)))  # twice the size
    loader = torch.utils.data.DataLoader(data, batch_size=2, collate_fn=collate_detection)
    targets = [data[i][1] for i in range(len(data))]
    assert targets[0]["scale_factor"] == (2.0, 2.0)
    metrics = evaluate_detector(_BoxMasks(targets), loader, torch.device("cpu"))
    # the same masks made by hand: each box filled on the 64 x 64 original
    expected = []
    for pred in _gt_predictions(ann_file):
        masks = np.zeros((len(pred["boxes"]), 64, 64), dtype=np.uint8)
        for mask, (x1, y1, x2, y2) in zip(masks, pred["boxes"].round().int().tolist(), strict=True):
            mask[y1:y2, x1:x2] = 1
        expected.append(
            pred | {"segmentation": encode_masks(masks), "scores": torch.ones(len(masks))}
        )
    by_hand = evaluate_coco(expected, ann_file, iou_type="segm")
    assert metrics["AP"] == pytest.approx(1.0) and metrics["count"] == 4
    assert metrics["segm_AP"] == pytest.approx(by_hand["AP"]) and metrics["segm_AP"] < 1


def test_cascade_mask_rcnn_reports_box_and_mask_ap(root: Path) -> None:
    data = CocoDetection(
        root / "val", root / "annotations/instances_val.json", detection_eval((64, 64))
    )
    loader = torch.utils.data.DataLoader(data, batch_size=2, collate_fn=collate_detection)
    torch.manual_seed(0)
    model = create_model(
        "cascade_mask_rcnn_r18_fpn", num_classes=data.num_classes, fpn_channels=16,
        fc_out_channels=32, mask_channels=16,
    )  # fmt: skip
    metrics = evaluate_detector(model, loader, torch.device("cpu"))
    assert {"AP", "segm_AP", "segm_APl", "count"} <= set(metrics)
    assert 0 <= metrics["segm_AP"] <= 1
