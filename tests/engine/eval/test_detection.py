"""COCO bbox evaluation: perfect, shifted and empty predictions, and the results JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from kdforge.data.coco import CocoDetection
from kdforge.data.shapes import write_shapes_dataset
from kdforge.engine.eval.detection import (
    METRICS,
    detection_confusion,
    evaluate_coco,
    to_coco_results,
)


@pytest.fixture(scope="module")
def val_set(tmp_path_factory: pytest.TempPathFactory) -> CocoDetection:
    root = write_shapes_dataset(
        tmp_path_factory.mktemp("shapes"),
        num_train=0,
        num_val=12,
        image_size=(96, 96),
        crowd_prob=0.5,
    )
    return CocoDetection(root / "val", root / "annotations" / "instances_val.json")


def _ground_truth_as_predictions(ds: CocoDetection, shift: float = 0.0) -> list[dict[str, Any]]:
    preds = []
    for i in range(len(ds)):
        t = ds[i][1]
        n = len(t["boxes"])
        scores = torch.linspace(1.0, 0.5, n)
        preds.append(
            {
                "image_id": t["image_id"],
                "boxes": t["boxes"] + shift,
                "scores": scores,
                "labels": t["labels"],
            }
        )
    return preds


def test_ground_truth_scores_one_and_shifts_score_less(
    val_set: CocoDetection, tmp_path: Path
) -> None:
    perfect = evaluate_coco(_ground_truth_as_predictions(val_set), val_set, tmp_path / "r.json")
    assert set(perfect) == set(METRICS)
    assert perfect["AP"] == perfect["AP50"] == perfect["AP75"] == 1.0
    shifted = evaluate_coco(_ground_truth_as_predictions(val_set, shift=4.0), val_set)
    assert 0.0 < shifted["AP"] < 1.0 and shifted["AP75"] <= shifted["AP50"]
    by_path = evaluate_coco(_ground_truth_as_predictions(val_set, shift=4.0), val_set.ann_file)
    assert by_path == shifted


def test_results_json_is_standard(val_set: CocoDetection, tmp_path: Path) -> None:
    out = tmp_path / "sub" / "results.json"
    preds = _ground_truth_as_predictions(val_set)
    evaluate_coco(preds, val_set, out)
    results = json.loads(out.read_text())
    assert len(results) == sum(len(p["boxes"]) for p in preds)
    first, box = results[0], preds[0]["boxes"][0].tolist()
    assert set(first) == {"image_id", "category_id", "bbox", "score"}
    assert first["bbox"] == [box[0], box[1], box[2] - box[0], box[3] - box[1]]
    assert first["category_id"] == val_set.label2cat[int(preds[0]["labels"][0])]


def test_no_detections_give_zero(val_set: CocoDetection, tmp_path: Path) -> None:
    empty = [
        {
            "image_id": img["id"],
            "boxes": torch.zeros(0, 4),
            "scores": torch.zeros(0),
            "labels": torch.zeros(0),
        }
        for img in val_set.images
    ]
    metrics = evaluate_coco(empty, val_set, tmp_path / "empty.json")
    assert metrics["AP"] == metrics["AP50"] == 0.0
    assert json.loads((tmp_path / "empty.json").read_text()) == []
    assert evaluate_coco([], val_set)["AP"] == 0.0


def test_labels_map_to_sparse_category_ids_and_bad_inputs_raise() -> None:
    pred = {"image_id": 4, "boxes": [[1.0, 2.0, 4.0, 8.0]], "scores": [0.9], "labels": [1]}
    assert to_coco_results([pred], {0: 5, 1: 90}) == [
        {"image_id": 4, "category_id": 90, "bbox": [1.0, 2.0, 3.0, 6.0], "score": 0.9}
    ]
    with pytest.raises(ValueError, match=r"image 4: labels \[2\] are outside 0..1"):
        to_coco_results([dict(pred, labels=[2])], {0: 5, 1: 90})
    with pytest.raises(ValueError, match="image 4: 1 boxes, 2 scores"):
        to_coco_results([dict(pred, scores=[0.9, 0.8])], {0: 5, 1: 90})


def test_unknown_image_and_subset(val_set: CocoDetection) -> None:
    preds = _ground_truth_as_predictions(val_set)
    with pytest.raises(ValueError, match=r"image ids \[999\]"):
        evaluate_coco([dict(preds[0], image_id=999)], val_set)
    first = preds[0]["image_id"]
    assert evaluate_coco(preds[:1], val_set, image_ids=[first])["AP50"] == 1.0


def test_confusion_follows_mmdetection_rules():
    gt_boxes = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]])
    gt_labels = torch.tensor([0, 1, 1])
    boxes = torch.tensor(
        [
            [0.0, 0, 10, 10],  # on gt 0, right label: diagonal
            [20, 20, 30, 31],  # on gt 1 (IoU 0.91), wrong label 0: off-diagonal, gt 1 missed
            [60, 60, 70, 70],  # on nothing: background row
            [40, 40, 50, 50],  # on gt 2 but below the score threshold: ignored
            [0, 0, 10, 14],  # on gt 0 with IoU 0.71, right label: counted again
        ]
    )
    scores = torch.tensor([0.9, 0.8, 0.7, 0.2, 0.6])
    labels = torch.tensor([0, 0, 1, 1, 0])
    matrix = detection_confusion(boxes, scores, labels, gt_boxes, gt_labels, 2)
    expected = torch.tensor(
        [
            [2, 0, 0],  # gt 0 matched twice by label-0 boxes
            [1, 0, 2],  # gt 1 matched by a label-0 box; gts 1 and 2 missed (background column)
            [0, 1, 0],  # the stray label-1 box
        ]
    )
    assert torch.equal(matrix, expected)


def test_confusion_without_boxes_or_ground_truth():
    none = torch.zeros(0, 4)
    gt = torch.tensor([[0.0, 0, 5, 5]])
    missed = detection_confusion(none, torch.zeros(0), torch.zeros(0), gt, torch.tensor([1]), 2)
    assert missed.tolist() == [[0, 0, 0], [0, 0, 1], [0, 0, 0]]
    stray = detection_confusion(gt, torch.tensor([0.5]), torch.tensor([0]), none, torch.zeros(0), 2)
    assert stray.tolist() == [[0, 0, 0], [0, 0, 0], [1, 0, 0]]
