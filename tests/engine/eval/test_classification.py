"""Classifier evaluation: top-1/top-5 and loss against hand counts, and confusion counts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdforge.engine.eval.classification import classification_confusion, evaluate_classifier


class Fixed(nn.Module):
    """Returns the given logits for a batch of indices (the images)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits[images.long()]


def test_top1_top5_and_loss_over_batches_and_max_batches() -> None:
    logits = torch.randn(8, 6, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([0, 1, 2, 3, 4, 5, 0, 1])
    batches = [(torch.arange(4), targets[:4]), (torch.arange(4, 8), targets[4:])]
    model = Fixed(logits).train()
    metrics = evaluate_classifier(model, batches, torch.device("cpu"))
    top = logits.topk(5, dim=1).indices
    assert metrics["top1"] == pytest.approx(100 * (top[:, 0] == targets).float().mean().item())
    assert metrics["top5"] == pytest.approx(100 * (top == targets[:, None]).any(1).float().mean())
    assert metrics["loss"] == pytest.approx(F.cross_entropy(logits, targets).item(), rel=1e-6)
    assert metrics["count"] == 8 and model.training  # the mode is put back
    assert evaluate_classifier(model, batches, torch.device("cpu"), max_batches=1)["count"] == 4


def test_confusion_counts_match_a_hand_count() -> None:
    target = torch.tensor([0, 0, 1, 2, 2, 2])
    pred = torch.tensor([0, 1, 1, 2, 0, 2])
    expected = torch.tensor([[1, 1, 0], [0, 1, 0], [1, 0, 2]])
    assert torch.equal(classification_confusion(pred, target, 3), expected)
