"""Detection losses against closed forms, with mmdetection's avg_factor reduction."""

from __future__ import annotations

import math

import pytest
import torch

from kdforge.models.detection.det_losses import (
    EPS32,
    binary_cross_entropy,
    distribution_focal_loss,
    giou_loss,
    iou_loss,
    l1_loss,
    quality_focal_loss,
    sigmoid_focal_loss,
    smooth_l1_loss,
    weight_reduce,
)


def _sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_weight_reduce_sum_over_avg_factor() -> None:
    loss = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    weight = torch.tensor([1.0, 0.5])
    assert weight_reduce(loss, weight, avg_factor=2.0).item() == pytest.approx(6.5 / (2 + EPS32))
    assert weight_reduce(loss).item() == pytest.approx(2.5)


def test_sigmoid_focal_loss_closed_form() -> None:
    pred = torch.tensor([[0.3, -1.2], [2.0, 0.5]])
    labels = torch.tensor([1, 2])  # row 0: class 1 positive; row 1: background (K = 2)
    g, a = 2.0, 0.25
    p = [[_sig(0.3), _sig(-1.2)], [_sig(2.0), _sig(0.5)]]
    neg = lambda q: -(1 - a) * q**g * math.log(1 - q)  # noqa: E731
    pos = lambda q: -a * (1 - q) ** g * math.log(q)  # noqa: E731
    expected = neg(p[0][0]) + pos(p[0][1]) + 0.5 * (neg(p[1][0]) + neg(p[1][1]))
    weight = torch.tensor([1.0, 0.5])
    value = sigmoid_focal_loss(pred, labels, weight, g, a, avg_factor=3.0)
    assert value.item() == pytest.approx(expected / 3.0, rel=1e-5)


def test_quality_focal_loss_closed_form() -> None:
    pred = torch.tensor([[0.4, -0.3], [1.0, -2.0]])
    labels, scores = torch.tensor([0, 2]), torch.tensor([0.7, 0.0])
    beta = 2.0
    bce = lambda x, y: -(y * math.log(_sig(x)) + (1 - y) * math.log(1 - _sig(x)))  # noqa: E731
    neg = lambda x: _sig(x) ** beta * bce(x, 0.0)  # noqa: E731
    expected = abs(0.7 - _sig(0.4)) ** beta * bce(0.4, 0.7) + neg(-0.3) + neg(1.0) + neg(-2.0)
    value = quality_focal_loss(pred, labels, scores, beta=beta, avg_factor=2.0)
    assert value.item() == pytest.approx(expected / 2.0, rel=1e-5)


def test_distribution_focal_loss_closed_form() -> None:
    pred = torch.tensor([[0.1, 0.5, -0.2, 1.0, 0.3]])
    log_p = torch.log_softmax(pred, 1)[0]
    expected = -(0.7 * log_p[2] + 0.3 * log_p[3])
    value = distribution_focal_loss(pred, torch.tensor([2.3]))
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)


BOX_A = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
BOX_B = torch.tensor([[1.0, 1.0, 3.0, 3.0]])


def test_iou_losses_closed_form() -> None:
    assert iou_loss(BOX_A, BOX_B).item() == pytest.approx(math.log(7), rel=1e-6)
    assert iou_loss(BOX_A, BOX_B, mode="linear").item() == pytest.approx(6 / 7)
    assert iou_loss(BOX_A, BOX_B, mode="square").item() == pytest.approx(1 - 1 / 49)
    far = torch.tensor([[5.0, 5.0, 6.0, 6.0]])
    assert iou_loss(BOX_A, far).item() == pytest.approx(-math.log(1e-6), rel=1e-5)
    assert giou_loss(BOX_A, BOX_B).item() == pytest.approx(1 - (1 / 7 - 2 / 9), rel=1e-6)
    weighted = giou_loss(
        BOX_A.repeat(2, 1), BOX_B.repeat(2, 1), torch.tensor([1.0, 3.0]), 1e-6, 2.0
    )
    assert weighted.item() == pytest.approx(4 * (1 - (1 / 7 - 2 / 9)) / 2, rel=1e-5)


def test_iou_losses_with_no_positive_weight_are_zero_with_grad() -> None:
    pred = BOX_A.clone().requires_grad_()
    for fn in (iou_loss, giou_loss):
        value = fn(pred, BOX_B, torch.zeros(1))
        assert value.item() == 0 and value.requires_grad


def test_l1_smooth_l1_and_bce() -> None:
    pred, target = torch.tensor([[0.0, 2.0]]), torch.tensor([[0.5, 0.0]])
    assert l1_loss(pred, target, avg_factor=1.0).item() == pytest.approx(2.5, rel=1e-6)
    smooth = smooth_l1_loss(pred, target, beta=1.0, avg_factor=1.0)
    assert smooth.item() == pytest.approx(0.125 + 1.5, rel=1e-6)
    assert l1_loss(torch.zeros(0, 4), torch.zeros(0, 4)).item() == 0
    x, y = 0.8, 0.3
    expected = -(y * math.log(_sig(x)) + (1 - y) * math.log(1 - _sig(x)))
    value = binary_cross_entropy(torch.tensor([x]), torch.tensor([y]), avg_factor=1.0)
    assert value.item() == pytest.approx(expected, rel=1e-6)
