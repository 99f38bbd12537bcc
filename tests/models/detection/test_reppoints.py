"""RepPoints: moment transform, PointAssigner, the head's two-stage losses, mmdetection keys,
and an R18 that overfits three shapes images."""

from __future__ import annotations

import math

import pytest
import torch

from kdforge.models import create_model
from kdforge.models.detection.assigners import point_assign
from kdforge.models.detection.fpn import FPN
from kdforge.models.detection.reppoints import RepPointsHead, moment_points_to_box

STRIDES = (8, 16, 32, 64, 128)


def test_moment_transform_by_hand() -> None:
    # x on a 3x3 grid {0, 2, 4}, y on {10, 13, 16}: mean (2, 13), unbiased std sqrt(3), 1.5 sqrt(3)
    xs = torch.tensor([0.0, 2, 4]).repeat(3)
    ys = torch.tensor([10.0, 13, 16]).repeat_interleave(3)
    transfer = torch.tensor([math.log(2.0), 0.0], requires_grad=True)
    yx = torch.stack((ys, xs), 1).reshape(1, 18)
    box = moment_points_to_box(yx, transfer, moment_mul=0.01)
    hw, hh = 2 * math.sqrt(3), 1.5 * math.sqrt(3)  # width scaled by exp(log 2)
    expected = torch.tensor([[2 - hw, 13 - hh, 2 + hw, 13 + hh]])
    torch.testing.assert_close(box, expected)
    xy = torch.stack((xs, ys), 1).reshape(1, 18)
    torch.testing.assert_close(moment_points_to_box(xy, transfer, y_first=False), expected)
    # d(x2 - x1)/dt_w = 2 * half_w, of which only moment_mul reaches the parameter
    (box[0, 2] - box[0, 0]).backward()
    torch.testing.assert_close(transfer.grad, torch.tensor([0.01 * 2 * hw, 0.0]))


def test_point_assigner_by_hand() -> None:
    # level 3 (stride 8): a 4x4 grid; level 4 (stride 16): a 2x2 grid
    p3 = torch.tensor([(x * 8.0, y * 8.0) for y in range(4) for x in range(4)])
    p4 = torch.tensor([(x * 16.0, y * 16.0) for y in range(2) for x in range(2)])
    points = torch.cat((p3, p4))
    strides = torch.tensor([8.0] * 16 + [16.0] * 4)
    boxes = torch.tensor(
        [
            [2.0, 3.0, 34.0, 35.0],  # 32 x 32: level (3 + 3) / 2 = 3; centre (18, 19)
            [0.0, 0.0, 64.0, 64.0],  # 64 x 64: level 4; centre (32, 32) -> point (16, 16)
            [14.0, 14.0, 18.0, 18.0],  # 4 x 4: level 0 clamped to 3; centre (16, 16)
        ]
    )
    inds = point_assign(points, strides, boxes, scale=4, pos_num=1)
    # box 0's nearest level-3 point is (16, 16) (index 10) at distance |(-2, -3)| / 32; box 2
    # sits exactly on it (distance 0 < box 0's), so takes it over
    expected = torch.zeros(20, dtype=torch.long)
    expected[10] = 3
    expected[16 + 3] = 2
    assert inds.tolist() == expected.tolist()
    # two positives each: box 0 keeps its second nearest point
    inds = point_assign(points, strides, boxes[:1], scale=4, pos_num=2)
    assert sorted(inds.nonzero().squeeze(1).tolist()) == [10, 14]  # (16, 16) and (16, 24)
    assert point_assign(points, strides, boxes[:0]).eq(0).all()
    # a tie keeps the earlier box (mmdetection: strictly closer to take a point over)
    assert point_assign(points, strides, boxes[[0, 0]]).tolist() == [0] * 10 + [1] + [0] * 9


def _head(**kwargs) -> RepPointsHead:
    torch.manual_seed(0)
    return RepPointsHead(3, 32, 32, 32, stacked_convs=1, norm_groups=8, **kwargs)


def _outputs(head: RepPointsHead, n: int = 1) -> dict[str, list[torch.Tensor]]:
    torch.manual_seed(1)
    feats = [torch.randn(n, 32, 64 // s, 64 // s) for s in STRIDES[:3]]
    feats += [torch.randn(n, 32, 1, 1), torch.randn(n, 32, 1, 1)]
    return head(feats)


def _grid_points(half_y: float, half_x: float) -> torch.Tensor:
    """(18,) (y, x) offsets of a 3x3 grid whose moment box has these half-sides (strides)."""
    ys, xs = (torch.tensor([-h, 0.0, h]) / math.sqrt(0.75) for h in (half_y, half_x))
    return torch.stack((ys.repeat_interleave(3), xs.repeat(3)), 1).reshape(18)


def test_init_loss_by_hand() -> None:
    head = _head()
    outputs = {k: [t.detach().requires_grad_() for t in v] for k, v in _outputs(head).items()}
    for t in outputs["pts_init"]:
        t.data.zero_()
    # at (24, 24): half-sides 0.5 (y) and 2 (x) strides -> init box (8, 20, 40, 28)
    outputs["pts_init"][0].data[0, :, 3, 3] = _grid_points(0.5, 2.0)
    box = torch.tensor([[8.0, 12.0, 40.0, 36.0]])  # 32 x 24 -> level 3, centre (24, 24)
    losses = head.loss(outputs, [{"boxes": box, "labels": torch.tensor([1])}], (64, 64))
    # one positive, (24, 24): x sides exact, y sides 8 px off, / (4 * 8) = 0.25; smooth L1
    # (beta 0.11): 0.25 - 0.055 for each y side, / 1 positive, weight 0.5
    assert losses["loss_pts_init"].item() == pytest.approx(0.5 * 2 * (0.25 - 0.055), rel=1e-5)


def test_refine_stage_ignores_proposals_between_the_iou_thresholds() -> None:
    head = _head()
    outputs = {k: [t.detach().requires_grad_() for t in v] for k, v in _outputs(head).items()}
    for t in outputs["pts_init"]:
        t.data.zero_()  # degenerate proposals: IoU 0, background
    outputs["pts_init"][0].data[0, :, 3, 3] = _grid_points(2.0, 2.0)  # (24, 24) +- 16 px: the box
    outputs["pts_init"][0].data[0, :, 3, 2] = _grid_points(
        2.75, 2.75
    )  # (16, 24) +- 22 px: IoU 0.48
    box = torch.tensor([[8.0, 8.0, 40.0, 40.0]])
    loss = head.loss(outputs, [{"boxes": box, "labels": torch.tensor([1])}], (64, 64))["loss_cls"]
    (grad,) = torch.autograd.grad(loss, outputs["cls"][0])
    assert grad[0, :, 3, 2].abs().sum() == 0  # 0.4 <= IoU < 0.5: ignored, no loss
    assert grad[0, 1, 3, 3] < 0 and grad[0, :, 0, 0].abs().sum() > 0  # positive, background


def test_regular_grid_points_make_plain_convolutions() -> None:
    head = _head()
    torch.nn.init.zeros_(head.reppoints_pts_init_out.weight)
    with torch.no_grad():  # every init point set on the deformable kernel's own 3x3 grid
        head.reppoints_pts_init_out.bias.copy_(head.dcn_base_offset.reshape(18))
    cls_feat, reg_feat = torch.randn(2, 1, 32, 6, 5).unbind(0)
    out = head.predict_level(0, cls_feat, reg_feat)
    plain = torch.nn.functional.conv2d(cls_feat, head.reppoints_cls_conv.weight, padding=1)
    torch.testing.assert_close(out["cls"], head.reppoints_cls_out(plain.relu()))
    plain = torch.nn.functional.conv2d(reg_feat, head.reppoints_pts_refine_conv.weight, padding=1)
    expected = head.reppoints_pts_refine_out(plain.relu()) + out["pts_init"]
    torch.testing.assert_close(out["reg"], expected)


def test_each_loss_responds_to_its_own_output() -> None:
    head = _head()
    outputs = {k: [t.detach().requires_grad_() for t in v] for k, v in _outputs(head, 2).items()}
    targets = [
        {"boxes": torch.tensor([[4.0, 6.0, 40.0, 30.0]]), "labels": torch.tensor([2])},
        {"boxes": torch.tensor([[10.0, 10.0, 60.0, 58.0]]), "labels": torch.tensor([0])},
    ]
    losses = head.loss(outputs, targets, (64, 64))
    assert set(losses) == {"loss_cls", "loss_pts_init", "loss_pts_refine"}
    owner = {"loss_cls": "cls", "loss_pts_init": "pts_init", "loss_pts_refine": "reg"}
    keys = [k for k, v in outputs.items() for _ in v]
    tensors = [t for v in outputs.values() for t in v]
    for name, loss in losses.items():
        assert torch.isfinite(loss) and loss > 0, name
        grads = torch.autograd.grad(loss, tensors, retain_graph=True, allow_unused=True)
        touched = {k for k, g in zip(keys, grads, strict=True) if g is not None and g.any()}
        assert touched == {owner[name]}, name
    assert head.moment_transfer.grad is None  # outputs detached from the head here


def test_empty_image_and_gradient_paths() -> None:
    head = _head()
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    losses = head.loss(_outputs(head), [empty], (64, 64))
    assert losses["loss_pts_init"] == 0 and losses["loss_pts_refine"] == 0
    sum(losses.values()).backward()  # every loss still in the graph
    assert head.reppoints_cls_out.weight.grad.abs().sum() > 0
    # gradient_mul: a tenth of the deformable convs' gradient reaches the init points
    head.zero_grad()
    out = _outputs(head)
    sum(o.sum() for o in out["cls"]).backward()
    assert head.reppoints_pts_init_out.weight.grad.abs().sum() > 0
    head.zero_grad()
    out = head.predict_level(0, torch.randn(1, 32, 4, 4), torch.randn(1, 32, 4, 4))
    out["reg"].sum().backward()  # the refined points add the init points detached
    g_refine = head.reppoints_pts_init_out.weight.grad.clone()
    head.gradient_mul = 0.0
    head.zero_grad()
    out = head.predict_level(0, torch.randn(1, 32, 4, 4), torch.randn(1, 32, 4, 4))
    out["reg"].sum().backward()
    assert g_refine.abs().sum() > 0 and head.reppoints_pts_init_out.weight.grad.abs().sum() == 0


def test_head_keys_are_mmdetections() -> None:
    head = RepPointsHead(80)
    expected = {"moment_transfer": (2,)}
    for tower in ("cls_convs", "reg_convs"):
        for i in range(3):
            expected[f"{tower}.{i}.conv.weight"] = (256, 256, 3, 3)
            expected |= {f"{tower}.{i}.gn.{p}": (256,) for p in ("weight", "bias")}
    for name, out, k, bias in (
        ("reppoints_cls_conv", 256, 3, False),
        ("reppoints_cls_out", 80, 1, True),
        ("reppoints_pts_init_conv", 256, 3, True),
        ("reppoints_pts_init_out", 18, 1, True),
        ("reppoints_pts_refine_conv", 256, 3, False),
        ("reppoints_pts_refine_out", 18, 1, True),
    ):
        expected[f"{name}.weight"] = (out, 256, k, k)
        if bias:
            expected[f"{name}.bias"] = (out,)
    assert {k: tuple(v.shape) for k, v in head.state_dict().items()} == expected
    # mmdetection's dcn_base_offset: (y, x) of the 3x3 kernel positions, row by row
    grid = [[y, x] for y in (-1.0, 0.0, 1.0) for x in (-1.0, 0.0, 1.0)]
    assert head.dcn_base_offset.reshape(9, 2).tolist() == grid
    cfg = head.test_cfg
    assert (cfg.score_thr, cfg.nms_pre, cfg.iou_threshold, cfg.max_per_img) == (
        0.05,
        1000,
        0.5,
        100,
    )


def test_fpn_with_group_norm() -> None:
    neck = FPN((8, 16, 32, 64), 32, add_extra_convs="on_input", norm_groups=32)
    convs = [*neck.lateral_convs, *neck.fpn_convs]
    assert len(convs) == 8 and all(c.conv.bias is None and c.gn.num_groups == 32 for c in convs)
    c = [
        torch.randn(2, ch, 64 // s, 64 // s)
        for ch, s in zip((8, 16, 32, 64), (4, 8, 16, 32), strict=True)
    ]
    outs = neck(c)
    torch.testing.assert_close(outs[3], neck.fpn_convs[3](c[3]))  # P6 on C5, through its GN
    model = create_model("reppoints_moment_r18_fpn_gn", num_classes=3, fpn_channels=32)
    assert model.neck.add_extra_convs == "on_input" and model.neck.fpn_convs[4].gn is not None
    assert model.backbone.style == "pytorch" and model.bbox_head.strides == STRIDES


def test_reppoints_r18_overfits_three_shapes_images(three_shapes) -> None:
    torch.manual_seed(0)
    model = create_model(
        "reppoints_moment_r18_fpn_gn",
        num_classes=three_shapes.data.num_classes,
        fpn_channels=32,
        feat_channels=32,
        point_feat_channels=32,
    ).train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    three_shapes.overfit(model, optimizer, range(60, 201, 20))


def test_bfloat16_autocast_keeps_losses_and_boxes_in_float32() -> None:
    head = _head()
    feats = [torch.randn(1, 32, 64 // s, 64 // s) for s in STRIDES[:3]]
    feats += [torch.randn(1, 32, 2, 2), torch.randn(1, 32, 1, 1)]
    target = {"boxes": torch.tensor([[4.0, 6.0, 40.0, 30.0]]), "labels": torch.tensor([2])}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = head(feats)
        losses = head.loss(outputs, [target], (64, 64))
    assert outputs["cls"][0].dtype == torch.bfloat16
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    head.test_cfg = type(head.test_cfg)(score_thr=0.0)
    boxes = head.predict(outputs, [(64, 64)])[0]["boxes"]
    assert boxes.dtype == torch.float32 and boxes.shape[0] > 0
