"""The torchvision ops kdforge reimplements equal torchvision's on the CPU."""

from __future__ import annotations

import pytest
import torch
import torchvision

from kdforge.models.detection import nms as nms_module


def random_boxes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 200
    wh = torch.rand(n, 2, generator=g) * 60 + 1
    boxes = torch.cat([xy, xy + wh], 1)
    scores = torch.randperm(n, generator=g).float() / n  # distinct: one valid order
    labels = torch.randint(0, 5, (n,), generator=g)
    return boxes, scores, labels


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("seed", range(3))
def test_plain_torch_nms_equals_torchvision(monkeypatch, threshold, seed):
    boxes, scores, labels = random_boxes(500, seed)
    expected = torchvision.ops.nms(boxes, scores, threshold)
    assert torch.equal(nms_module.nms(boxes, scores, threshold), expected)
    monkeypatch.setattr(nms_module, "_tv_batched_nms", None)  # force the plain-torch path
    expected = torchvision.ops.batched_nms(boxes, scores, labels, threshold)
    assert torch.equal(nms_module.batched_nms(boxes, scores, labels, threshold), expected)


def test_nms_uses_torchvision_when_it_imports():
    assert nms_module._tv_batched_nms is torchvision.ops.batched_nms
