"""Hinton KD against an explicit float64 loop over samples and classes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdforge.losses.base import DistillBatch
from kdforge.losses.kd import KDLoss, kd_loss


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max()
    return z - math.log(np.exp(z).sum())


def reference_kd(student: torch.Tensor, teacher: torch.Tensor, t: float) -> float:
    """``T² · mean_n Σ_k p_t (log p_t − log q_s)``, one sample and one class at a time."""
    s = student.double().numpy()
    te = teacher.double().numpy()
    total = 0.0
    for n in range(s.shape[0]):
        log_p = _log_softmax(te[n] / t)
        log_q = _log_softmax(s[n] / t)
        for k in range(s.shape[1]):
            total += math.exp(log_p[k]) * (log_p[k] - log_q[k])
    return t**2 * total / s.shape[0]


def _logits(n: int = 6, k: int = 10, scale: float = 3.0, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g) * scale, torch.randn(n, k, generator=g) * scale


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0, 8.0])
def test_matches_reference(temperature: float) -> None:
    s, t = _logits()
    got = kd_loss(s, t, temperature)
    assert got.shape == ()
    assert got.item() == pytest.approx(reference_kd(s, t, temperature), rel=1e-5, abs=1e-6)


def test_float64_matches_reference_tightly() -> None:
    s, t = _logits(seed=1)
    got = kd_loss(s.double(), t.double(), 4.0)
    assert got.item() == pytest.approx(reference_kd(s, t, 4.0), rel=1e-12)


def test_zero_for_identical_logits() -> None:
    s, _ = _logits(scale=10.0)
    assert kd_loss(s, s.clone(), 4.0).item() == pytest.approx(0.0, abs=1e-6)


def test_non_negative() -> None:
    for seed in range(20):
        s, t = _logits(n=4, k=7, scale=5.0, seed=seed)
        assert kd_loss(s, t, 4.0).item() >= -1e-7


def test_positive_when_the_distributions_differ() -> None:
    s, t = _logits()
    assert kd_loss(s, t, 4.0).item() > 1e-3


def test_temperature_squared_scaling() -> None:
    # softmax(T·z / T) = softmax(z): scaling the logits by T leaves the KL as at T=1,
    # so the loss is exactly T² times the T=1 loss on the unscaled logits.
    s, t = _logits(seed=2)
    base = kd_loss(s.double(), t.double(), 1.0)
    for temp in (2.0, 4.0, 10.0):
        scaled = kd_loss(temp * s.double(), temp * t.double(), temp)
        assert scaled.item() == pytest.approx(temp**2 * base.item(), rel=1e-10)


def test_batch_mean_not_sum() -> None:
    s, t = _logits(n=8)
    per_sample = [kd_loss(s[i : i + 1], t[i : i + 1], 4.0).item() for i in range(8)]
    assert kd_loss(s, t, 4.0).item() == pytest.approx(sum(per_sample) / 8, rel=1e-5)


def test_gradient_flows_to_student_only() -> None:
    s, t = _logits()
    s.requires_grad_(True)
    kd_loss(s, t, 4.0).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


def test_term_weighs_the_pure_function() -> None:
    s, t = _logits()
    term = KDLoss(weight=0.9, temperature=2.0)
    batch = DistillBatch(s, t, {}, {}, torch.zeros(6, dtype=torch.long))
    assert term(batch).item() == pytest.approx(0.9 * kd_loss(s, t, 2.0).item(), rel=1e-6)
    assert term.needs_teacher
    assert KDLoss().weight == 0.9 and KDLoss().temperature == 4.0  # mdistiller defaults


def test_build_rejects_different_class_counts() -> None:
    term = KDLoss()
    term.build({"": torch.Size([2, 10])}, {"": torch.Size([2, 10])})  # fine
    with pytest.raises(ValueError, match=r"\(2, 10\).*\(2, 100\)"):
        term.build({"": torch.Size([2, 10])}, {"": torch.Size([2, 100])})
