"""CrossKD: its loss functions by hand, the cross-head pass, KD targets, gradients, flags."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from kdforge import Distiller, FeatureTaps
from kdforge.losses import (
    TERMS,
    CrossKDLoss,
    align_scale,
    kd_quality_focal_loss,
    kl_div_distill_loss,
)
from kdforge.losses._crosskd_heads import KD_FUNCTIONS
from kdforge.models import create_model
from kdforge.models.detection.det_losses import giou_loss, iou_loss

EPS32 = torch.finfo(torch.float32).eps
KINDS = ("gfl", "retinanet", "atss", "fcos")


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_kd_quality_focal_loss_by_hand() -> None:
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(3, 4, generator=g, dtype=torch.float64)
    teacher = torch.randn(3, 4, generator=g, dtype=torch.float64)
    weight = torch.tensor([1.0, 0.0, 0.5], dtype=torch.float64)
    for beta in (1.0, 2.0):
        total = 0.0
        for m in range(3):
            for k in range(4):
                p, t = _sigmoid(pred[m, k].item()), _sigmoid(teacher[m, k].item())
                bce = -(t * math.log(p) + (1 - t) * math.log(1 - p))
                total += weight[m].item() * bce * abs(p - t) ** beta
        got = kd_quality_focal_loss(pred, teacher, weight, avg_factor=2.0, beta=beta)
        assert got.item() == pytest.approx(total / (2.0 + EPS32), rel=1e-9)
    mean = kd_quality_focal_loss(pred, teacher, beta=1.0)  # no avg_factor: mean over M*K
    assert mean.item() == pytest.approx(kd_quality_focal_loss(pred, teacher, None, 12.0).item())
    assert kd_quality_focal_loss(pred, pred).item() == 0.0
    teacher.requires_grad_(True)
    kd_quality_focal_loss(pred.requires_grad_(True), teacher).backward()
    assert teacher.grad is None and pred.grad is not None  # the target is detached


@pytest.mark.parametrize(("temperature", "reduction"), [(1.0, "sum"), (2.0, "mean"), (10, "sum")])
def test_kl_div_distill_loss_by_hand(temperature: float, reduction: str) -> None:
    g = torch.Generator().manual_seed(1)
    pred = torch.randn(2, 5, generator=g, dtype=torch.float64)
    teacher = torch.randn(2, 5, generator=g, dtype=torch.float64)
    weight = torch.tensor([0.3, 0.9], dtype=torch.float64)
    total = 0.0
    for m in range(2):
        t = [math.exp(v / temperature) for v in teacher[m].tolist()]
        s = [math.exp(v / temperature) for v in pred[m].tolist()]
        p = [v / sum(t) for v in t]
        q = [v / sum(s) for v in s]
        row = [pk * (math.log(pk) - math.log(qk)) for pk, qk in zip(p, q, strict=True)]
        value = sum(row) if reduction == "sum" else sum(row) / 5
        total += weight[m].item() * value * temperature**2
    got = kl_div_distill_loss(pred, teacher, temperature, reduction, weight, avg_factor=4.0)
    assert got.item() == pytest.approx(total / (4.0 + EPS32), rel=1e-9)
    assert kl_div_distill_loss(pred, pred, temperature, reduction).item() == pytest.approx(0.0)
    with pytest.raises(ValueError, match="class_reduction"):
        kl_div_distill_loss(pred, teacher, 1.0, "max")


def test_box_losses_by_hand() -> None:
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]])
    b = torch.tensor([[1.0, 0.0, 3.0, 2.0], [2.0, 0.0, 3.0, 1.0]])
    # IoU 2/6 and 0 (clamped to 1e-6); GIoU 1/3 - (6 - 6)/6 and 0 - (3 - 2)/3
    w = torch.tensor([1.0, 0.5])
    expected = (-math.log(1 / 3) - 0.5 * math.log(1e-6)) / (2 + EPS32)
    assert iou_loss(a, b, w, avg_factor=2.0).item() == pytest.approx(expected, rel=1e-5)
    expected = ((1 - 1 / 3) + 0.5 * (1 + 1 / 3)) / (2 + EPS32)
    assert giou_loss(a, b, w, avg_factor=2.0).item() == pytest.approx(expected, rel=1e-6)
    zero = torch.zeros(2)
    assert giou_loss(a, b, zero).item() == 0.0 and iou_loss(a, b, zero).item() == 0.0


def test_align_scale_matches_per_channel_statistics() -> None:
    g = torch.Generator().manual_seed(2)
    s = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64) * 3 + 1
    t = torch.randn(3, 3, 2, 2, generator=g, dtype=torch.float64) * 0.5 - 2  # other N, H, W
    out = align_scale(s, t)
    assert out.shape == s.shape
    for c in range(3):
        sc, tc = s[:, c].reshape(-1), t[:, c].reshape(-1)
        n, m = sc.numel(), tc.numel()
        s_mean, t_mean = sum(sc.tolist()) / n, sum(tc.tolist()) / m
        s_std = math.sqrt(sum((v - s_mean) ** 2 for v in sc.tolist()) / (n - 1))  # unbiased
        t_std = math.sqrt(sum((v - t_mean) ** 2 for v in tc.tolist()) / (m - 1))
        expected = (s[:, c] - s_mean) / (s_std + 1e-6) * t_std + t_mean  # eps on student only
        torch.testing.assert_close(out[:, c], expected, rtol=1e-12, atol=1e-12)


def _pair(kind: str, same: bool = False):
    torch.manual_seed(0)
    kw = {"num_classes": 3, "fpn_channels": 32, "feat_channels": 32, "stacked_convs": 4}
    teacher = create_model(f"{kind}_r18_fpn", **kw)
    student = copy.deepcopy(teacher) if same else create_model(f"{kind}_r18_fpn", **kw)
    return teacher, student


def _batch():
    g = torch.Generator().manual_seed(3)
    images = torch.randn(2, 3, 64, 64, generator=g)
    targets = [
        {"boxes": torch.tensor([[4.0, 6.0, 40.0, 44.0]]), "labels": torch.tensor([1])},
        {
            "boxes": torch.tensor([[10.0, 10.0, 30.0, 50.0], [30.0, 2.0, 60.0, 30.0]]),
            "labels": torch.tensor([0, 2]),
        },
    ]
    for t in targets:
        t["img_shape"] = (64, 64)
    return images, targets


def _manual_align(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    dims = (0, 2, 3)
    mean_s, std_s = s.mean(dims, keepdim=True), s.std(dims, keepdim=True)
    mean_t, std_t = t.mean(dims, keepdim=True), t.std(dims, keepdim=True)
    return (s - mean_s) / (std_s + 1e-6) * std_t + mean_t


@pytest.mark.parametrize(
    ("kind", "stage"), [("gfl", 3), ("retinanet", 3), ("atss", 0), ("fcos", 2)]
)
def test_cross_head_pass_equals_teacher_head_on_aligned_student_features(kind, stage) -> None:
    teacher, student = _pair(kind)
    images, targets = _batch()
    term = CrossKDLoss(weight=2.0, stage=stage, loss_reg_weight=3.0)
    distiller = Distiller(teacher, student, {"crosskd": term})
    _, losses = distiller(images, targets)
    expected_names = {"cls", "reg", "center"} if kind == "atss" else {"cls", "reg"}
    assert {k.removeprefix("crosskd.") for k in losses} == expected_names
    with torch.no_grad():  # by hand: forward_until, align, ReLU, the teacher's forward_from
        s_cls, s_reg = student.bbox_head.forward_until(stage, student.extract_feat(images))
        t_cls, t_reg = teacher.bbox_head.forward_until(stage, teacher.extract_feat(images))
        act = F.relu if stage else (lambda x: x)
        r_cls = [act(_manual_align(s, t)) for s, t in zip(s_cls, t_cls, strict=True)]
        r_reg = [act(_manual_align(s, t)) for s, t in zip(s_reg, t_reg, strict=True)]
        reused = teacher.bbox_head.forward_from(stage, r_cls, r_reg)
        kd = KD_FUNCTIONS[type(teacher.bbox_head)]
        manual = kd(student.bbox_head, reused, teacher(images), targets, [(64, 64)] * 2)
    scale = {"cls": 2.0, "reg": 6.0, "center": 2.0}
    for name, value in manual.items():
        torch.testing.assert_close(losses[f"crosskd.{name}"].detach(), scale[name] * value)
        assert losses[f"crosskd.{name}"].item() > 0


@pytest.mark.parametrize("kind", KINDS)
def test_kd_targets_are_the_teachers_predictions(kind) -> None:
    """A student identical to the teacher reproduces its predictions: cls/box KD are 0."""
    teacher, student = _pair(kind, same=True)
    images, targets = _batch()
    stage = 2 if kind == "fcos" else 3
    distiller = Distiller(teacher, student, {"crosskd": CrossKDLoss(stage=stage)})
    _, losses = distiller.train()(images, targets)  # train(): the backbone BN keeps eval
    assert losses["crosskd.cls"].item() == pytest.approx(0.0, abs=1e-7)
    assert losses["crosskd.reg"].item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_reach_the_student_only_through_its_held_features(kind) -> None:
    teacher, student = _pair(kind)
    images, targets = _batch()
    distiller = Distiller(teacher, student, {"crosskd": CrossKDLoss(stage=2)})
    _, losses = distiller(images, targets)
    sum(losses.values()).backward()
    assert all(p.grad is None for p in teacher.parameters())
    head = student.bbox_head
    for i, (c, r) in enumerate(zip(head.cls_convs, head.reg_convs, strict=True)):
        grads = [p.grad for p in (*c.parameters(), *r.parameters())]
        if i < 2:  # the stages before the split point
            assert all(g is not None and g.abs().sum() > 0 for g in grads)
        else:  # later stages and predictors only feed the student's own predictions
            assert all(g is None for g in grads)
    assert student.neck.fpn_convs[0].conv.weight.grad.abs().sum() > 0


def test_held_feature_is_post_activation_by_default() -> None:
    """mmcv's in-place ReLU: even a hook on the GN sees post-ReLU values."""
    _, student = _pair("gfl")
    images, _ = _batch()
    paths = ["bbox_head.cls_convs.2", "bbox_head.cls_convs.2.gn", "bbox_head.cls_convs.2:input"]
    with FeatureTaps(student, paths) as taps, torch.no_grad():
        student(images)
        tapped = taps.outputs
        held, _ = student.bbox_head.forward_until(3, student.extract_feat(images))
    for level, expected in enumerate(held):
        torch.testing.assert_close(tapped[paths[0]][level], expected)
        torch.testing.assert_close(tapped[paths[1]][level], expected)
        assert expected.min() >= 0
    term = CrossKDLoss(stage=3, pre_activation=True)
    term.attach(student, student)
    with torch.no_grad():
        pre, _ = term._held(
            {
                "bbox_head.cls_convs.2:input": tapped[paths[2]],
                "bbox_head.reg_convs.2:input": tapped[paths[2]],
            },
            student.bbox_head,
        )
    for level, expected in enumerate(held):
        assert pre[level].min() < 0
        torch.testing.assert_close(F.relu(pre[level]), expected)


def test_pre_activation_flag_changes_the_loss() -> None:
    teacher, student = _pair("gfl")
    images, targets = _batch()
    values = {}
    for flag in (False, True):
        term = CrossKDLoss(stage=3, pre_activation=flag)
        assert term.student_taps[0].endswith(":input") == flag
        _, losses = Distiller(teacher, student, {"kd": term})(images, targets)
        values[flag] = losses["kd.cls"].item()
    assert values[False] != pytest.approx(values[True], rel=1e-4)


def test_gfl_normalisers_by_hand() -> None:
    teacher, student = _pair("gfl")
    images, targets = _batch()
    with torch.no_grad():
        t_out, s_out = teacher(images), student(images)  # any two predictions will do
        head = student.bbox_head
        got = KD_FUNCTIONS[type(head)](head, s_out, t_out, targets, [(64, 64)] * 2)
        sizes = [tuple(o.shape[-2:]) for o in t_out["cls"]]
        avg = head.anchor_targets(sizes, targets, (64, 64), True, "cpu").avg_factor
        cls = reg = wsum = 0.0
        for tc, sc, tr, sr in zip(
            t_out["cls"], s_out["cls"], t_out["reg"], s_out["reg"], strict=True
        ):
            tc, sc = tc.permute(0, 2, 3, 1).reshape(-1, 3), sc.permute(0, 2, 3, 1).reshape(-1, 3)
            t = tc.sigmoid()
            cls += (
                F.binary_cross_entropy_with_logits(sc, t, reduction="none")
                * (sc.sigmoid() - t).abs()
            ).sum()
            w = tc.amax(1).sigmoid()  # every anchor is valid: label weights all 1
            p = F.softmax(tr.permute(0, 2, 3, 1).reshape(-1, 4, 17), -1)
            q = F.log_softmax(sr.permute(0, 2, 3, 1).reshape(-1, 4, 17), -1)
            reg += (w[:, None] * (p * (p.log() - q)).sum(-1)).sum() / (4 + EPS32)
            wsum += w.sum()
    torch.testing.assert_close(got["cls"], cls / (avg + EPS32))
    torch.testing.assert_close(got["reg"], reg / wsum)


def test_config_and_checks() -> None:
    assert TERMS["crosskd"] is CrossKDLoss
    teacher, student = _pair("gfl")
    with pytest.raises(ValueError, match="stage must be in"):
        CrossKDLoss(stage=5).attach(student, teacher)
    _, retina = _pair("retinanet")
    with pytest.raises(TypeError, match="differ"):
        CrossKDLoss().attach(retina, teacher)
    with pytest.raises(TypeError, match="GFL, RetinaNet"):
        CrossKDLoss().attach(torch.nn.Linear(2, 2), teacher)
    narrow = create_model("gfl_r18_fpn", num_classes=3, fpn_channels=32, feat_channels=64)
    with pytest.raises(ValueError, match="feat_channels"):
        Distiller(teacher, narrow, {"kd": CrossKDLoss()}, example_input=_batch()[0])


@pytest.mark.parametrize(
    ("kind", "averaged"),
    [
        ("gfl", {"cls"}),  # the box-KD normaliser (sum of w) stays per process
        ("retinanet", set()),  # num_pos is not averaged
        ("atss", {"cls", "reg", "center"}),
        ("fcos", {"cls", "reg"}),
    ],
)
def test_normalisers_averaged_over_processes_where_official(kind, averaged, monkeypatch):
    """``reduce_mean`` doubling every normaliser halves exactly the averaged parts."""
    teacher, student = _pair(kind)
    images, targets = _batch()
    with torch.no_grad():
        t_out, s_out = teacher(images), student(images)
        kd = KD_FUNCTIONS[type(student.bbox_head)]
        args = (student.bbox_head, s_out, t_out, targets, [(64, 64)] * 2)
        plain = kd(*args)
        for module in ("kdforge.losses._crosskd_heads", "kdforge.models.detection._anchor_head"):
            monkeypatch.setattr(f"{module}.reduce_mean", lambda v: v * 2)
        doubled = kd(*args)
    for name, value in plain.items():
        factor = 0.5 if name in averaged else 1.0
        torch.testing.assert_close(doubled[name], factor * value, rtol=1e-5, atol=0)
