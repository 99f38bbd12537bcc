"""Max-IoU, ATSS and FCOS target assignment on hand-made boxes."""

from __future__ import annotations

import torch

from kdforge.models.detection.assigners import (
    atss_assign,
    centerness_target,
    fcos_targets,
    max_iou_assign,
)


def _t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def test_max_iou_assigner_thresholds_and_low_quality_match() -> None:
    gt = _t([[0, 0, 10, 10], [30, 30, 34, 34]])
    priors = _t(
        [
            [0, 0, 10, 10],  # IoU 1 with box 0 -> positive
            [0, 0, 10, 20],  # IoU 0.5 -> positive (>= pos_iou_thr)
            [5, 0, 15, 10],  # IoU 1/3 -> negative
            [0, 0, 10, 22],  # IoU 0.4545 in [0.4, 0.5) -> ignored
            [30, 30, 40, 40],  # IoU 0.16 with box 1, its best prior -> low-quality positive
            [100, 100, 110, 110],  # no overlap -> negative
        ]
    )
    gt_inds = max_iou_assign(priors, gt)
    assert gt_inds.tolist() == [1, 1, 0, -1, 2, 0]
    no_low_quality = max_iou_assign(priors, gt, match_low_quality=False)
    assert no_low_quality.tolist() == [1, 1, 0, -1, 0, 0]


def test_max_iou_assigner_empty_and_ignore() -> None:
    priors = _t([[0, 0, 10, 10], [20, 20, 30, 30]])
    assert max_iou_assign(priors, torch.zeros(0, 4)).tolist() == [0, 0]
    gt = _t([[0, 0, 10, 10]])
    crowd = _t([[18, 18, 32, 32]])
    assert max_iou_assign(priors, gt, ignore_boxes=crowd).tolist() == [1, 0]  # off by default
    assert max_iou_assign(priors, gt, ignore_boxes=crowd, ignore_iof_thr=0.5).tolist() == [1, -1]


def test_max_iou_assigner_keeps_mmdet_zero_iou_quirk() -> None:
    # min_pos_iou=0: a box overlapping no prior claims every prior with IoU 0 to it
    priors = _t([[0, 0, 10, 10], [20, 20, 30, 30]])
    assert max_iou_assign(priors, _t([[50, 50, 60, 60]])).tolist() == [1, 1]


def _atss_priors() -> tuple[torch.Tensor, list[int]]:
    level0 = _t([[0, 0, 16, 16], [14, 0, 30, 16], [0, 16, 16, 32], [32, 32, 48, 48]])
    level1 = _t([[0, 0, 32, 32], [32, 0, 64, 32]])
    return torch.cat([level0, level1]), [4, 2]


def test_atss_assigner_by_hand() -> None:
    priors, per_level = _atss_priors()
    # box centre (10, 10): candidates are priors 0, 1 (level 0) and 4, 5 (level 1) with
    # IoUs 0.64, 0.171, 0.391, 0 -> threshold mean + std = 0.300 + 0.277 = 0.578
    gt_inds = atss_assign(priors, per_level, _t([[0, 0, 20, 20]]), topk=2)
    assert gt_inds.tolist() == [1, 0, 0, 0, 0, 0]


def test_atss_assigner_resolves_conflicts_by_iou() -> None:
    priors, per_level = _atss_priors()
    # prior 0 is positive for both boxes; its IoU is 0.64 with box 0 and 0.79 with box 1
    gt = _t([[0, 0, 20, 20], [0, 0, 18, 18]])
    assert atss_assign(priors, per_level, gt, topk=2).tolist() == [2, 0, 0, 0, 0, 0]


def test_atss_assigner_needs_centre_inside_and_handles_no_boxes() -> None:
    priors, per_level = _atss_priors()
    # a thin box whose candidates' centres all lie outside it -> no positives
    assert atss_assign(priors, per_level, _t([[20, 40, 60, 42]]), topk=2).tolist() == [0] * 6
    assert atss_assign(priors, per_level, torch.zeros(0, 4)).tolist() == [0] * 6


RANGES = ((-1, 64), (64, 1e8))


def test_fcos_targets_ranges_and_background() -> None:
    points = _t([[4, 4], [12, 4], [20, 4], [8, 8]])  # 3 points at stride 8, 1 at stride 16
    gt = _t([[0, 0, 16, 16], [0, 0, 100, 100]])
    labels, targets = fcos_targets(points, [3, 1], (8, 16), RANGES, gt, torch.tensor([1, 0]), 5)
    # (4, 4) is in both boxes but box 1's max distance 96 is beyond level 0's range 64
    assert labels.tolist() == [1, 1, 5, 0]
    torch.testing.assert_close(targets[0], _t([4, 4, 12, 12]))
    torch.testing.assert_close(targets[1], _t([12, 4, 4, 12]))
    torch.testing.assert_close(targets[3], _t([8, 8, 92, 92]))


def test_fcos_targets_smallest_area_wins_and_center_sampling() -> None:
    points = _t([[4, 4], [28, 28]])
    gt = _t([[0, 0, 60, 60], [0, 0, 30, 30]])
    labels, _ = fcos_targets(points, [2], (8,), ((-1, 1e8),), gt, torch.tensor([0, 1]), 3)
    assert labels.tolist() == [1, 1]
    # centre regions (radius 1.5 * 8 = 12): box 0 -> [18, 42], box 1 -> [3, 27]
    labels, _ = fcos_targets(
        points, [2], (8,), ((-1, 1e8),), gt, torch.tensor([0, 1]), 3, center_sampling=True
    )
    assert labels.tolist() == [1, 0]


def test_centerness_target() -> None:
    value = centerness_target(_t([[4, 4, 12, 12], [5, 5, 5, 5]]))
    torch.testing.assert_close(value, torch.tensor([1 / 3, 1.0]))
