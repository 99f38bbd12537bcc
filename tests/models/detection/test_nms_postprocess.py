"""NMS against a brute-force reference; score filtering, top-k and post-processing."""

from __future__ import annotations

import pytest
import torch

from kdforge.models.detection import nms as nms_module
from kdforge.models.detection.boxes import bbox_overlaps
from kdforge.models.detection.postprocess import (
    PostprocessConfig,
    filter_scores_and_topk,
    select_detections,
)


def _brute_force_nms(boxes, scores, labels, threshold) -> list[int]:
    """Visit boxes by score; keep one unless a kept box of its class overlaps it > threshold."""
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    keep: list[int] = []
    for i in order:
        if all(
            labels[i] != labels[j] or bbox_overlaps(boxes[i : i + 1], boxes[j : j + 1]) <= threshold
            for j in keep
        ):
            keep.append(i)
    return keep


def _random_boxes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 80
    wh = torch.rand(n, 2, generator=g) * 40 + 5
    scores = torch.randperm(n, generator=g).float() / n  # distinct scores
    return torch.cat([xy, xy + wh], 1), scores, torch.randint(0, 3, (n,), generator=g)


@pytest.mark.parametrize("use_torchvision", [False, True])
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.6])
def test_batched_nms_matches_brute_force(monkeypatch, use_torchvision: bool, threshold) -> None:
    if use_torchvision and nms_module._tv_batched_nms is None:
        pytest.skip("torchvision is not importable here")
    if not use_torchvision:
        monkeypatch.setattr(nms_module, "_tv_batched_nms", None)
    boxes, scores, labels = _random_boxes(120, seed=int(threshold * 10))
    keep = nms_module.batched_nms(boxes, scores, labels, threshold)
    assert keep.tolist() == _brute_force_nms(boxes, scores, labels, threshold)


def test_nms_suppresses_only_strictly_above_threshold() -> None:
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 20.0], [0.0, 0.0, 10.0, 21.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    # IoU(0, 1) = 0.5 exactly: kept at threshold 0.5; IoU(0, 2) = 0.476
    assert nms_module.nms(boxes, scores, 0.5).tolist() == [0, 1]
    assert nms_module.nms(boxes, scores, 0.45).tolist() == [0]
    assert nms_module.batched_nms(boxes[:0], scores[:0], scores[:0].long(), 0.5).numel() == 0


def test_filter_scores_and_topk() -> None:
    scores = torch.tensor([[0.9, 0.01], [0.3, 0.6], [0.04, 0.2]])
    kept, labels, priors = filter_scores_and_topk(scores, 0.05, topk=3)
    torch.testing.assert_close(kept, torch.tensor([0.9, 0.6, 0.3]))
    assert labels.tolist() == [0, 1, 0] and priors.tolist() == [0, 1, 1]
    assert filter_scores_and_topk(scores, 0.05, topk=10)[0].numel() == 4


def test_select_detections_factors_size_filter_and_max_per_img() -> None:
    boxes = torch.tensor(
        [[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [50.0, 50.0, 50.0, 60.0], [30, 30, 40, 40]]
    )
    scores = torch.tensor([0.5, 0.9, 0.99, 0.4])
    labels = torch.tensor([0, 0, 1, 2])
    factors = torch.tensor([1.0, 0.5, 1.0, 1.0])
    out = select_detections(boxes, scores, labels, PostprocessConfig(iou_threshold=0.5), factors)
    # the empty box is dropped; box 1 (0.45 after centerness) is suppressed by box 0 (0.5)
    torch.testing.assert_close(out["scores"], torch.tensor([0.5, 0.4]))
    assert out["labels"].tolist() == [0, 2]
    top1 = select_detections(boxes, scores, labels, PostprocessConfig(max_per_img=1))
    assert top1["boxes"].shape == (1, 4) and top1["scores"].item() == pytest.approx(0.9)
