"""CrossKD at every split point 0..4, for the GFL, RetinaNet, ATSS and FCOS heads.

The reference here is written out by hand from the heads' parts (``conv``, ``gn``, the
predictor convolutions and the level scales), not from ``forward_until``/``forward_from``:
the student's first ``i`` tower stages, the per-channel re-standardisation to the
teacher's statistics, a ReLU for ``i > 0``, then the teacher's stages ``i..3``, its
predictors and its level scales.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from kdforge import Distiller
from kdforge.losses import CrossKDLoss
from kdforge.losses._crosskd_heads import KD_FUNCTIONS
from kdforge.losses.crosskd import cross_head_forward
from kdforge.models import create_model

STAGES = (0, 1, 2, 3, 4)
# (zoo kind, head keywords): FCOS also with its "norm_on_bbox + centerness_on_reg" variant
HEADS = {
    "gfl": ("gfl", {}),
    "retinanet": ("retinanet", {}),
    "atss": ("atss", {}),
    "fcos": ("fcos", {}),
    "fcos_norm": ("fcos", {"norm_on_bbox": True, "centerness_on_reg": True}),
}
SIZE = 64


@functools.cache
def _pair(name: str):
    """``(teacher, student)``: two differently initialised detectors of one kind, with level
    scales away from 1 and predictors large enough that every output matters."""
    kind, kwargs = HEADS[name]
    torch.manual_seed(0)
    shape = {"num_classes": 3, "fpn_channels": 32, "feat_channels": 32, "stacked_convs": 4}
    models = [create_model(f"{kind}_r18_fpn", **shape, **kwargs) for _ in range(2)]
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for model in models:
            head = model.bbox_head
            for i, scale in enumerate(head.scales or []):
                scale.scale.fill_(0.6 + 0.35 * i)
            for name_, p in head.named_parameters():
                if not name_.startswith(("cls_convs", "reg_convs", "scales")):
                    p.add_(0.05 * torch.randn(p.shape, generator=g))  # the predictors
                elif name_.endswith("conv.weight"):  # He init: RetinaNet's GN-free towers
                    fan_in = p[0].numel()  # keep their scale (N(0, 0.01) shrinks them)
                    p.copy_(torch.randn(p.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                elif name_.endswith(("gn.bias", "conv.bias")):
                    p.add_(0.3 * torch.randn(p.shape, generator=g))  # ReLUs that bite
    return tuple(m.eval() for m in models)


def _images_and_targets():
    g = torch.Generator().manual_seed(3)
    images = torch.randn(2, 3, SIZE, SIZE, generator=g)
    targets = [
        {"boxes": torch.tensor([[4.0, 6.0, 40.0, 44.0]]), "labels": torch.tensor([1])},
        {
            "boxes": torch.tensor([[10.0, 10.0, 30.0, 50.0], [30.0, 2.0, 60.0, 30.0]]),
            "labels": torch.tensor([0, 2]),
        },
    ]
    for t in targets:
        t["img_shape"] = (SIZE, SIZE)
    return images, targets


# -- the head written out by hand ----------------------------------------------------------
def _stage(module, x, activate: bool = True):
    """One tower stage, ``relu(gn(conv(x)))``, from its parts (not in place)."""
    x = module.conv(x)
    if module.gn is not None:
        x = module.gn(x)
    return F.relu(x) if activate else x


def _towers_until(head, stage: int, feats, pre_activation: bool = False):
    """Per level, the outputs of the first ``stage`` stages of both towers."""
    cls, reg = [], []
    for x in feats:
        c = r = x
        for i in range(stage):
            last = i == stage - 1
            act = not (pre_activation and last)
            c, r = _stage(head.cls_convs[i], c, act), _stage(head.reg_convs[i], r, act)
        cls.append(c)
        reg.append(r)
    return cls, reg


def _predict_by_hand(name: str, head, level: int, c, r) -> dict:
    kind, _ = HEADS[name]
    scale = head.scales[level].scale if head.scales is not None else None
    if kind == "gfl":
        return {"cls": head.gfl_cls(c), "reg": head.gfl_reg(r) * scale}
    if kind == "retinanet":
        return {"cls": head.retina_cls(c), "reg": head.retina_reg(r)}
    if kind == "atss":
        return {
            "cls": head.atss_cls(c),
            "reg": head.atss_reg(r) * scale,
            "centerness": head.atss_centerness(r),
        }
    reg = head.conv_reg(r) * scale
    reg = reg.clamp(min=0) if head.norm_on_bbox else reg.exp()
    ctr = head.conv_centerness(r if head.centerness_on_reg else c)
    return {"cls": head.conv_cls(c), "reg": reg, "centerness": ctr}


def _teacher_head_from(name: str, head, stage: int, cls_feats, reg_feats) -> dict:
    """The teacher head's stages ``stage..3`` and predictors, by hand."""
    out: dict[str, list] = {}
    for level, (c, r) in enumerate(zip(cls_feats, reg_feats, strict=True)):
        for i in range(stage, len(head.cls_convs)):
            c, r = _stage(head.cls_convs[i], c), _stage(head.reg_convs[i], r)
        for key, value in _predict_by_hand(name, head, level, c, r).items():
            out.setdefault(key, []).append(value)
    return out


def _align(s, t):
    dims = (0, 2, 3)
    mean_s, std_s = s.mean(dims, keepdim=True), s.std(dims, keepdim=True)
    mean_t, std_t = t.mean(dims, keepdim=True), t.std(dims, keepdim=True)
    return (s - mean_s) / (std_s + 1e-6) * std_t + mean_t


def _cross_by_hand(name: str, teacher, student, images, stage: int, pre_activation=False):
    """CrossKD's cross-head predictions, every step written out."""
    s_cls, s_reg = _towers_until(
        student.bbox_head, stage, student.extract_feat(images), pre_activation
    )
    t_cls, t_reg = _towers_until(
        teacher.bbox_head, stage, teacher.extract_feat(images), pre_activation
    )
    act = F.relu if stage > 0 else (lambda x: x)
    r_cls = [act(_align(s, t)) for s, t in zip(s_cls, t_cls, strict=True)]
    r_reg = [act(_align(s, t)) for s, t in zip(s_reg, t_reg, strict=True)]
    return (
        _teacher_head_from(name, teacher.bbox_head, stage, r_cls, r_reg),
        (s_cls, s_reg),
        (
            t_cls,
            t_reg,
        ),
    )


def _assert_outputs_close(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for key in expected:
        assert len(got[key]) == len(expected[key]) == 5  # FPN levels P3..P7
        for a, b in zip(got[key], expected[key], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# -- tests ---------------------------------------------------------------------------------
@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("name", list(HEADS))
def test_cross_head_forward_is_the_teacher_head_by_hand(name, stage) -> None:
    teacher, student = _pair(name)
    images, _ = _images_and_targets()
    with torch.no_grad():
        expected, (s_cls, s_reg), (t_cls, t_reg) = _cross_by_hand(
            name, teacher, student, images, stage
        )
        if stage > 0:  # the aligned held features do go below 0: the ReLU is not a no-op
            assert min(_align(s, t).min() for s, t in zip(s_cls, t_cls, strict=True)) < 0
        got = cross_head_forward(teacher.bbox_head, stage, s_cls, s_reg, t_cls, t_reg)
    _assert_outputs_close(got, expected)
    for key, levels in expected.items():  # outputs that vary: the comparison means something
        # (P6 and P7 are 1x1 at this image size: a GroupNorm of one value per group makes
        # them constant, so only P3..P5 count)
        assert min(x.std() for x in levels[:3]) > 0.1, key


@pytest.mark.parametrize("name", list(HEADS))
def test_each_split_point_gives_its_own_predictions(name) -> None:
    """The five split points are five different cross-head passes (no stage is skipped
    or run twice without the outputs showing it)."""
    teacher, student = _pair(name)
    images, _ = _images_and_targets()
    with torch.no_grad():
        outs = [_cross_by_hand(name, teacher, student, images, s)[0]["cls"][0] for s in STAGES]
    for i in range(len(outs)):
        for j in range(i + 1, len(outs)):
            assert not torch.allclose(outs[i], outs[j], rtol=1e-3, atol=1e-4), (i, j)


@pytest.mark.parametrize(
    ("stage", "pre_activation"),
    [(0, False), (1, False), (2, False), (3, False), (4, False), (1, True), (4, True)],
)
@pytest.mark.parametrize("name", list(HEADS))
def test_crosskd_term_at_every_stage_equals_the_kd_of_the_hand_pass(
    name, stage, pre_activation
) -> None:
    teacher, student = _pair(name)
    images, targets = _images_and_targets()
    term = CrossKDLoss(weight=2.0, stage=stage, pre_activation=pre_activation, loss_reg_weight=3.0)
    distiller = Distiller(teacher, student, {"crosskd": term}).eval()
    with torch.no_grad():
        _, losses = distiller(images, targets)
        reused, _, _ = _cross_by_hand(name, teacher, student, images, stage, pre_activation)
        kd = KD_FUNCTIONS[type(teacher.bbox_head)]
        manual = kd(student.bbox_head, reused, teacher(images), targets, [(SIZE, SIZE)] * 2)
    parts = {"cls", "reg", "center"} if HEADS[name][0] == "atss" else {"cls", "reg"}
    assert {k.removeprefix("crosskd.") for k in losses} == parts
    scale = {"cls": 2.0, "reg": 6.0, "center": 2.0}
    for part, value in manual.items():
        got = losses[f"crosskd.{part}"]
        assert torch.isfinite(got) and got.item() > 0
        torch.testing.assert_close(got, scale[part] * value, rtol=1e-4, atol=1e-6)
