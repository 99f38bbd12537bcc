"""RepPoints head (Yang et al., 2019, "RepPoints: Point Set Representation for Object
Detection"), as mmdetection 3.x's ``RepPointsHead`` with ``transform_method="moment"``.

mmdetection ``configs/reppoints/reppoints-moment_r50_fpn-gn_head-gn_1x_coco.py``: 3 stacked
3x3 convs with GN(32) per tower; one point per location at ``(x * s, y * s)`` (no half-cell
offset); 9 points per object as ``(y, x)`` offsets in strides, predicted from the centre
(``center_init``), then refined by deformable 3x3 convs that sample the features at those
points (``gradient_mul`` 0.1 lets a tenth of their gradient reach the initial points); a point
set becomes a box by its mean and standard deviation scaled by a learnt ``exp(moment_transfer)``.
Training: the init stage assigns each box to its nearest point on the level of its size
(``PointAssigner``, scale 4, pos_num 1); the refine stage assigns by IoU with the init boxes
(``MaxIoUAssigner`` 0.5/0.4, min_pos 0); focal classification on the refine targets, smooth
L1 (beta 0.11, mmdetection's configs; the head's own default is 1/9) on boxes divided by
``point_base_scale * stride``, weights 0.5 (init) and 1 (refine), each divided by
``sum_i max(#positives_i, 1)`` of its stage; test: score 0.05, 1000 per level, NMS 0.5, 100.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from kdforge.models.detection._dense_head import DenseHead, flatten_levels, image_sizes_of
from kdforge.models.detection.anchors import grid_points, valid_flags
from kdforge.models.detection.assigners import max_iou_assign, point_assign
from kdforge.models.detection.deform_conv import deform_conv2d
from kdforge.models.detection.det_losses import sigmoid_focal_loss, smooth_l1_loss
from kdforge.models.detection.postprocess import PostprocessConfig

__all__ = ["RepPointsHead", "RepPointsTargets", "moment_points_to_box"]


def moment_points_to_box(
    points: Tensor, moment_transfer: Tensor, moment_mul: float = 0.01, y_first: bool = True
) -> Tensor:
    """RepPoints' moment transform: ``(M, 2K)`` point sets -> ``(M, 4)`` ``xyxy`` boxes.

    The box is centred on the points' mean with half-sides ``std * exp(t)`` (unbiased std
    over the ``K`` points; ``t = moment_transfer``, width then height); ``t`` receives only
    ``moment_mul`` of its gradient.

    Args:
        points: rows ``(y1, x1, y2, x2, ...)`` with ``y_first``, else ``(x1, y1, ...)``.
        moment_transfer: the learnt ``(2,)`` log-scales.
    """
    pts = points.unflatten(-1, (-1, 2))  # (M, K, 2)
    ys, xs = (pts[..., 0], pts[..., 1]) if y_first else (pts[..., 1], pts[..., 0])
    transfer = moment_transfer * moment_mul + moment_transfer.detach() * (1 - moment_mul)
    cx, cy = xs.mean(dim=1), ys.mean(dim=1)
    # unbiased std written out: torch.std warns on zero rows (no positives)
    dof = xs.shape[1] - 1
    half_w = ((xs - cx[:, None]).square().sum(1) / dof).sqrt() * transfer[0].exp()
    half_h = ((ys - cy[:, None]).square().sum(1) / dof).sqrt() * transfer[1].exp()
    return torch.stack((cx - half_w, cy - half_h, cx + half_w, cy + half_h), dim=1)


def _yx_to_xy(points: Tensor) -> Tensor:
    """``(..., 2K)`` rows ``(y1, x1, ...)`` -> ``(x1, y1, ...)``."""
    return points.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)


@dataclass
class RepPointsTargets:
    """Training targets of a batch, points of all levels concatenated (``P`` of them).

    Attributes:
        labels: ``(N, P)`` refine-stage classes, ``num_classes`` for background and ignored.
        label_weights: ``(N, P)`` 1 for refine positives and negatives, else 0.
        gt_init, gt_refine: ``(N, P, 4)`` the box assigned to each positive of the stage.
        pos_init, pos_refine: ``(N, P)`` positive masks.
        avg_init, avg_refine: ``sum_i max(#positives_i, 1)`` of each stage.
    """

    labels: Tensor
    label_weights: Tensor
    gt_init: Tensor
    pos_init: Tensor
    gt_refine: Tensor
    pos_refine: Tensor
    avg_init: int
    avg_refine: int


class _DeformConv(nn.Module):
    """mmcv's ``DeformConv2d`` (stride 1, no bias, offsets given by the caller): ``weight``,
    Kaiming-uniform as mmcv initialises it (mmdetection's Normal init skips it)."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, padding: int) -> None:
        super().__init__()
        self.padding = padding
        self.weight = nn.Parameter(torch.empty(out_chs, in_chs, kernel_size, kernel_size))
        nn.init.kaiming_uniform_(self.weight, nonlinearity="relu")

    def forward(self, x: Tensor, offset: Tensor) -> Tensor:
        return deform_conv2d(x, offset.to(x.dtype), self.weight, padding=self.padding)


class RepPointsHead(DenseHead):
    """RepPoints head with mmdetection's parameter names (``reppoints_cls_conv``,
    ``reppoints_cls_out``, ``reppoints_pts_init_conv``/``_out``,
    ``reppoints_pts_refine_conv``/``_out``, ``moment_transfer``).

    Outputs per level: ``"cls"`` ``(N, K, H, W)`` logits, ``"pts_init"`` and ``"reg"``
    ``(N, 2 * num_points, H, W)``: mmdetection's ``pts_out_init`` and ``pts_out_refine``,
    ``(y, x)`` offsets from the location in strides (``reg`` = refined points, the ones
    ``predict`` turns into boxes).

    Args:
        num_classes, in_channels, feat_channels, stacked_convs, norm_groups: as the other
            heads (3 convs with GN 32).
        point_feat_channels: channels of the point convs.
        num_points: points per object (an odd square: the deformable kernel).
        gradient_mul: share of the refine/classification gradient reaching the init points.
        point_strides: FPN strides.
        point_base_scale: box scale of the point assigner and loss normaliser.
        moment_mul: share of the gradient reaching ``moment_transfer``.
        point_pos_num: positives per box of the init stage (``PointAssigner.pos_num``).
        pos_iou_thr, neg_iou_thr, min_pos_iou: refine-stage ``MaxIoUAssigner``.
        focal_gamma, focal_alpha, loss_cls_weight: focal classification.
        loss_bbox_beta: smooth-L1 beta of both stages.
        loss_bbox_init_weight, loss_bbox_refine_weight: stage loss multipliers.
        score_thr, nms_pre, nms_iou, max_per_img: test settings.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 256,
        feat_channels: int = 256,
        point_feat_channels: int = 256,
        stacked_convs: int = 3,
        norm_groups: int | None = 32,
        num_points: int = 9,
        gradient_mul: float = 0.1,
        point_strides: Sequence[int] = (8, 16, 32, 64, 128),
        point_base_scale: float = 4,
        moment_mul: float = 0.01,
        point_pos_num: int = 1,
        pos_iou_thr: float = 0.5,
        neg_iou_thr: float = 0.4,
        min_pos_iou: float = 0.0,
        focal_gamma: float = 2.0,
        focal_alpha: float = 0.25,
        loss_cls_weight: float = 1.0,
        loss_bbox_beta: float = 0.11,
        loss_bbox_init_weight: float = 0.5,
        loss_bbox_refine_weight: float = 1.0,
        score_thr: float = 0.05,
        nms_pre: int = 1000,
        nms_iou: float = 0.5,
        max_per_img: int = 100,
    ) -> None:
        super().__init__(num_classes, in_channels, feat_channels, stacked_convs, norm_groups)
        kernel = math.isqrt(num_points)
        if kernel * kernel != num_points or kernel % 2 == 0:
            raise ValueError(f"num_points must be an odd square (9, 25...), got {num_points}")
        self.num_points, self.strides = num_points, tuple(point_strides)
        self.gradient_mul, self.point_base_scale = gradient_mul, point_base_scale
        self.moment_mul, self.point_pos_num = moment_mul, point_pos_num
        self.iou_cfg = {"pos_iou_thr": pos_iou_thr, "neg_iou_thr": neg_iou_thr}
        self.iou_cfg["min_pos_iou"] = min_pos_iou
        self.focal_gamma, self.focal_alpha = focal_gamma, focal_alpha
        self.loss_cls_weight, self.loss_bbox_beta = loss_cls_weight, loss_bbox_beta
        self.loss_bbox_init_weight = loss_bbox_init_weight
        self.loss_bbox_refine_weight = loss_bbox_refine_weight
        self.test_cfg = PostprocessConfig(score_thr, nms_pre, nms_iou, max_per_img)
        pad, pts_dim = kernel // 2, 2 * num_points
        self.reppoints_cls_conv = _DeformConv(feat_channels, point_feat_channels, kernel, pad)
        self.reppoints_cls_out = nn.Conv2d(point_feat_channels, num_classes, 1)
        self.reppoints_pts_init_conv = nn.Conv2d(feat_channels, point_feat_channels, 3, padding=1)
        self.reppoints_pts_init_out = nn.Conv2d(point_feat_channels, pts_dim, 1)
        self.reppoints_pts_refine_conv = _DeformConv(
            feat_channels, point_feat_channels, kernel, pad
        )
        self.reppoints_pts_refine_out = nn.Conv2d(point_feat_channels, pts_dim, 1)
        self.moment_transfer = nn.Parameter(torch.zeros(2))
        self.relu = nn.ReLU(inplace=True)
        # (1, 2K, 1, 1) (y, x) of the regular 3x3 grid, row by row: the deformable conv's own
        # sampling positions, subtracted so that it samples at the predicted points
        grid = torch.arange(-pad, pad + 1, dtype=torch.float32)
        base = torch.stack((grid.repeat_interleave(kernel), grid.repeat(kernel)), dim=1)
        self.register_buffer("dcn_base_offset", base.reshape(1, -1, 1, 1), persistent=False)
        self._init_weights(self.reppoints_cls_out)

    def predict_level(self, level: int, cls_feat: Tensor, reg_feat: Tensor) -> dict[str, Tensor]:
        pts_init = self.reppoints_pts_init_out(self.relu(self.reppoints_pts_init_conv(reg_feat)))
        pts_grad_mul = (1 - self.gradient_mul) * pts_init.detach() + self.gradient_mul * pts_init
        offset = pts_grad_mul - self.dcn_base_offset.to(pts_init.dtype)
        cls = self.reppoints_cls_out(self.relu(self.reppoints_cls_conv(cls_feat, offset)))
        refine = self.reppoints_pts_refine_out(
            self.relu(self.reppoints_pts_refine_conv(reg_feat, offset))
        )
        return {"cls": cls, "pts_init": pts_init, "reg": refine + pts_init.detach()}

    def _priors(self, featmap_sizes: list[tuple[int, int]], device, dtype) -> list[Tensor]:
        return grid_points(featmap_sizes, self.strides, device, dtype, offset=0.0)

    def points_to_box(self, points: Tensor, y_first: bool = True) -> Tensor:
        """:func:`moment_points_to_box` with this head's ``moment_transfer``."""
        return moment_points_to_box(points, self.moment_transfer, self.moment_mul, y_first)

    def _decode(
        self, level: int, priors: Tensor, reg: Tensor, max_shape: tuple[int, int]
    ) -> Tensor:
        boxes = self.points_to_box(reg.float()) * self.strides[level] + priors.repeat(1, 2)
        return torch.stack(
            (
                boxes[:, 0].clamp(0, max_shape[1]),
                boxes[:, 1].clamp(0, max_shape[0]),
                boxes[:, 2].clamp(0, max_shape[1]),
                boxes[:, 3].clamp(0, max_shape[0]),
            ),
            dim=1,
        )

    def assign(
        self,
        points: Tensor,
        stride: Tensor,
        proposals: Tensor,
        featmap_sizes: list[tuple[int, int]],
        targets: Sequence[dict[str, Tensor]],
        image_size: tuple[int, int] | Sequence[tuple[int, int]],
    ) -> RepPointsTargets:
        """Both stages' targets of a batch (mmdetection ``get_targets``, PseudoSampler).

        Only points on each image's own padded area take part. Init stage: ``point_assign``
        on the locations; refine stage: ``max_iou_assign`` on ``proposals``, the init boxes.

        Args:
            points: ``(P, 2)`` locations; ``stride``: ``(P,)`` their strides.
            proposals: ``(N, P, 4)`` init boxes (detached) of each image.
            featmap_sizes, targets, image_size: as :meth:`loss`.
        """
        n, num_points, device = proposals.shape[0], points.shape[0], points.device
        t = RepPointsTargets(
            labels=torch.full((n, num_points), self.num_classes, device=device),
            label_weights=points.new_zeros(n, num_points),
            gt_init=points.new_zeros(n, num_points, 4),
            pos_init=torch.zeros(n, num_points, dtype=torch.bool, device=device),
            gt_refine=points.new_zeros(n, num_points, 4),
            pos_refine=torch.zeros(n, num_points, dtype=torch.bool, device=device),
            avg_init=0,
            avg_refine=0,
        )
        sizes = image_sizes_of(image_size, n)
        for i, (target, size) in enumerate(zip(targets, sizes, strict=True)):
            valid = valid_flags(featmap_sizes, self.strides, size, 1, device).nonzero().squeeze(1)
            boxes = target["boxes"].to(device, torch.float32).reshape(-1, 4)
            classes = target["labels"].to(device, torch.long).reshape(-1)
            inds = point_assign(
                points[valid], stride[valid], boxes, self.point_base_scale, self.point_pos_num
            )
            pos = valid[inds > 0]
            t.pos_init[i, pos], t.gt_init[i, pos] = True, boxes[inds[inds > 0] - 1]
            t.avg_init += max(pos.numel(), 1)
            inds = max_iou_assign(proposals[i, valid], boxes, **self.iou_cfg)
            pos = valid[inds > 0]
            t.pos_refine[i, pos], t.gt_refine[i, pos] = True, boxes[inds[inds > 0] - 1]
            t.labels[i, pos] = classes[inds[inds > 0] - 1]
            t.label_weights[i, valid[inds >= 0]] = 1.0  # positives and negatives
            t.avg_refine += max(pos.numel(), 1)
        return t

    def loss(
        self,
        outputs: dict[str, list[Tensor]],
        targets: Sequence[dict[str, Tensor]],
        image_size: tuple[int, int] | Sequence[tuple[int, int]],
    ) -> dict[str, Tensor]:
        """``{"loss_cls", "loss_pts_init", "loss_pts_refine"}`` as mmdetection's
        ``RepPointsHead.loss_by_feat`` (no averaging over processes)."""
        cls_outs = outputs["cls"]
        n, k2 = len(targets), 2 * self.num_points
        featmap_sizes = [tuple(o.shape[-2:]) for o in cls_outs]
        points_per_level = self._priors(featmap_sizes, cls_outs[0].device, torch.float32)
        counts = torch.tensor([p.shape[0] for p in points_per_level], device=cls_outs[0].device)
        points = torch.cat(points_per_level)  # (P, 2)
        stride = torch.repeat_interleave(points.new_tensor(self.strides), counts)  # (P,)
        pts_init = flatten_levels(outputs["pts_init"], k2).float()  # (N, P, 2K) (y, x)
        proposals = self.points_to_box(pts_init.detach().flatten(0, 1)).unflatten(0, (n, -1))
        t = self.assign(
            points,
            stride,
            proposals * stride[:, None] + points.repeat(1, 2),
            featmap_sizes,
            targets,
            image_size,
        )
        loss_cls = sigmoid_focal_loss(
            flatten_levels(cls_outs, self.num_classes).reshape(-1, self.num_classes),
            t.labels.reshape(-1),
            t.label_weights.reshape(-1),
            self.focal_gamma,
            self.focal_alpha,
            avg_factor=t.avg_refine,
        )
        norm = (self.point_base_scale * stride)[:, None]  # (P, 1)

        def box_loss(pts: Tensor, gt: Tensor, pos: Tensor, avg: int) -> Tensor:
            # (N, P, 2K) (y, x) offsets in strides -> absolute (x, y) points -> boxes
            xy = _yx_to_xy(pts) * stride[:, None] + points.repeat(1, self.num_points)
            boxes = self.points_to_box(xy[pos], y_first=False)
            scale = norm.expand(n, -1, -1)[pos]
            return smooth_l1_loss(
                boxes / scale, gt[pos] / scale, self.loss_bbox_beta, avg_factor=avg
            )

        pts_refine = flatten_levels(outputs["reg"], k2).float()
        return {
            "loss_cls": self.loss_cls_weight * loss_cls,
            "loss_pts_init": self.loss_bbox_init_weight
            * box_loss(pts_init, t.gt_init, t.pos_init, t.avg_init),
            "loss_pts_refine": self.loss_bbox_refine_weight
            * box_loss(pts_refine, t.gt_refine, t.pos_refine, t.avg_refine),
        }
