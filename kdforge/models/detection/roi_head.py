"""The R-CNN stage of Faster R-CNN, as mmdetection 3.x's ``StandardRoIHead`` with a
``SingleRoIExtractor`` and a ``Shared2FCBBoxHead`` (``faster-rcnn_r50_fpn.py``).

Training: proposals of each image are assigned with ``max_iou_assign`` (pos 0.5, neg 0.5,
min_pos 0.5, no low-quality matches), the ground truths are added as proposals and 512
RoIs are sampled, at most a quarter positive. The box head is trained with softmax cross
entropy over ``K + 1`` classes (background last) and L1 on the class-specific deltas of
the positives (``DeltaXYWHCoder`` stds 0.1/0.1/0.2/0.2), both summed over the batch and
divided by the number of sampled RoIs. Test: softmax scores, class-specific boxes clipped
to the image, score ``> 0.05``, class-aware NMS at 0.5, 100 per image.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdforge.models.detection.assigners import max_iou_assign
from kdforge.models.detection.coders import DeltaXYWHCoder
from kdforge.models.detection.det_losses import l1_loss, weight_reduce
from kdforge.models.detection.postprocess import PostprocessConfig, select_detections
from kdforge.models.detection.roi_align import roi_align
from kdforge.models.detection.samplers import random_sample

__all__ = ["Shared2FCBBoxHead", "SingleRoIExtractor", "StandardRoIHead", "rois_of"]


class SingleRoIExtractor(nn.Module):
    """RoIAlign of each RoI on one pyramid level chosen by its size (Lin et al., 2017, FPN).

    A RoI of scale ``s = sqrt(w * h)`` goes to level ``floor(log2(s / finest_scale + 1e-6))``
    clamped to ``[0, L - 1]`` (with ``finest_scale=56``: ``s < 112`` on ``P2``, ``< 224``
    on ``P3``, ``< 448`` on ``P4``, larger on ``P5``). RoIAlign (aligned, adaptive sampling)
    runs in float32 whatever the autocast dtype, so that pixel coordinates stay exact.

    Args:
        output_size: bins per side (7).
        featmap_strides: strides of the levels it pools from (``P2..P5``).
        sampling_ratio: samples per bin side, 0 for adaptive.
        finest_scale: the scale mapped to the first level's upper bound.
    """

    def __init__(
        self,
        output_size: int = 7,
        featmap_strides: Sequence[int] = (4, 8, 16, 32),
        sampling_ratio: int = 0,
        finest_scale: float = 56,
    ) -> None:
        super().__init__()
        self.output_size, self.sampling_ratio = output_size, sampling_ratio
        self.featmap_strides = tuple(featmap_strides)
        self.finest_scale = finest_scale

    def map_roi_levels(self, rois: Tensor) -> Tensor:
        """``(K, 5)`` RoIs -> ``(K,)`` int64 level index."""
        scale = torch.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2]))
        levels = torch.floor(torch.log2(scale / self.finest_scale + 1e-6))
        return levels.clamp(min=0, max=len(self.featmap_strides) - 1).long()

    def forward(self, feats: Sequence[Tensor], rois: Tensor) -> Tensor:
        """``(K, 5)`` RoIs ``(batch index, x1, y1, x2, y2)`` -> ``(K, C, S, S)`` float32."""
        feats = feats[: len(self.featmap_strides)]
        size = self.output_size
        out = feats[0].new_zeros(rois.shape[0], feats[0].shape[1], size, size, dtype=torch.float)
        levels = self.map_roi_levels(rois)
        for level, (feat, stride) in enumerate(zip(feats, self.featmap_strides, strict=True)):
            idx = (levels == level).nonzero().squeeze(1)
            if idx.numel() > 0:
                out[idx] = roi_align(
                    feat.float(), rois[idx].float(), size, 1 / stride, self.sampling_ratio, True
                )
        return out


class Shared2FCBBoxHead(nn.Module):
    """Two shared fully connected layers with ReLU, then ``fc_cls`` and ``fc_reg``.

    Init as mmdetection: ``shared_fcs`` Xavier-uniform, ``fc_cls`` N(0, 0.01), ``fc_reg``
    N(0, 0.001), biases 0.

    Args:
        num_classes: object classes ``K`` (``fc_cls`` has ``K + 1`` outputs, background last).
        in_channels, roi_feat_size: pooled RoI features ``(C, S, S)``.
        fc_out_channels: width of the shared layers (1024).
        reg_class_agnostic: one box per RoI (``fc_reg`` has 4 outputs, Cascade R-CNN)
            instead of one per class.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 256,
        roi_feat_size: int = 7,
        fc_out_channels: int = 1024,
        reg_class_agnostic: bool = False,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.shared_fcs = nn.ModuleList(
            (
                nn.Linear(in_channels * roi_feat_size**2, fc_out_channels),
                nn.Linear(fc_out_channels, fc_out_channels),
            )
        )
        self.fc_cls = nn.Linear(fc_out_channels, num_classes + 1)
        self.fc_reg = nn.Linear(fc_out_channels, 4 if reg_class_agnostic else num_classes * 4)
        for fc in self.shared_fcs:
            nn.init.xavier_uniform_(fc.weight)
        nn.init.normal_(self.fc_cls.weight, std=0.01)
        nn.init.normal_(self.fc_reg.weight, std=0.001)
        for fc in (*self.shared_fcs, self.fc_cls, self.fc_reg):
            nn.init.zeros_(fc.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(K, C, S, S)`` -> ``(K, K_cls + 1)`` logits and ``(K, 4 K_cls)`` (or ``(K, 4)``)
        deltas."""
        x = x.flatten(1)
        for fc in self.shared_fcs:
            x = F.relu(fc(x))
        return self.fc_cls(x), self.fc_reg(x)


def rois_of(boxes: Sequence[Tensor]) -> Tensor:
    """Per-image ``(n_i, 4)`` boxes -> ``(sum n_i, 5)`` RoIs with the image index first."""
    return torch.cat([torch.cat((b.new_full((len(b), 1), i), b), 1) for i, b in enumerate(boxes)])


class StandardRoIHead(nn.Module):
    """RoI feature extraction and the box head (``roi_head.bbox_head.*`` parameters).

    Args:
        num_classes: object classes.
        in_channels: FPN channels.
        fc_out_channels: width of the box head's shared layers.
        featmap_strides, roi_size, finest_scale: :class:`SingleRoIExtractor` settings.
        target_stds: delta normalisation.
        pos_iou_thr, neg_iou_thr, min_pos_iou: ``max_iou_assign`` settings.
        num_samples, pos_fraction: ``random_sample`` settings (ground truths added).
        score_thr, nms_iou, max_per_img: test settings.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 256,
        fc_out_channels: int = 1024,
        featmap_strides: Sequence[int] = (4, 8, 16, 32),
        roi_size: int = 7,
        finest_scale: float = 56,
        target_stds: Sequence[float] = (0.1, 0.1, 0.2, 0.2),
        pos_iou_thr: float = 0.5,
        neg_iou_thr: float = 0.5,
        min_pos_iou: float = 0.5,
        num_samples: int = 512,
        pos_fraction: float = 0.25,
        score_thr: float = 0.05,
        nms_iou: float = 0.5,
        max_per_img: int = 100,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.bbox_roi_extractor = SingleRoIExtractor(
            roi_size, featmap_strides, finest_scale=finest_scale
        )
        self.bbox_head = Shared2FCBBoxHead(num_classes, in_channels, roi_size, fc_out_channels)
        self.coder = DeltaXYWHCoder(stds=target_stds)
        self.assign = partial(
            max_iou_assign,
            pos_iou_thr=pos_iou_thr,
            neg_iou_thr=neg_iou_thr,
            min_pos_iou=min_pos_iou,
            match_low_quality=False,
        )
        self.num_samples, self.pos_fraction = num_samples, pos_fraction
        # multiclass_nms has no size filter: min_bbox_size < 0
        self.test_cfg = PostprocessConfig(score_thr, 0, nms_iou, max_per_img, min_bbox_size=-1)

    def forward(self, feats: Sequence[Tensor], rois: Tensor) -> tuple[Tensor, Tensor]:
        """``(K, 5)`` RoIs -> class logits ``(K, K_cls + 1)`` and deltas ``(K, 4 K_cls)``."""
        return self.bbox_head(self.bbox_roi_extractor(feats, rois))

    def loss(
        self,
        feats: Sequence[Tensor],
        proposals: Sequence[Tensor],
        targets: Sequence[dict[str, Tensor]],
    ) -> dict[str, Tensor]:
        """``{"loss_cls", "loss_bbox"}`` of RoIs sampled from each image's ``(n, 4)``
        proposals (which must carry no gradient) and its ``targets`` boxes and labels."""
        sampled, labels, target_deltas, positives = [], [], [], []
        for props, target in zip(proposals, targets, strict=True):
            gt_boxes = target["boxes"].to(props.device, torch.float32).reshape(-1, 4)
            gt_labels = target["labels"].to(props.device, torch.long).reshape(-1)
            gt_inds = self.assign(props, gt_boxes)
            s = random_sample(props, gt_inds, gt_boxes, self.num_samples, self.pos_fraction, True)
            num_pos, num_neg = s.pos_inds.numel(), s.neg_inds.numel()
            sampled.append(s.sampled_priors)
            label = gt_labels.new_full((num_pos + num_neg,), self.num_classes)
            label[:num_pos] = gt_labels[s.pos_gt_inds]
            labels.append(label)
            target_deltas.append(self.coder.encode(s.priors[s.pos_inds], gt_boxes[s.pos_gt_inds]))
            positives.append(torch.arange(num_pos + num_neg, device=props.device) < num_pos)
        cls_score, bbox_pred = self(feats, rois_of(sampled))
        cls_score, bbox_pred = cls_score.float(), bbox_pred.float()  # losses in float32
        labels, pos = torch.cat(labels), torch.cat(positives)
        num_rois = labels.numel()
        loss_cls = weight_reduce(
            F.cross_entropy(cls_score, labels, reduction="none"), avg_factor=max(num_rois, 1)
        )
        pos_pred = bbox_pred.view(num_rois, self.num_classes, 4)[pos, labels[pos]]
        loss_bbox = l1_loss(pos_pred, torch.cat(target_deltas), avg_factor=num_rois)
        return {"loss_cls": loss_cls, "loss_bbox": loss_bbox}

    @torch.no_grad()
    def predict(
        self,
        feats: Sequence[Tensor],
        proposals: Sequence[Tensor],
        image_sizes: Sequence[tuple[int, int]],
    ) -> list[dict[str, Tensor]]:
        """Per image ``{"boxes": (n, 4), "scores": (n,), "labels": (n,) int64}`` from its
        ``(m, 4)`` proposals, boxes clipped to the image's ``(H, W)`` before padding."""
        cls_score, bbox_pred = self(feats, rois_of(proposals))
        scores = F.softmax(cls_score.float(), dim=-1).split([len(p) for p in proposals])
        deltas = bbox_pred.float().split([len(p) for p in proposals])
        results, k = [], self.num_classes
        for props, prob, delta, size in zip(proposals, scores, deltas, image_sizes, strict=True):
            boxes = self.coder.decode(
                props.repeat_interleave(k, dim=0), delta.reshape(-1, 4), tuple(size)
            ).view(-1, k, 4)
            prob = prob[:, :k]  # drop the background column
            roi_idx, labels = (prob > self.test_cfg.score_thr).nonzero().unbind(1)
            results.append(
                select_detections(
                    boxes[roi_idx, labels], prob[roi_idx, labels], labels, self.test_cfg
                )
            )
        return results
