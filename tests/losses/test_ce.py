"""The task cross-entropy term against an explicit float64 loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdforge.losses.base import DistillBatch
from kdforge.losses.ce import CrossEntropyLoss


def reference_ce(
    logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100, smoothing: float = 0.0
) -> float:
    """Mean over non-ignored samples of ``(1 − ε)·(−log p_y) + ε·mean_k(−log p_k)``."""
    z = logits.double().numpy()
    total, count = 0.0, 0
    for n in range(z.shape[0]):
        y = int(targets[n])
        if y == ignore_index:
            continue
        row = z[n] - z[n].max()
        log_norm = math.log(np.exp(row).sum())
        nll = log_norm - row[y]
        uniform = sum(log_norm - row[k] for k in range(z.shape[1])) / z.shape[1]
        total += (1 - smoothing) * nll + smoothing * uniform
        count += 1
    return total / count


def _batch(logits: torch.Tensor, targets: torch.Tensor) -> DistillBatch:
    return DistillBatch(logits, None, {}, {}, targets)


def _data(n: int = 8, k: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g) * 2, torch.randint(0, k, (n,), generator=g)


@pytest.mark.parametrize("weight", [1.0, 0.1, 2.5])
def test_weighted_cross_entropy_matches_reference(weight: float) -> None:
    logits, y = _data()
    got = CrossEntropyLoss(weight=weight)(_batch(logits, y))
    assert got.shape == ()
    assert got.item() == pytest.approx(weight * reference_ce(logits, y), rel=1e-5)


@pytest.mark.parametrize("ignore_index", [-100, 255])
def test_ignore_index_skips_those_targets(ignore_index: int) -> None:
    logits, y = _data()
    y[[1, 4, 5]] = ignore_index
    got = CrossEntropyLoss(weight=0.5, ignore_index=ignore_index)(_batch(logits, y))
    want = 0.5 * reference_ce(logits, y, ignore_index=ignore_index)
    assert got.item() == pytest.approx(want, rel=1e-5)
    # the mean is over the 5 kept samples: dropping the ignored rows gives the same value
    keep = y != ignore_index
    alone = CrossEntropyLoss(weight=0.5)(_batch(logits[keep], y[keep]))
    assert got.item() == pytest.approx(alone.item(), rel=1e-6)


def test_label_smoothing() -> None:
    logits, y = _data(seed=3)
    got = CrossEntropyLoss(label_smoothing=0.1)(_batch(logits, y))
    assert got.item() == pytest.approx(reference_ce(logits, y, smoothing=0.1), rel=1e-5)


def test_needs_no_teacher() -> None:
    assert CrossEntropyLoss.needs_teacher is False
    assert CrossEntropyLoss().weight == 1.0
