"""Anchors, points and valid flags against hand-computed values; box coder round trips."""

from __future__ import annotations

import math

import pytest
import torch

from kdforge.models.detection.anchors import AnchorGenerator, grid_points, valid_flags
from kdforge.models.detection.boxes import bbox_overlaps
from kdforge.models.detection.coders import DeltaXYWHCoder, bbox2distance, distance2bbox


def test_retinanet_base_anchors_by_hand() -> None:
    gen = AnchorGenerator((8, 16), (0.5, 1.0, 2.0), octave_base_scale=4, scales_per_octave=3)
    base = gen.base_anchors[0]
    assert gen.num_base_anchors == 9 and base.shape == (9, 4)
    # ratio-major: index = ratio_index * 3 + scale_index; ratio 0.5 = h/w
    w, h = 8 * 4 * math.sqrt(2), 8 * 4 / math.sqrt(2)
    torch.testing.assert_close(base[0], torch.tensor([-w / 2, -h / 2, w / 2, h / 2]))
    torch.testing.assert_close(
        base[3], torch.tensor([-16.0, -16.0, 16.0, 16.0])
    )  # ratio 1, scale 4
    s = 8 * 4 * 2 ** (2 / 3)  # ratio 1, third octave scale
    torch.testing.assert_close(base[5], torch.tensor([-s / 2, -s / 2, s / 2, s / 2]))
    torch.testing.assert_close(gen.base_anchors[1][3], torch.tensor([-32.0, -32.0, 32.0, 32.0]))


def test_grid_anchors_order_and_shifts() -> None:
    gen = AnchorGenerator((8, 16), (0.5, 1.0, 2.0), 4, 3)
    level0, level1 = gen.grid_anchors([(2, 3), (1, 2)])
    assert level0.shape == (2 * 3 * 9, 4) and level1.shape == (2 * 9, 4)
    # location (row 1, col 2) is the 6th location; its anchors are contiguous
    cell = level0[(1 * 3 + 2) * 9 : (1 * 3 + 3) * 9]
    torch.testing.assert_close(cell, gen.base_anchors[0] + torch.tensor([16.0, 8.0, 16.0, 8.0]))
    torch.testing.assert_close(level1[9 + 3], torch.tensor([-16.0, -32.0, 48.0, 32.0]))


def test_atss_gfl_anchor_is_one_square_of_eight_strides() -> None:
    gen = AnchorGenerator((8, 16, 32, 64, 128), (1.0,), 8, 1)
    assert gen.num_base_anchors == 1
    for stride, base in zip(gen.strides, gen.base_anchors, strict=True):
        torch.testing.assert_close(base[0], torch.tensor([-4.0, -4.0, 4.0, 4.0]) * stride)


def test_fcos_points_are_cell_centres() -> None:
    (p8,) = grid_points([(2, 3)], (8,))
    expected = [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12]]
    torch.testing.assert_close(p8, torch.tensor(expected, dtype=torch.float32))


def test_valid_flags_follow_each_image_pad_shape() -> None:
    # stride 8 on a 4x4 map, image padded to 20x30 -> ceil(20/8)=3 rows, ceil(30/8)=4 cols
    flags = valid_flags([(4, 4), (2, 2)], (8, 16), (20, 30), num_base_anchors=2)
    level0 = flags[:32].reshape(4, 4, 2)
    assert level0[:3].all() and not level0[3].any()
    assert flags[32:].all()  # ceil(20/16)=2, ceil(30/16)=2


def test_delta_coder_round_trip_and_formula() -> None:
    coder = DeltaXYWHCoder(stds=(0.1, 0.1, 0.2, 0.2))
    priors = torch.tensor([[0.0, 0.0, 10.0, 20.0], [5.0, 5.0, 15.0, 9.0]])
    boxes = torch.tensor([[2.0, 4.0, 14.0, 18.0], [0.0, 3.0, 30.0, 12.0]])
    deltas = coder.encode(priors, boxes)
    # prior 0: centre (5, 10), size (10, 20); box 0: centre (8, 11), size (12, 14)
    expected = torch.tensor([0.3 / 0.1, 0.05 / 0.1, math.log(1.2) / 0.2, math.log(0.7) / 0.2])
    torch.testing.assert_close(deltas[0], expected)
    torch.testing.assert_close(coder.decode(priors, deltas), boxes)


def test_delta_coder_clamps_ratio_and_clips_to_image() -> None:
    coder = DeltaXYWHCoder()
    prior = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    big = coder.decode(prior, torch.tensor([[0.0, 0.0, 100.0, 0.0]]))
    torch.testing.assert_close(big[0, 2] - big[0, 0], torch.tensor(10 * 1000 / 16))
    clipped = coder.decode(prior, torch.tensor([[0.0, 0.0, 1.0, 1.0]]), max_shape=(12, 8))
    torch.testing.assert_close(clipped, torch.tensor([[0.0, 0.0, 8.0, 12.0]]))


def test_distance_coder_round_trip_and_clamp() -> None:
    points = torch.tensor([[10.0, 10.0], [3.0, 4.0]])
    boxes = torch.tensor([[4.0, 2.0, 30.0, 12.0], [0.0, 0.0, 5.0, 40.0]])
    dist = bbox2distance(points, boxes)
    torch.testing.assert_close(dist[0], torch.tensor([6.0, 8.0, 20.0, 2.0]))
    torch.testing.assert_close(distance2bbox(points, dist), boxes)
    clamped = bbox2distance(points, boxes, max_dis=16)
    assert clamped.max() == pytest.approx(15.9) and clamped.min() >= 0


def test_bbox_overlaps_modes() -> None:
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [4.0, 4.0, 5.0, 5.0]])
    torch.testing.assert_close(bbox_overlaps(a, b), torch.tensor([[1 / 7, 0.0]]))
    torch.testing.assert_close(bbox_overlaps(a, b, mode="iof"), torch.tensor([[0.25, 0.0]]))
    giou = bbox_overlaps(a, b[:1], mode="giou", is_aligned=True)
    torch.testing.assert_close(giou, torch.tensor([1 / 7 - 2 / 9]))
    assert bbox_overlaps(a, b[:0]).shape == (1, 0)
