"""PKD: mmrazor's per-channel standardised MSE / 2, resizing, the term over FPN levels."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kdforge import Distiller
from kdforge.losses import TERMS, CrossKDLoss, DetectionLoss, PKDLoss, pkd_loss
from kdforge.models import create_model


def _by_hand(s: torch.Tensor, t: torch.Tensor) -> float:
    total, count = 0.0, 0
    for c in range(s.shape[1]):
        zs, zt = [], []
        for x, out in ((s[:, c].reshape(-1).tolist(), zs), (t[:, c].reshape(-1).tolist(), zt)):
            mean = sum(x) / len(x)
            std = math.sqrt(sum((v - mean) ** 2 for v in x) / (len(x) - 1))  # unbiased
            out.extend((v - mean) / (std + 1e-6) for v in x)
        total += sum((a - b) ** 2 for a, b in zip(zs, zt, strict=True))
        count += len(zs)
    return total / count / 2


def test_pkd_loss_by_hand_and_zero_on_equal_inputs() -> None:
    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64)
    t = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64) * 4 + 2
    assert pkd_loss(s, t).item() == pytest.approx(_by_hand(s, t), rel=1e-10)
    assert pkd_loss(s, s).item() == 0.0
    # invariant to a per-channel affine map of either side (up to the 1e-6)
    scaled = s * torch.tensor([2.0, 0.5, 3.0], dtype=torch.float64)[:, None, None] + 7
    assert pkd_loss(scaled, s).item() == pytest.approx(0.0, abs=1e-10)


def test_pkd_resizes_when_heights_differ() -> None:
    g = torch.Generator().manual_seed(1)
    s = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    t = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64)
    up = F.interpolate(s, (8, 8), mode="bilinear", align_corners=False)
    assert pkd_loss(s, t).item() == pytest.approx(_by_hand(up, t), rel=1e-10)
    down = F.interpolate(t, (4, 4), mode="bilinear", align_corners=False)
    assert pkd_loss(s, t, resize_student=False).item() == pytest.approx(
        _by_hand(s, down), rel=1e-10
    )
    with pytest.raises(RuntimeError), pytest.warns(UserWarning):  # only heights compared
        pkd_loss(s, torch.randn(2, 3, 4, 6, dtype=torch.float64))


def test_pkd_term_sums_the_five_fpn_levels_and_combines_with_crosskd() -> None:
    assert TERMS["pkd"] is PKDLoss
    term = PKDLoss(weight=6.0)
    assert term.student_taps == [f"neck.fpn_convs.{i}" for i in range(5)]
    assert term.teacher_taps == term.student_taps
    torch.manual_seed(0)
    kw = {"num_classes": 3, "fpn_channels": 32, "feat_channels": 32, "stacked_convs": 4}
    teacher, student = create_model("gfl_r18_fpn", **kw), create_model("gfl_r18_fpn", **kw)
    images = torch.randn(2, 3, 64, 64)
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 40.0, 44.0]]), "labels": torch.tensor([1])}] * 2
    for t in targets:
        t["img_shape"] = (64, 64)
    terms = {"detection": DetectionLoss(), "crosskd": CrossKDLoss(), "pkd": term}
    _, losses = Distiller(teacher, student, terms).train()(images, targets)
    assert {"crosskd.cls", "crosskd.reg", "pkd", "detection.cls"} <= set(losses)
    with torch.no_grad():
        s_feats, t_feats = student.extract_feat(images), teacher.extract_feat(images)
        expected = 6.0 * sum(pkd_loss(s, t) for s, t in zip(s_feats, t_feats, strict=True))
    torch.testing.assert_close(losses["pkd"].detach(), expected)


def test_pkd_checks() -> None:
    with pytest.raises(ValueError, match="pairs"):
        PKDLoss(student_layers=["a", "b"], teacher_layers=["a"])
    term = PKDLoss(student_layers=["x"], teacher_layers=["y"])
    with pytest.raises(ValueError, match="same channels"):
        term.build({"x": torch.Size([2, 8, 4, 4])}, {"y": torch.Size([2, 16, 4, 4])})


def test_layer_pairs_must_match_in_number() -> None:
    with pytest.raises(ValueError, match="PKDLoss: 2 student layers and 1 teacher layers"):
        PKDLoss(student_layers=["a", "b"], teacher_layers=["a"])
    term = PKDLoss(student_layers=["layer1", "layer2"])  # teacher paths default to the same
    assert term.student_taps == term.teacher_taps == ["layer1", "layer2"]
