"""Faster R-CNN parts against hand-computed cases: anchors, assigner settings, sampler,
RoI level mapping and pooling, the RPN and RoI losses on tiny fixed examples."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdforge.models.detection.roi_head import SingleRoIExtractor, StandardRoIHead
from kdforge.models.detection.rpn_head import RPNHead
from kdforge.models.detection.samplers import random_sample

R2 = math.sqrt(2)


def test_rpn_anchors_are_mmdetections() -> None:
    head = RPNHead(in_channels=8, feat_channels=8)
    outputs = {"rpn_cls": [torch.zeros(1, 3, 1, 2)] + [torch.zeros(1, 3, 1, 1)] * 4}
    anchors = head.anchors(outputs)
    # stride 4, scale 8: 32 px boxes, ratios h/w = 0.5, 1, 2; the second cell moved by 4 px
    first = torch.tensor(
        [
            [-16 * R2, -8 * R2, 16 * R2, 8 * R2],
            [-16, -16, 16, 16],
            [-8 * R2, -16 * R2, 8 * R2, 16 * R2],
        ]
    )
    torch.testing.assert_close(anchors[0], torch.cat((first, first + torch.tensor([4, 0, 4, 0]))))
    torch.testing.assert_close(anchors[4], first * 16)  # stride 64: 512 px boxes


def test_assigner_settings_of_both_stages() -> None:
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    # IoU with gt: 0.5, 0.4, 0.25
    priors = torch.tensor([[0.0, 0.0, 10.0, 20.0], [0.0, 0.0, 10.0, 25.0], [0.0, 0.0, 10.0, 40.0]])
    rpn, roi = RPNHead(8, 8), StandardRoIHead(2, in_channels=8, fc_out_channels=8)
    # RPN: 0.5 < 0.7 is positive only as the box's best prior (min_pos_iou 0.3); 0.4 ignored
    assert rpn.assign(priors, gt).tolist() == [1, -1, 0]
    # R-CNN: 0.5 is positive, the rest negative
    assert roi.assign(priors, gt).tolist() == [1, 0, 0]
    # no low-quality matches in the R-CNN: a box whose best IoU is 0.4 gets no positive
    assert roi.assign(priors[1:], gt).tolist() == [0, 0]
    assert rpn.assign(priors[1:], gt).tolist() == [1, 0]
    # IoU 0.8 and 0.625: the RPN ignores 0.625 (between 0.3 and 0.7), the R-CNN takes it
    priors = torch.tensor([[0.0, 0.0, 10.0, 12.5], [0.0, 0.0, 10.0, 16.0]])
    assert rpn.assign(priors, gt).tolist() == [1, -1]
    assert roi.assign(priors, gt).tolist() == [1, 1]


def test_sampler_caps_positives_and_fills_with_negatives() -> None:
    torch.manual_seed(0)
    priors = torch.rand(1300, 4)
    gt_inds = torch.cat((torch.randint(1, 3, (300,)), torch.zeros(900, dtype=torch.long)))
    gt_inds = torch.cat((gt_inds, torch.full((100,), -1)))  # ignored
    gt_boxes = torch.rand(2, 4)
    s = random_sample(priors, gt_inds, gt_boxes, 256, 0.5, False)
    assert s.pos_inds.numel() == 128 and s.neg_inds.numel() == 128
    assert (gt_inds[s.pos_inds] > 0).all() and (gt_inds[s.neg_inds] == 0).all()
    assert (s.pos_inds.diff() > 0).all() and (s.neg_inds.diff() > 0).all()  # sorted, unique
    assert torch.equal(s.pos_gt_inds, gt_inds[s.pos_inds] - 1)
    few = gt_inds.clone()
    few[10:300] = 0  # 10 positives: all taken, 246 negatives fill the rest
    s = random_sample(priors, few, gt_boxes, 256, 0.5, False)
    assert s.pos_inds.tolist() == list(range(10)) and s.neg_inds.numel() == 246
    assert s.avg_factor == 256
    assert s.sampled_priors.shape == (256, 4)


def test_sampler_draws_from_the_global_generator() -> None:
    gt_inds = torch.cat((torch.ones(100, dtype=torch.long), torch.zeros(1000, dtype=torch.long)))
    priors, gt = torch.rand(1100, 4), torch.rand(1, 4)

    def draw(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        s = random_sample(priors, gt_inds, gt, 256, 0.25, False)
        return torch.cat((s.pos_inds, s.neg_inds))

    assert torch.equal(draw(1), draw(1)) and not torch.equal(draw(1), draw(2))


def test_sampler_adds_ground_truths_as_positive_proposals() -> None:
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 30.0, 30.0]])
    priors = torch.rand(5, 4) * 50
    s = random_sample(priors, torch.zeros(5, dtype=torch.long), gt, 512, 0.25, True)
    assert s.pos_inds.tolist() == [0, 1] and s.pos_gt_inds.tolist() == [0, 1]
    assert torch.equal(s.priors[:2], gt) and s.neg_inds.tolist() == [2, 3, 4, 5, 6]
    assert s.avg_factor == 7
    empty = random_sample(priors[:0], torch.zeros(0, dtype=torch.long), gt[:0], 512, 0.25, True)
    assert empty.pos_inds.numel() == 0 and empty.neg_inds.numel() == 0 and empty.avg_factor == 2


def test_roi_level_mapping_by_scale() -> None:
    extractor = SingleRoIExtractor()
    sides = [50.0, 111.0, 112.0, 223.0, 224.0, 448.0, 1000.0]  # finest_scale 56
    rois = torch.tensor([[0.0, 0.0, 0.0, s, s] for s in sides])
    assert extractor.map_roi_levels(rois).tolist() == [0, 0, 1, 1, 2, 3, 3]
    # 100 x 200: sqrt = 141.4 -> level 1
    assert extractor.map_roi_levels(torch.tensor([[0.0, 0, 0, 100, 200]])).tolist() == [1]


def test_roi_extractor_pools_each_roi_from_its_level_at_its_stride() -> None:
    # level l holds 100 * l + x (x = column index): the pooled value names level and scale
    feats = [
        (100.0 * lvl + torch.arange(32.0 // 2**lvl)).expand(1, 2, 32 // 2**lvl, -1).contiguous()
        for lvl in range(4)
    ]
    rois = torch.tensor([[0.0, 16.0, 16.0, 72.0, 72.0], [0.0, 0.0, 0.0, 120.0, 120.0]])
    out = SingleRoIExtractor()(feats, rois)
    assert out.shape == (2, 2, 7, 7) and out.dtype == torch.float32
    # RoI 0 (56 px) on P2, stride 4: x from 16 / 4 - 0.5 = 3.5 in bins of 2 -> centres 4.5 + 2j
    torch.testing.assert_close(out[0, 0, 3], 4.5 + 2 * torch.arange(7.0))
    # RoI 1 (120 px) on P3, stride 8: x from -0.5 in bins of 15 / 7 -> centre values
    centres = -0.5 + (torch.arange(7.0) + 0.5) * 15 / 7
    assert torch.allclose(out[1, 0, 3, 1:], 100 + centres[1:], atol=1e-4)


def test_rpn_loss_on_a_fixed_example() -> None:
    # one level, stride 16, 16 px square anchors at (0, 0), (16, 0), (0, 16), (16, 16)
    head = RPNHead(8, 8, strides=(16,), anchor_scale=1, ratios=(1.0,))
    outputs = {"rpn_cls": [torch.full((2, 1, 2, 2), 2.0)], "rpn_reg": [torch.zeros(2, 4, 2, 2)]}
    # the box is the (16, 16) anchor moved right by 2 px: IoU 224 / 288 = 0.78, others 0
    targets = [
        {"boxes": torch.tensor([[10.0, 8.0, 26.0, 24.0]])},
        {"boxes": torch.zeros(0, 4)},
    ]
    # image 2 padded to 16 x 16: only the anchor at (0, 0) lies on it (1 negative)
    losses = head.loss(outputs, targets, [(32, 32), (16, 16)])
    pos, neg = F.softplus(torch.tensor(-2.0)), F.softplus(torch.tensor(2.0))
    avg = (1 + 3) + (1 + 1)  # per image max(pos, 1) + max(neg, 1)
    torch.testing.assert_close(losses["loss_rpn_cls"], (pos + 4 * neg) / avg)
    # target delta: dx = (18 - 16) / 16 = 0.125 (stds 1), nothing else
    torch.testing.assert_close(losses["loss_rpn_bbox"], torch.tensor(0.125 / avg))


def test_roi_loss_on_a_fixed_example() -> None:
    head = StandardRoIHead(2, in_channels=4, fc_out_channels=8)
    bbox_head = head.bbox_head
    for fc in (*bbox_head.shared_fcs, bbox_head.fc_cls, bbox_head.fc_reg):
        nn.init.zeros_(fc.weight)
    with torch.no_grad():
        bbox_head.fc_cls.bias.copy_(torch.tensor([1.0, 2.0, 0.0]))  # classes 0, 1, background
        bbox_head.fc_reg.bias.copy_(torch.tensor([5.0] * 4 + [0.0] * 4))  # class 0 off by 5
    feats = [torch.randn(1, 4, 16 // 2**i, 16 // 2**i) for i in range(4)]
    gt = {"boxes": torch.tensor([[0.0, 0.0, 20.0, 20.0]]), "labels": torch.tensor([1])}
    # IoU 0.82 (positive), 0.5 (positive), 0 (negative); the gt is added as a positive
    proposals = torch.tensor([[2.0, 0.0, 22.0, 20.0], [0.0, 0.0, 20.0, 40.0], [30, 30, 40, 40]])
    losses = head.loss(feats, [proposals], [gt])
    lse = torch.logsumexp(torch.tensor([1.0, 2.0, 0.0]), 0)
    torch.testing.assert_close(losses["loss_cls"], (3 * (lse - 2) + lse) / 4)
    # class-1 deltas / stds (0.1, 0.1, 0.2, 0.2): gt 0; proposal 0 dx = -2 / 20 -> 1;
    # proposal 1 dy = -10 / 40 -> 2.5, dh = log(0.5) -> 3.466
    expected = (1 + 2.5 + math.log(2) / 0.2) / 4
    torch.testing.assert_close(losses["loss_bbox"], torch.tensor(expected))


@pytest.mark.parametrize("num_gt", [0, 1])
def test_roi_loss_without_proposals_or_boxes_is_finite(num_gt: int) -> None:
    head = StandardRoIHead(2, in_channels=4, fc_out_channels=8)
    feats = [torch.randn(1, 4, 16 // 2**i, 16 // 2**i, requires_grad=True) for i in range(4)]
    gt = {"boxes": torch.tensor([[0.0, 0.0, 20.0, 20.0]])[:num_gt], "labels": torch.ones(num_gt)}
    losses = head.loss(feats, [torch.zeros(0, 4)], [gt])
    assert all(torch.isfinite(v) for v in losses.values())
    if num_gt == 0:
        assert losses["loss_cls"].item() == 0 and losses["loss_bbox"].item() == 0
    sum(losses.values()).backward()
