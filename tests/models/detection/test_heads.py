"""Splittable heads (forward_from / forward_until), mmcv naming, level scales, losses."""

from __future__ import annotations

import math

import pytest
import torch

from kdforge.models.detection import ATSSHead, FCOSHead, GFLHead, RetinaHead
from kdforge.models.detection._dense_head import ConvModule, Scale

HEADS = {"retinanet": RetinaHead, "fcos": FCOSHead, "atss": ATSSHead, "gfl": GFLHead}
SIZES = [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]  # P3..P7 of a 64x64 image
OUTPUT_KEYS = {
    "retinanet": {"cls", "reg"},
    "fcos": {"cls", "reg", "centerness"},
    "atss": {"cls", "reg", "centerness"},
    "gfl": {"cls", "reg"},
}
TARGETS = [
    {"boxes": torch.tensor([[8.0, 8.0, 40.0, 36.0]]), "labels": torch.tensor([1])},
    {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
]


def _head(kind: str, **kwargs):
    torch.manual_seed(0)
    return HEADS[kind](3, in_channels=16, feat_channels=16, stacked_convs=3, **kwargs)


def _feats(n: int = 2) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(n, 16, h, w, generator=g) for h, w in SIZES]


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        for x, y in zip(a[key], b[key], strict=True):
            torch.testing.assert_close(x, y)


@pytest.mark.parametrize("kind", HEADS)
def test_forward_from_zero_is_forward_and_every_split_agrees(kind: str) -> None:
    head = _head(kind, **({} if kind == "retinanet" else {"norm_groups": 4}))
    feats = _feats()
    with torch.no_grad():
        full = head(feats)
        assert set(full) == OUTPUT_KEYS[kind]
        _assert_same(head.forward_from(0, feats), full)
        for stage in range(head.num_stages + 1):
            cls_feats, reg_feats = head.forward_until(stage, feats)
            _assert_same(head.forward_from(stage, cls_feats, reg_feats), full)
    with pytest.raises(ValueError, match="stage"):
        head.forward_from(head.num_stages + 1, feats)


@pytest.mark.parametrize("kind", HEADS)
def test_mmcv_names_and_level_scales(kind: str) -> None:
    head = _head(kind, **({} if kind == "retinanet" else {"norm_groups": 4}))
    keys = set(head.state_dict())
    assert "cls_convs.0.conv.weight" in keys and "reg_convs.2.conv.weight" in keys
    assert isinstance(head.cls_convs[1], ConvModule)
    if kind == "retinanet":  # mmdetection's RetinaHead: conv + bias + ReLU, no scales
        assert "cls_convs.0.conv.bias" in keys and head.scales is None
        return
    assert "cls_convs.0.gn.weight" in keys and "cls_convs.0.conv.bias" not in keys
    assert [f"scales.{i}.scale" in keys for i in range(5)] == [True] * 5
    feats = _feats()
    with torch.no_grad():
        before = head(feats)["reg"]
        head.scales[2].scale.fill_(1.5)
        after = head(feats)["reg"]
    for level, (x, y) in enumerate(zip(before, after, strict=True)):
        assert torch.equal(x, y) == (level != 2)
    assert isinstance(head.scales[0], Scale)


def test_tower_relu_is_in_place_like_mmcv() -> None:
    head = _head("gfl", norm_groups=4)
    seen = []
    handle = head.cls_convs[0].gn.register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        head(_feats())
    handle.remove()
    assert all(t.min() >= 0 for t in seen)  # the hook's tensor was overwritten by the ReLU
    x = torch.randn(1, 16, 4, 4)
    assert head.cls_convs[0](x, activate=False).min() < 0


@pytest.mark.parametrize("kind", HEADS)
def test_loss_is_finite_backpropagates_and_handles_empty_images(kind: str) -> None:
    head = _head(kind, **({} if kind == "retinanet" else {"norm_groups": 4}))
    feats = [f.requires_grad_() for f in _feats()]
    losses = head.loss(head(feats), TARGETS, (64, 64))
    assert set(losses) >= {"loss_cls", "loss_bbox"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert feats[0].grad is not None and torch.isfinite(feats[0].grad).all()
    empty = head.loss(head(_feats()), TARGETS[1:] * 2, [(64, 64), (48, 64)])
    assert all(torch.isfinite(v) for v in empty.values())


@pytest.mark.parametrize("kind", HEADS)
def test_predict_clips_boxes_and_respects_max_per_img(kind: str) -> None:
    norm = {} if kind == "retinanet" else {"norm_groups": 4}
    head = _head(kind, score_thr=0.0, max_per_img=7, **norm)
    with torch.no_grad():
        dets = head.predict(head(_feats()), [(64, 64), (40, 30)])
    for det, (h, w) in zip(dets, [(64, 64), (40, 30)], strict=True):
        assert det["boxes"].shape[0] == det["scores"].shape[0] == det["labels"].shape[0] <= 7
        assert det["boxes"].shape[0] > 0
        assert (det["boxes"][:, 0::2] <= w).all() and (det["boxes"][:, 1::2] <= h).all()
        assert (det["scores"][:-1] >= det["scores"][1:]).all()
        assert det["labels"].dtype == torch.long and det["labels"].max() < 3


def test_default_settings_follow_mmdetection_configs() -> None:
    retina, fcos, atss, gfl = (HEADS[k](80) for k in ("retinanet", "fcos", "atss", "gfl"))
    assert retina.num_anchors == 9 and retina.retina_cls.out_channels == 9 * 80
    assert retina.test_cfg.iou_threshold == 0.5 and fcos.test_cfg.iou_threshold == 0.5
    assert atss.test_cfg.iou_threshold == gfl.test_cfg.iou_threshold == 0.6
    assert atss.coder.stds == (0.1, 0.1, 0.2, 0.2) and retina.coder.stds == (1, 1, 1, 1)
    assert atss.loss_bbox_weight == gfl.loss_bbox_weight == 2.0 and gfl.loss_dfl_weight == 0.25
    assert gfl.gfl_reg.out_channels == 4 * 17 and gfl.integral.project[-1] == 16
    assert not fcos.center_sampling and not fcos.norm_on_bbox and fcos.loss_bbox_type == "iou"
    for head in (retina, fcos, atss, gfl):
        assert head.strides == (8, 16, 32, 64, 128) and head.num_stages == 4
        assert head.test_cfg.score_thr == 0.05 and head.test_cfg.nms_pre == 1000
        assert head.test_cfg.max_per_img == 100
    for cls in (retina.retina_cls, fcos.conv_cls, atss.atss_cls, gfl.gfl_cls):
        assert cls.bias[0].item() == pytest.approx(-math.log(99))  # prior probability 0.01


def test_fcos_options_change_targets_and_outputs() -> None:
    feats = _feats()
    for kwargs in (
        {"center_sampling": True},
        {"norm_on_bbox": True, "centerness_on_reg": True},
        {"loss_bbox": "giou"},
    ):
        head = _head("fcos", norm_groups=4, **kwargs)
        losses = head.loss(head(feats), TARGETS, (64, 64))
        assert all(torch.isfinite(v) for v in losses.values())
    plain = _head("fcos", norm_groups=4)
    with torch.no_grad():
        assert (plain(feats)["reg"][0] > 0).all()  # exp
        normed = _head("fcos", norm_groups=4, norm_on_bbox=True)(feats)["reg"][0]
    assert (normed >= 0).all() and (normed == 0).any()  # relu (clamp at 0)


def test_fcos_tower_conv_bias_follows_mmdetection() -> None:
    # mmdetection's FCOS configs leave conv_bias="auto": no bias before the GN
    stock = FCOSHead(3, in_channels=32, feat_channels=32, stacked_convs=2)
    assert all(m.conv.bias is None for m in (*stock.cls_convs, *stock.reg_convs))
    # "center-normbbox-centeronreg-giou" and CanKD's FCOS student: conv_bias=True, bias 0
    biased = FCOSHead(3, in_channels=32, feat_channels=32, stacked_convs=2, conv_bias=True)
    for m in (*biased.cls_convs, *biased.reg_convs):
        assert m.gn is not None and m.conv.bias is not None and not m.conv.bias.any()
    assert all(m.conv.bias is not None for m in RetinaHead(3, 32, 32, 2).cls_convs)  # no norm
