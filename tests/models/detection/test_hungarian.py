"""HungarianAssigner: mmdetection's match costs on hand-computed matrices, optimal matching."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from kdforge.models.detection.hungarian import (
    HungarianAssigner,
    bbox_l1_cost,
    focal_loss_cost,
    iou_cost,
)


def _t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def test_focal_loss_cost_by_hand() -> None:
    # p = sigmoid(ln 3) = 0.75: pos = -ln(0.75) * 0.25 * 0.25^2, neg = -ln(0.25) * 0.75 * 0.75^2
    logits = _t([[math.log(3.0), 0.0]])
    cost = focal_loss_cost(logits, torch.tensor([0, 1, 0]))
    pos = -math.log(0.75) * 0.25 * 0.25**2
    neg = -math.log(0.25) * 0.75 * 0.75**2
    half = -math.log(0.5) * 0.25 * 0.25 - (-math.log(0.5) * 0.75 * 0.25)
    assert cost.shape == (1, 3)
    torch.testing.assert_close(cost, _t([[pos - neg, half, pos - neg]]))


def test_box_costs_by_hand() -> None:
    pred = _t([[40, 40, 60, 60]])
    gt = _t([[0, 0, 50, 50], [50, 50, 100, 100]])
    # overlap 100, union 2800, enclosing 3600: GIoU = 1/28 - 800/3600
    giou = 100 / 2800 - 800 / 3600
    torch.testing.assert_close(iou_cost(pred, gt), _t([[-giou, -giou]]))
    torch.testing.assert_close(iou_cost(pred, gt, mode="iou"), _t([[-1 / 28, -1 / 28]]))
    l1 = bbox_l1_cost(_t([[0.5, 0.5, 0.2, 0.2]]), _t([[0.25, 0.25, 0.5, 0.5]]))
    torch.testing.assert_close(l1, _t([[1.1]]))


def _scene() -> tuple[torch.Tensor, ...]:
    """A 100 x 200 (H x W) image, two boxes; three queries with equal class logits."""
    gt = _t([[0, 0, 100, 50], [100, 50, 200, 100]])  # labels 0 and 1
    labels = torch.tensor([0, 1])
    pred = _t([[0.75, 0.75, 0.5, 0.5], [0.25, 0.25, 0.5, 0.5], [0.5, 0.5, 0.2, 0.2]])
    return torch.zeros(3, 2), pred, gt, labels


def test_cost_matrix_by_hand() -> None:
    logits, pred, gt, labels = _scene()
    cost = HungarianAssigner().cost(logits, pred, gt, labels, (100, 200))
    cls = 2.0 * (-math.log(0.5) * 0.25 * 0.25 + math.log(0.5) * 0.75 * 0.25)  # p = 0.5
    # q0 = box 1 exactly: L1 0, GIoU 1. q0 vs box 0: L1 0.5 + 0.5, corner-touching GIoU -0.5.
    # q2 = (80, 40, 120, 60) px: L1 0.25 * 2 + 0.3 * 2 = 1.1 to both; GIoU with box 0:
    # overlap 20 x 10, union 800 + 5000 - 200, enclosing 120 x 60.
    giou = 200 / 5600 - (7200 - 5600) / 7200
    expected = _t(
        [
            [cls + 5 * 1.0 + 2 * 0.5, cls + 0.0 - 2 * 1.0],
            [cls + 0.0 - 2 * 1.0, cls + 5 * 1.0 + 2 * 0.5],
            [cls + 5 * 1.1 - 2 * giou, cls + 5 * 1.1 - 2 * giou],
        ]
    )
    torch.testing.assert_close(cost, expected)
    assert HungarianAssigner().assign(logits, pred, gt, labels, (100, 200)).tolist() == [2, 1, 0]


def test_class_cost_breaks_a_box_tie() -> None:
    gt = _t([[10, 10, 50, 50], [10, 10, 50, 50]])
    pred = _t([[0.3, 0.3, 0.4, 0.4], [0.3, 0.3, 0.4, 0.4]])
    logits = _t([[-5.0, 5.0], [5.0, -5.0]])  # query 0 says class 1, query 1 class 0
    assigner = HungarianAssigner()
    assert assigner.assign(logits, pred, gt, torch.tensor([0, 1]), (100, 100)).tolist() == [2, 1]
    assert assigner.assign(logits, pred, gt, torch.tensor([1, 0]), (100, 100)).tolist() == [1, 2]


@pytest.mark.parametrize("seed", range(4))
def test_matching_is_the_minimum_total_cost(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    num_q, num_g = 5, 3
    logits = torch.randn(num_q, 4, generator=generator)
    pred = torch.rand(num_q, 4, generator=generator) * 0.5 + 0.25
    xy = torch.rand(num_g, 2, generator=generator) * 40
    gt = torch.cat([xy, xy + 10 + torch.rand(num_g, 2, generator=generator) * 40], 1)
    labels = torch.randint(0, 4, (num_g,), generator=generator)
    assigner = HungarianAssigner()
    cost = assigner.cost(logits, pred, gt, labels, (80, 90))
    gt_inds = assigner.assign(logits, pred, gt, labels, (80, 90))
    assert sorted(gt_inds[gt_inds > 0].tolist()) == [1, 2, 3]  # every box exactly once
    total = sum(cost[q, g - 1] for q, g in enumerate(gt_inds.tolist()) if g > 0)
    best = min(
        sum(cost[q, g] for g, q in enumerate(queries))
        for queries in itertools.permutations(range(num_q), num_g)
    )
    torch.testing.assert_close(total, best)


def test_empty_and_fewer_queries_than_boxes() -> None:
    assigner = HungarianAssigner()
    none = assigner.assign(
        torch.zeros(3, 2),
        torch.rand(3, 4),
        torch.zeros(0, 4),
        torch.zeros(0, dtype=torch.long),
        (10, 10),
    )
    assert none.tolist() == [0, 0, 0]
    gt = _t([[0, 0, 5, 5], [5, 5, 10, 10], [0, 5, 5, 10]])
    two = assigner.assign(
        torch.zeros(2, 2),
        _t([[0.25, 0.25, 0.5, 0.5], [0.75, 0.75, 0.5, 0.5]]),
        gt,
        torch.tensor([0, 0, 1]),
        (10, 10),
    )
    assert two.tolist() == [1, 2]
