"""DKD against a per-sample loop of TCKD and NCKD as mdistiller defines them (METHODS §5.1)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdforge.losses.base import DistillBatch
from kdforge.losses.dkd import DKDLoss, dkd_loss
from kdforge.losses.kd import kd_loss


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def reference_parts(
    student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor, t: float
) -> tuple[list[float], list[float], list[float]]:
    """Per sample: TCKD_n, NCKD_n (both unscaled KLs) and the teacher's target probability.

    TCKD_n = KL([p_t,gt, 1 − p_t,gt] ‖ [p_s,gt, 1 − p_s,gt]) with p = softmax(z / T);
    NCKD_n = KL(q_t ‖ q_s) with q = softmax over the non-target classes only (what the
    ``− 1000·gt`` mask does), written as explicit loops in float64.
    """
    s = student.double().numpy()
    te = teacher.double().numpy()
    tckd, nckd, p_gt = [], [], []
    for n in range(s.shape[0]):
        g = int(target[n])
        p_s, p_t = _softmax(s[n] / t), _softmax(te[n] / t)
        b_s = [p_s[g], sum(p_s[k] for k in range(len(p_s)) if k != g)]
        b_t = [p_t[g], sum(p_t[k] for k in range(len(p_t)) if k != g)]
        tckd.append(sum(b_t[j] * (math.log(b_t[j]) - math.log(b_s[j])) for j in range(2)))
        others = [k for k in range(s.shape[1]) if k != g]
        q_s, q_t = _softmax(s[n, others] / t), _softmax(te[n, others] / t)
        nckd.append(sum(q_t[i] * (math.log(q_t[i]) - math.log(q_s[i])) for i in range(len(q_t))))
        p_gt.append(p_t[g])
    return tckd, nckd, p_gt


def reference_dkd(student, teacher, target, alpha: float, beta: float, t: float) -> float:
    tckd, nckd, _ = reference_parts(student, teacher, target, t)
    n = len(tckd)
    return t**2 / n * sum(alpha * a + beta * b for a, b in zip(tckd, nckd, strict=True))


def _data(n: int = 6, k: int = 10, scale: float = 3.0, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, k, generator=g) * scale
    t = torch.randn(n, k, generator=g) * scale
    return s, t, torch.randint(0, k, (n,), generator=g)


@pytest.mark.parametrize(
    ("alpha", "beta", "temperature"),
    [(1.0, 8.0, 4.0), (1.0, 2.0, 4.0), (0.5, 6.0, 2.0), (2.0, 1.0, 1.0)],
)
def test_matches_per_sample_reference(alpha: float, beta: float, temperature: float) -> None:
    s, t, y = _data()
    got = dkd_loss(s, t, y, alpha, beta, temperature)
    assert got.shape == ()
    want = reference_dkd(s, t, y, alpha, beta, temperature)
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_alpha_weighs_tckd_and_beta_weighs_nckd() -> None:
    s, t, y = _data(seed=1)
    tckd, nckd, _ = reference_parts(s, t, y, 4.0)
    s64, t64 = s.double(), t.double()
    only_tckd = dkd_loss(s64, t64, y, alpha=1.0, beta=0.0, temperature=4.0).item()
    only_nckd = dkd_loss(s64, t64, y, alpha=0.0, beta=1.0, temperature=4.0).item()
    assert only_tckd == pytest.approx(16 * sum(tckd) / len(tckd), rel=1e-10)
    assert only_nckd == pytest.approx(16 * sum(nckd) / len(nckd), rel=1e-10)
    both = dkd_loss(s64, t64, y, alpha=3.0, beta=5.0, temperature=4.0).item()
    assert both == pytest.approx(3 * only_tckd + 5 * only_nckd, rel=1e-10)


def test_defaults_are_mdistillers() -> None:
    s, t, y = _data(seed=2)
    assert dkd_loss(s, t, y).item() == pytest.approx(
        reference_dkd(s, t, y, alpha=1.0, beta=8.0, t=4.0), rel=1e-5
    )


def test_mask_removes_the_target_class_from_nckd() -> None:
    # NCKD must not depend on the target logits at all, however large they are.
    s, t, y = _data(seed=3)
    s2, t2 = s.clone(), t.clone()
    rows = torch.arange(len(y))
    s2[rows, y] += 7.0
    t2[rows, y] -= 5.0
    nckd = dkd_loss(s, t, y, alpha=0.0, beta=1.0).item()
    nckd2 = dkd_loss(s2, t2, y, alpha=0.0, beta=1.0).item()
    assert nckd == pytest.approx(nckd2, rel=1e-5)
    # while TCKD does change (the binary masses moved)
    assert dkd_loss(s, t, y, 1.0, 0.0).item() != pytest.approx(
        dkd_loss(s2, t2, y, 1.0, 0.0).item(), rel=1e-3
    )


def test_zero_for_identical_logits() -> None:
    s, _, y = _data(scale=6.0)
    assert dkd_loss(s, s.clone(), y).item() == pytest.approx(0.0, abs=1e-5)


def test_non_negative() -> None:
    for seed in range(10):
        s, t, y = _data(n=4, k=7, scale=4.0, seed=seed)
        assert dkd_loss(s, t, y).item() >= -1e-6


def test_decomposes_kd() -> None:
    # The DKD paper's identity: KD = TCKD + (1 − p_t,gt) · NCKD, per sample.
    s, t, y = _data(seed=4)
    _, _, p_gt = reference_parts(s, t, y, 4.0)
    per_sample = [
        dkd_loss(s[i : i + 1], t[i : i + 1], y[i : i + 1], alpha=1.0, beta=1 - p_gt[i]).item()
        for i in range(len(y))
    ]
    assert sum(per_sample) / len(y) == pytest.approx(kd_loss(s, t, 4.0).item(), rel=1e-5)


def test_gradient_reaches_student_only() -> None:
    s, t, y = _data()
    s.requires_grad_(True)
    dkd_loss(s, t, y).backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    assert t.grad is None


@pytest.mark.parametrize(
    ("epoch", "factor"), [(0, 1 / 20), (4, 5 / 20), (18, 19 / 20), (19, 1.0), (30, 1.0)]
)
def test_term_warmup(epoch: int, factor: float) -> None:
    s, t, y = _data()
    term = DKDLoss(weight=2.0, alpha=1.0, beta=8.0, temperature=4.0)
    got = term(DistillBatch(s, t, {}, {}, y, epoch=epoch)).item()
    assert got == pytest.approx(2.0 * factor * dkd_loss(s, t, y, 1.0, 8.0, 4.0).item(), rel=1e-6)


def test_term_without_warmup_and_custom_hyperparameters() -> None:
    s, t, y = _data(seed=5)
    term = DKDLoss(weight=1.0, alpha=0.5, beta=2.0, temperature=2.0, warmup_epochs=0)
    got = term(DistillBatch(s, t, {}, {}, y, epoch=0)).item()
    assert got == pytest.approx(reference_dkd(s, t, y, 0.5, 2.0, 2.0), rel=1e-5)


def test_term_build_rejects_different_class_counts() -> None:
    with pytest.raises(ValueError, match=r"\(4, 10\).*\(4, 100\)"):
        DKDLoss().build({"": torch.Size([4, 10])}, {"": torch.Size([4, 100])})
