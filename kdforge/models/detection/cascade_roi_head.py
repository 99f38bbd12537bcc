"""The R-CNN stages of Cascade (Mask) R-CNN (Cai and Vasconcelos, 2018), as mmdetection
3.x's ``CascadeRoIHead`` in ``cascade-mask-rcnn_r50_fpn.py``.

Three stages, each a :class:`Shared2FCBBoxHead` with class-agnostic regression (4 deltas
per RoI) and its own ``DeltaXYWHCoder`` stds (0.1/0.1/0.2/0.2, 0.05/0.05/0.1/0.1,
0.033/0.033/0.067/0.067). Training: stage ``t`` assigns its proposals with
``max_iou_assign`` at IoU 0.5/0.6/0.7 (pos = neg = min_pos, no low-quality matches), adds
the ground truths and samples 512 RoIs (a quarter positive at most), and is trained with
softmax cross entropy and Smooth L1 (beta 1) on the positives' deltas, both divided by the
number of sampled RoIs and weighted 1/0.5/0.25; its sampled RoIs, regressed by its own
deltas and clipped to the image, less the ground truths added as positives, are the next
stage's proposals (mmdetection's ``refine_bboxes``). With ``with_mask``, every stage also
has an :class:`FCNMaskHead` trained on its positives (14x14 RoIAlign, 28x28 targets, BCE).
Test: each stage regresses the previous stage's boxes; the three stages' class logits are
averaged, then softmax; the last stage's boxes, score ``> 0.05``, class-aware NMS at 0.5,
100 per image; the masks of the detections are the three mask heads' mean sigmoid,
pasted into the image and thresholded at 0.5.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdforge.errors import DataError
from kdforge.models.detection.assigners import max_iou_assign
from kdforge.models.detection.coders import DeltaXYWHCoder
from kdforge.models.detection.det_losses import smooth_l1_loss, weight_reduce
from kdforge.models.detection.mask_head import FCNMaskHead, mask_loss, mask_targets, paste_masks
from kdforge.models.detection.postprocess import PostprocessConfig, select_detections
from kdforge.models.detection.roi_head import Shared2FCBBoxHead, SingleRoIExtractor, rois_of
from kdforge.models.detection.samplers import SamplingResult, random_sample

__all__ = ["STAGE_IOUS", "STAGE_STDS", "CascadeRoIHead"]

STAGE_IOUS = (0.5, 0.6, 0.7)
STAGE_STDS = ((0.1, 0.1, 0.2, 0.2), (0.05, 0.05, 0.1, 0.1), (0.033, 0.033, 0.067, 0.067))


class CascadeRoIHead(nn.Module):
    """Cascade box stages and optional mask heads (``roi_head.bbox_head.{0,1,2}.*`` and
    ``roi_head.mask_head.{0,1,2}.*`` parameters, as mmdetection's checkpoints).

    Args:
        num_classes: object classes.
        in_channels: FPN channels.
        fc_out_channels: width of each box head's shared layers.
        featmap_strides, finest_scale: RoI level mapping (:class:`SingleRoIExtractor`).
        stage_ious: positive (= negative = min positive) IoU of each stage's assigner.
        stage_stds: delta normalisation of each stage.
        stage_loss_weights: weight of each stage's losses.
        num_samples, pos_fraction: ``random_sample`` settings (ground truths added).
        score_thr, nms_iou, max_per_img: test settings.
        with_mask: add the mask heads (Cascade Mask R-CNN); box only otherwise.
        mask_channels: width of the mask heads' convs (256).
        mask_size: side of the mask targets and predictions (twice the 14x14 RoIAlign).
        mask_thr_binary: test threshold of the pasted mask probabilities.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 256,
        fc_out_channels: int = 1024,
        featmap_strides: Sequence[int] = (4, 8, 16, 32),
        finest_scale: float = 56,
        stage_ious: Sequence[float] = STAGE_IOUS,
        stage_stds: Sequence[Sequence[float]] = STAGE_STDS,
        stage_loss_weights: Sequence[float] = (1.0, 0.5, 0.25),
        num_samples: int = 512,
        pos_fraction: float = 0.25,
        score_thr: float = 0.05,
        nms_iou: float = 0.5,
        max_per_img: int = 100,
        with_mask: bool = True,
        mask_channels: int = 256,
        mask_size: int = 28,
        mask_thr_binary: float = 0.5,
    ) -> None:
        super().__init__()
        if not len(stage_ious) == len(stage_stds) == len(stage_loss_weights) > 0:
            raise ValueError(
                "stage_ious, stage_stds and stage_loss_weights need one entry per stage, got "
                f"{len(stage_ious)}, {len(stage_stds)} and {len(stage_loss_weights)}"
            )
        self.num_classes, self.num_stages = num_classes, len(stage_ious)
        self.stage_ious, self.stage_loss_weights = tuple(stage_ious), tuple(stage_loss_weights)
        self.coders = [DeltaXYWHCoder(stds=stds) for stds in stage_stds]
        self.num_samples, self.pos_fraction = num_samples, pos_fraction
        self.bbox_roi_extractor = SingleRoIExtractor(7, featmap_strides, finest_scale=finest_scale)
        self.bbox_head = nn.ModuleList(
            Shared2FCBBoxHead(num_classes, in_channels, 7, fc_out_channels, True)
            for _ in range(self.num_stages)
        )
        self.with_mask, self.mask_size, self.mask_thr_binary = with_mask, mask_size, mask_thr_binary
        if with_mask:
            self.mask_roi_extractor = SingleRoIExtractor(
                mask_size // 2, featmap_strides, finest_scale=finest_scale
            )
            self.mask_head = nn.ModuleList(
                FCNMaskHead(num_classes, in_channels, mask_channels) for _ in range(self.num_stages)
            )
        # multiclass_nms has no size filter: min_bbox_size < 0
        self.test_cfg = PostprocessConfig(score_thr, 0, nms_iou, max_per_img, min_bbox_size=-1)

    def forward(self, feats: Sequence[Tensor], rois: Tensor, stage: int) -> tuple[Tensor, Tensor]:
        """``(K, 5)`` RoIs -> stage ``stage``'s logits ``(K, K_cls + 1)`` and deltas ``(K, 4)``."""
        return self.bbox_head[stage](self.bbox_roi_extractor(feats, rois))

    def refine(
        self, stage: int, rois: Tensor, deltas: Tensor, image_sizes: Sequence[tuple[int, int]]
    ) -> Tensor:
        """``(K, 5)`` RoIs moved by stage ``stage``'s ``(K, 4)`` deltas, each clipped to its
        image's ``(H, W)`` (mmdetection's ``regress_by_class``, class agnostic)."""
        boxes = rois[:, 1:].clone()
        for i, size in enumerate(image_sizes):
            idx = rois[:, 0] == i
            boxes[idx] = self.coders[stage].decode(rois[idx, 1:], deltas[idx], tuple(size))
        return torch.cat((rois[:, :1], boxes), 1)

    def loss(
        self,
        feats: Sequence[Tensor],
        proposals: Sequence[Tensor],
        targets: Sequence[dict[str, Tensor]],
    ) -> dict[str, Tensor]:
        """``{"loss_s{t}_cls", "loss_s{t}_bbox"}`` (and ``"loss_s{t}_mask"``) per stage ``t``
        (mmdetection's ``s{t}.loss_cls`` ...), from each image's ``(n, 4)`` proposals
        (without gradient) and its targets: ``boxes``, ``labels``, ``img_shape`` (to clip
        the refined boxes) and, with masks, ``masks`` ``(M, H, W)`` bool."""
        if self.with_mask and any("masks" not in t for t in targets):
            raise DataError(
                "training Cascade Mask R-CNN needs instance masks in the targets "
                '(targets["masks"], (M, H, W)); the data gives boxes only: load them with '
                "data.options.with_masks=true (CocoDetection(with_masks=True)), or build the "
                "model with with_mask=False"
            )
        dev = proposals[0].device if proposals else feats[0].device
        gts = [
            (t["boxes"].to(dev, torch.float32).reshape(-1, 4), t["labels"].to(dev).long())
            for t in targets
        ]
        shapes = [tuple(int(v) for v in t["img_shape"]) for t in targets]
        losses: dict[str, Tensor] = {}
        for stage, weight in enumerate(self.stage_loss_weights):
            samples = [
                self._sample(stage, props, gt_boxes)
                for props, (gt_boxes, _) in zip(proposals, gts, strict=True)
            ]
            rois = rois_of([s.sampled_priors for s in samples])
            cls_score, bbox_pred = self(feats, rois, stage)
            cls_score, bbox_pred = cls_score.float(), bbox_pred.float()  # losses in float32
            pos_labels = [gt[1][s.pos_gt_inds] for s, gt in zip(samples, gts, strict=True)]
            labels = torch.cat(
                [
                    torch.cat((lb, lb.new_full((s.neg_inds.numel(),), self.num_classes)))
                    for lb, s in zip(pos_labels, samples, strict=True)
                ]
            )
            n_rois, pos = labels.numel(), labels < self.num_classes
            ce = F.cross_entropy(cls_score, labels, reduction="none")
            losses[f"loss_s{stage}_cls"] = weight * weight_reduce(ce, avg_factor=max(n_rois, 1))
            deltas = torch.cat(
                [
                    self.coders[stage].encode(s.priors[s.pos_inds], gt[0][s.pos_gt_inds])
                    for s, gt in zip(samples, gts, strict=True)
                ]
            )
            l1 = smooth_l1_loss(bbox_pred[pos], deltas, 1.0, avg_factor=n_rois)
            losses[f"loss_s{stage}_bbox"] = weight * l1
            if self.with_mask:
                masks = [t["masks"] for t in targets]
                mask = self._mask_loss(stage, feats, samples, torch.cat(pos_labels), masks)
                losses[f"loss_s{stage}_mask"] = weight * mask
            if stage < self.num_stages - 1:
                with torch.no_grad():
                    refined = self.refine(stage, rois, bbox_pred, shapes)[:, 1:]
                    proposals = self._drop_gts(refined, samples, [len(b) for b, _ in gts])
        return losses

    def _sample(self, stage: int, proposals: Tensor, gt_boxes: Tensor) -> SamplingResult:
        """Assign one image's proposals at stage ``stage``'s IoU and sample its RoIs."""
        iou = self.stage_ious[stage]
        assigned = max_iou_assign(proposals, gt_boxes, iou, iou, iou, match_low_quality=False)
        return random_sample(
            proposals, assigned, gt_boxes, self.num_samples, self.pos_fraction, True
        )

    @staticmethod
    def _drop_gts(
        refined: Tensor, samples: list[SamplingResult], num_gts: list[int]
    ) -> list[Tensor]:
        """Per image, the refined sampled RoIs less the ground truths sampled as positives
        (the added ground truths come first in ``priors``)."""
        sizes = [s.pos_inds.numel() + s.neg_inds.numel() for s in samples]
        kept = []
        for boxes, s, n in zip(refined.split(sizes), samples, num_gts, strict=True):
            keep = torch.ones(len(boxes), dtype=torch.bool, device=boxes.device)
            keep[: s.pos_inds.numel()] = s.pos_inds >= n
            kept.append(boxes[keep])
        return kept

    def _mask_loss(
        self,
        stage: int,
        feats: Sequence[Tensor],
        samples: list[SamplingResult],
        labels: Tensor,
        gt_masks: list[Tensor],
    ) -> Tensor:
        """Mean BCE of stage ``stage``'s masks on the positives of every image."""
        pos_rois = [s.priors[s.pos_inds] for s in samples]
        mask_pred = self.mask_head[stage](self.mask_roi_extractor(feats, rois_of(pos_rois)))
        target = torch.cat(
            [
                mask_targets(r, m, s.pos_gt_inds, self.mask_size)
                for r, m, s in zip(pos_rois, gt_masks, samples, strict=True)
            ]
        )
        return mask_loss(mask_pred, target, labels)

    @torch.no_grad()
    def predict(
        self,
        feats: Sequence[Tensor],
        proposals: Sequence[Tensor],
        image_sizes: Sequence[tuple[int, int]],
    ) -> list[dict[str, Tensor]]:
        """Per image ``{"boxes": (n, 4), "scores": (n,), "labels": (n,) int64}`` and, with
        masks, ``"masks": (n, H, W)`` bool and ``"mask_probs": (n, S, S)`` (the detected
        class's probabilities in each box), from its ``(m, 4)`` proposals; boxes clipped to
        the image's ``(H, W)`` before padding."""
        rois = rois_of(proposals)
        logits = []
        for stage in range(self.num_stages):
            cls_score, bbox_pred = self(feats, rois, stage)
            logits.append(cls_score.float())
            rois = self.refine(stage, rois, bbox_pred.float(), image_sizes)
        # the last refinement is the last stage's boxes
        probs = F.softmax(torch.stack(logits).mean(0), dim=-1)[:, : self.num_classes]
        results = []
        for i in range(len(proposals)):
            idx = rois[:, 0] == i
            boxes, prob = rois[idx, 1:], probs[idx]
            roi_idx, labels = (prob > self.test_cfg.score_thr).nonzero().unbind(1)
            results.append(
                select_detections(boxes[roi_idx], prob[roi_idx, labels], labels, self.test_cfg)
            )
        if self.with_mask:
            self._predict_masks(feats, results, image_sizes)
        return results

    def _predict_masks(
        self,
        feats: Sequence[Tensor],
        results: list[dict[str, Tensor]],
        image_sizes: Sequence[tuple[int, int]],
    ) -> None:
        """Add ``"masks"`` and ``"mask_probs"`` to each result: the stages' mean sigmoid of
        the detected class."""
        mask_feats = self.mask_roi_extractor(feats, rois_of([r["boxes"] for r in results]))
        labels = torch.cat([r["labels"] for r in results])
        rows = torch.arange(labels.numel(), device=labels.device)
        probs = sum(head(mask_feats)[rows, labels].float().sigmoid() for head in self.mask_head)
        probs = probs / self.num_stages
        sizes = [len(r["boxes"]) for r in results]
        for r, p, size in zip(results, probs.split(sizes), image_sizes, strict=True):
            r["masks"] = paste_masks(p, r["boxes"], tuple(size), self.mask_thr_binary)
            r["mask_probs"] = p  # to paste at another scale (the original image's)
