"""CanKD against closed forms and a direct re-computation of the official NLKD_IN_Loss."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdforge.config import load_config
from kdforge.distiller import Distiller
from kdforge.losses import (
    TERMS,
    CanKDAlignLoss,
    CanKDLevelLoss,
    CanKDLoss,
    init_student_from_teacher,
)
from kdforge.losses.cankd import cross_nonlocal_attention
from kdforge.models import create_model

OFFICIAL_KEYS = [  # (key, shape) for C=8, Ci=4, in NLKD_IN_Loss's registration order
    ("non_local_att.att.theta.weight", (4, 8, 1, 1)),
    ("non_local_att.att.theta.bias", (4,)),
    ("non_local_att.att.phi.0.weight", (4, 8, 1, 1)),
    ("non_local_att.att.phi.0.bias", (4,)),
    ("non_local_att.g.0.weight", (4, 8, 1, 1)),
    ("non_local_att.g.0.bias", (4,)),
    ("non_local_att.W.0.weight", (8, 4, 1, 1)),
    ("non_local_att.W.0.bias", (8,)),
    ("non_local_att.W.1.weight", (8,)),
    ("non_local_att.W.1.bias", (8,)),
    ("non_local_att.W.1.running_mean", (8,)),
    ("non_local_att.W.1.running_var", (8,)),
    ("non_local_att.W.1.num_batches_tracked", ()),
]


def _instance_norm(x: torch.Tensor) -> torch.Tensor:
    mean = x.mean(dim=(2, 3), keepdim=True)
    var = x.var(dim=(2, 3), unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5)


def _reference(loss: CanKDLevelLoss, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The official forward written out with einsum (train-mode BN = batch statistics)."""
    att = loss.non_local_att
    theta = F.conv2d(s, att.att.theta.weight, att.att.theta.bias)
    phi = F.max_pool2d(F.conv2d(t, att.att.phi[0].weight, att.att.phi[0].bias), 2)
    g = F.max_pool2d(F.conv2d(t, att.g[0].weight, att.g[0].bias), 2)
    m = phi.shape[2] * phi.shape[3]
    f = torch.einsum("nchw,ncuv->nhwuv", theta, phi) / m  # no softmax
    y = torch.einsum("nhwuv,ncuv->nchw", f, g)
    wy = F.conv2d(y, att.W[0].weight, att.W[0].bias)
    mean, var = wy.mean(dim=(0, 2, 3), keepdim=True), wy.var(dim=(0, 2, 3), unbiased=False)
    bn = att.W[1]
    wy = (wy - mean) / torch.sqrt(var.view(1, -1, 1, 1) + 1e-5) * bn.weight.view(
        1, -1, 1, 1
    ) + bn.bias.view(1, -1, 1, 1)
    diff = _instance_norm(wy + s) - _instance_norm(t)
    return loss.weight * diff.pow(2).mean() / 2


def test_parameters_match_the_official_names_shapes_order_and_rng_order():
    torch.manual_seed(0)
    loss = CanKDLevelLoss(8)
    assert [(k, tuple(v.shape)) for k, v in loss.state_dict().items()] == OFFICIAL_KEYS
    torch.manual_seed(0)  # the official constructor draws theta, phi, g, then W.0
    convs = [nn.Conv2d(8, 4, 1), nn.Conv2d(8, 4, 1), nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 1)]
    mine = [loss.non_local_att.att.theta, loss.non_local_att.att.phi[0]]
    mine += [loss.non_local_att.g[0], loss.non_local_att.W[0]]
    for a, b in zip(mine, convs, strict=True):
        assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    assert not loss.non_local_att.W[1].weight.any() and not loss.non_local_att.W[1].bias.any()
    assert CanKDLevelLoss(1).inter_channels == 1 and CanKDLevelLoss(256).inter_channels == 128


@pytest.mark.parametrize("product", ["reordered", "affinity"])
def test_at_init_the_loss_is_weighted_instance_normalised_mse(product: str):
    torch.manual_seed(1)
    s, t = torch.randn(2, 8, 6, 10) * 3 + 1, torch.randn(2, 8, 6, 10)
    loss = CanKDLevelLoss(8, weight=10.0, product=product)
    expected = 10.0 / 2 * (_instance_norm(s) - _instance_norm(t)).pow(2).mean()
    torch.testing.assert_close(loss(s, t), expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("size", [(6, 8), (7, 9), (5, 3)])  # odd sizes: pooling floors
def test_attention_is_unnormalised_and_divided_by_pooled_positions(size: tuple[int, int]):
    torch.manual_seed(2)
    h, w = size
    q = torch.randn(2, 4, h, w, dtype=torch.float64)
    k = torch.randn(2, 4, h // 2, w // 2, dtype=torch.float64)
    v = torch.randn_like(k)
    m = (h // 2) * (w // 2)
    expected = torch.einsum("nchw,ncuv,nduv->ndhw", q, k, v) / m
    for product in ("reordered", "affinity"):
        torch.testing.assert_close(cross_nonlocal_attention(q, k, v, product), expected)


@pytest.mark.parametrize("size", [(6, 8), (7, 9)])
def test_both_products_match_the_official_forward_in_value_and_gradient(size):
    torch.manual_seed(3)
    s = torch.randn(2, 8, *size)
    t = torch.randn(2, 8, *size)
    results = []
    for product in ("affinity", "reordered"):
        torch.manual_seed(4)
        loss = CanKDLevelLoss(8, weight=10.0, product=product)
        nn.init.normal_(loss.non_local_att.W[1].weight, std=0.4)  # switch attention on
        nn.init.normal_(loss.non_local_att.W[1].bias, std=0.1)
        s_ = s.clone().requires_grad_(True)
        value = loss(s_, t)
        torch.testing.assert_close(value, _reference(loss, s, t), rtol=1e-5, atol=1e-6)
        value.backward()
        results.append((value, s_.grad, [p.grad for p in loss.parameters()]))
    (v0, g0, p0), (v1, g1, p1) = results
    torch.testing.assert_close(v0, v1, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g0, g1, rtol=1e-4, atol=1e-6)
    for a, b in zip(p0, p1, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_unequal_shapes_are_refused():
    with pytest.raises(ValueError, match="equal shapes"):
        CanKDLevelLoss(8)(torch.randn(1, 8, 4, 4), torch.randn(1, 8, 4, 6))
    with pytest.raises(ValueError, match="product"):
        CanKDLevelLoss(8, product="softmax")


def test_align_variant_averages_levels_and_resizes_the_student():
    torch.manual_seed(5)
    loss = CanKDAlignLoss(8, weight=3.0)
    s = [torch.randn(2, 8, 8, 8), torch.randn(2, 8, 3, 5), torch.randn(2, 8, 2, 2)]
    t = [torch.randn(2, 8, 8, 8), torch.randn(2, 8, 6, 10)]  # 2 levels: the third is ignored
    resized = F.interpolate(s[1], size=(6, 10), mode="bilinear", align_corners=False)
    per_level = [
        (_instance_norm(a) - _instance_norm(b)).pow(2).mean() / 2
        for a, b in [(s[0], t[0]), (resized, t[1])]
    ]
    torch.testing.assert_close(loss(s, t), 3.0 * sum(per_level) / 2)
    torch.testing.assert_close(loss(s[1], t[1]), 3.0 * per_level[1])


class _Tiny(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.backbone = nn.Conv2d(3, width, 3, padding=1)
        self.neck = nn.Conv2d(width, 8, 3, padding=1)
        self.bbox_head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bbox_head(self.neck(self.backbone(x)))


def test_term_gradients_reach_student_and_loss_modules_not_teacher():
    torch.manual_seed(6)
    teacher, student = _Tiny(16), _Tiny(4)
    term = TERMS["cankd"](["backbone", "neck"], weight=10.0)
    x = torch.randn(2, 3, 7, 9)
    distiller = Distiller(teacher, student, {"cankd": term}, example_input=x).train()
    _, losses = distiller(x, None)
    assert set(losses) == {"cankd.backbone", "cankd.neck"}
    sum(losses.values()).backward()
    assert isinstance(term.connectors[0], nn.Conv2d) and term.connectors[0].in_channels == 4
    assert isinstance(term.connectors[1], nn.Identity)
    assert [lv.in_channels for lv in term.levels] == [16, 8]
    tapped = [*student.backbone.parameters(), *student.neck.parameters()]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in tapped)
    assert all(p.grad is None for p in teacher.parameters())
    assert term.connectors[0].weight.grad.abs().sum() > 0
    for level in term.levels:
        att = level.non_local_att
        assert att.W[1].weight.grad.abs().sum() > 0  # the gate learns first
        assert not att.att.theta.weight.grad.any()  # exactly 0 while the gate is closed


def test_term_without_connector_refuses_channel_mismatch():
    term = CanKDLoss(["backbone"], connector="none")
    shape_s, shape_t = torch.Size([2, 4, 6, 6]), torch.Size([2, 16, 6, 6])
    with pytest.raises(ValueError, match="connector='auto'"):
        term.build({"backbone": shape_s}, {"backbone": shape_t})
    with pytest.raises(ValueError, match="equal stride"):
        CanKDLoss(["backbone"]).build({"backbone": shape_s}, {"backbone": torch.Size([2, 4, 3, 3])})


def test_cankd_dagger_copies_neck_and_head_from_the_teacher():
    torch.manual_seed(7)
    teacher, student = _Tiny(16), _Tiny(16)
    backbone = student.backbone.weight.clone()
    copied = init_student_from_teacher(student, teacher)
    assert copied == ["neck.weight", "neck.bias", "bbox_head.weight", "bbox_head.bias"]
    assert torch.equal(student.neck.weight, teacher.neck.weight)
    assert torch.equal(student.bbox_head.bias, teacher.bbox_head.bias)
    assert torch.equal(student.backbone.weight, backbone)  # the backbone is left alone
    with pytest.raises(ValueError, match="same type"):
        init_student_from_teacher(_Tiny(16), _Tiny(4), prefixes=("backbone",))
    other = _Tiny(16)
    term = CanKDLoss(["neck"], init_from_teacher=["neck", "bbox_head"])
    Distiller(teacher, other, {"cankd": term})
    assert torch.equal(other.neck.weight, teacher.neck.weight)


def test_cankd_dagger_fcos_loads_non_strictly_and_names_what_it_left():
    # nlkdIN_dagger_(fpn_)fcos: the conv_bias=True student loads a stock FCOS teacher (no
    # tower-conv biases) with mmengine's load_state_dict(strict=False)
    kw = {"num_classes": 3, "fpn_channels": 32, "feat_channels": 32, "stacked_convs": 2}
    torch.manual_seed(3)
    teacher = create_model("fcos_r18_fpn", **kw)
    student = create_model("fcos_r18_fpn", conv_bias=True, **kw)
    with pytest.raises(ValueError, match=r"bbox_head\.cls_convs\.0\.conv\.bias"):
        init_student_from_teacher(student, teacher)
    left = [f"bbox_head.{t}_convs.{i}.conv.bias" for i in range(2) for t in ("cls", "reg")]
    with pytest.warns(UserWarning, match="left at their init \\(4\\)") as record:
        copied = init_student_from_teacher(student, teacher, strict=False)
    message = str(record[0].message)
    assert all(key in message for key in left) and "teacher tensors not used" not in message
    state_s, state_t = student.state_dict(), teacher.state_dict()
    under = [k for k in state_s if k.startswith(("neck.", "bbox_head."))]
    assert sorted(copied) == sorted(set(under) - set(left))
    assert all(torch.equal(state_s[k], state_t[k]) for k in copied)
    assert all(not state_s[k].any() for k in left)  # mmcv ConvModule's init: bias 0
    other = create_model("fcos_r18_fpn", conv_bias=True, **kw)
    term = CanKDLoss(
        ["neck.fpn_convs.0"], init_from_teacher=["neck", "bbox_head"], init_strict=False
    )
    with pytest.warns(UserWarning, match="cls_convs.1.conv.bias"):
        term.attach(other, teacher)
    assert torch.equal(other.bbox_head.conv_cls.weight, teacher.bbox_head.conv_cls.weight)
    with pytest.raises(ValueError, match="same type"):
        CanKDLoss(["neck"], init_from_teacher=["bbox_head"]).attach(student, teacher)


@pytest.mark.parametrize(
    ("recipe", "official", "nms_pre", "max_per_img"),
    [
        ("cankd-dagger_fcos_r101_fcos_r50_fpn_2x.yaml", "nlkdIN_dagger_fpn_fcos", 1000, 100),
        ("cankd-dagger_fcos_r101_fcos_r50_fpn_2x_1000det.yaml", "nlkdIN_dagger_fcos", 2000, 1000),
    ],
)
def test_cankd_dagger_fcos_recipes_keep_their_test_settings(recipe, official, nms_pre, max_per_img):
    path = Path(__file__).resolve().parents[2] / "kdforge" / "recipes" / "coco" / "cankd" / recipe
    assert path.read_text().startswith(f"# CanKD configs/distill/mmdet/nlkd/{official}_r101_")
    cfg = load_config(path)
    kwargs = {k: v for k, v in cfg.student.kwargs.items() if k != "backbone_pretrained"}
    assert kwargs == {
        "center_sampling": True, "norm_on_bbox": True, "loss_bbox": "giou", "nms_iou": 0.6,
        "conv_bias": True, **({"nms_pre": 2000, "max_per_img": 1000} if nms_pre == 2000 else {}),
    }  # fmt: skip
    small = {"num_classes": 3, "fpn_channels": 32, "feat_channels": 32, "stacked_convs": 1}
    test_cfg = create_model(cfg.student.name, **small, **kwargs).bbox_head.test_cfg
    assert (test_cfg.nms_pre, test_cfg.max_per_img) == (nms_pre, max_per_img)
    assert test_cfg.score_thr == 0.05 and test_cfg.iou_threshold == 0.6


def test_dagger_maps_the_student_box_head_to_the_first_cascade_stage():
    """nlkdIN_dagger_fpn_cmrcnn_x101_frcnn_r50: the Faster R-CNN student's neck and box head
    start from a Cascade Mask R-CNN teacher's neck and first-stage box head (official prefix
    'roi_head.bbox_head.0'); mmengine skips the class-specific regressor, whose shape
    differs from the teacher's class-agnostic one."""
    torch.manual_seed(0)
    teacher = create_model("cascade_mask_rcnn_r18_fpn", num_classes=3)
    student = create_model("faster_rcnn_r18_fpn", num_classes=3)
    mapping = {"neck": "neck", "roi_head.bbox_head": "roi_head.bbox_head.0"}
    with pytest.warns(UserWarning, match=r"roi_head\.bbox_head\.fc_reg\.weight \(12, 1024\)"):
        copied = init_student_from_teacher(student, teacher, mapping, strict=False)
    state_s, state_t = student.state_dict(), teacher.state_dict()
    for key in ("shared_fcs.0.weight", "shared_fcs.1.bias", "fc_cls.weight"):
        assert torch.equal(
            state_s[f"roi_head.bbox_head.{key}"], state_t[f"roi_head.bbox_head.0.{key}"]
        )
    assert "roi_head.bbox_head.fc_reg.weight" not in copied
    assert torch.equal(
        state_s["neck.fpn_convs.0.conv.weight"], state_t["neck.fpn_convs.0.conv.weight"]
    )
    assert not any(k.startswith("rpn_head") for k in copied)
