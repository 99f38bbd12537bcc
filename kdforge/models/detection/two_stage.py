"""``TwoStageDetector``: backbone -> FPN -> RPN -> RoI head, usable as a plain model by a
Distiller (mmdetection 3.x's ``TwoStageDetector``, without data handling)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from kdforge.models.detection._dense_head import image_sizes_of
from kdforge.models.detection.cascade_roi_head import CascadeRoIHead
from kdforge.models.detection.postprocess import PostprocessConfig
from kdforge.models.detection.roi_head import StandardRoIHead
from kdforge.models.detection.rpn_head import RPN_TEST_CFG, RPN_TRAIN_CFG, RPNHead

__all__ = ["TwoStageDetector"]


class TwoStageDetector(nn.Module):
    """A two-stage detector whose ``forward`` stops after the RPN.

    ``forward`` returns the pyramid levels and the RPN outputs, so that the model is an
    ordinary module for distillation (hooks on ``neck.fpn_convs.*``, a teacher truncated
    after the neck); ``loss`` and ``predict`` run the proposal step and the RoI head on
    them. Submodules are named ``backbone``, ``neck``, ``rpn_head`` and ``roi_head`` as in
    mmdetection, so checkpoint keys carry over.

    Args:
        backbone: ``images -> tuple of stage outputs`` with a ``feature_info`` list.
        neck: an ``FPN`` with ``start_level=0`` and max-pooled extra levels.
        rpn_head: an :class:`RPNHead` running on every pyramid level.
        roi_head: a :class:`StandardRoIHead` or :class:`CascadeRoIHead` pooling from the
            first levels.
        rpn_train_cfg: the RPN's proposal settings while training (Cascade R-CNN keeps 2000).

    Attributes:
        feature_info: ``module`` path, ``num_chs``, ``reduction`` and ``name`` of the
            backbone stages (``backbone.layer1..4``: ``C2..C5``) then of the pyramid levels
            (``neck.fpn_convs.0..3``: ``P2..P5``, ``neck.extra_pools.0``: ``P6``).
    """

    def __init__(
        self,
        backbone: nn.Module,
        neck: nn.Module,
        rpn_head: RPNHead,
        roi_head: StandardRoIHead | CascadeRoIHead,
        rpn_train_cfg: PostprocessConfig = RPN_TRAIN_CFG,
    ) -> None:
        super().__init__()
        self.rpn_train_cfg = rpn_train_cfg
        self.backbone = backbone
        self.neck = neck
        self.rpn_head = rpn_head
        self.roi_head = roi_head
        self.feature_info: list[dict] = []
        for info in backbone.feature_info:
            level = info["reduction"].bit_length() - 1
            self.feature_info.append(
                {**info, "module": f"backbone.{info['module']}", "name": f"C{level}"}
            )
        modules = [f"neck.fpn_convs.{i}" for i in range(len(neck.fpn_convs))]
        modules += [f"neck.extra_pools.{i}" for i in range(len(neck.extra_pools))]
        channels = neck.fpn_convs[0].conv.out_channels
        for module, stride in zip(modules, rpn_head.strides, strict=True):
            self.feature_info.append(
                {
                    "module": module,
                    "num_chs": channels,
                    "reduction": stride,
                    "name": f"P{stride.bit_length() - 1}",
                }
            )

    def extract_feat(self, images: Tensor) -> tuple[Tensor, ...]:
        """``(N, 3, H, W)`` -> FPN levels ``P2..P6``."""
        return self.neck(self.backbone(images))

    def forward(self, images: Tensor) -> dict[str, list[Tensor]]:
        """``(N, 3, H, W)`` normalised, padded images -> ``{"feats": [P2..P6],
        "rpn_cls": [(N, A, H_l, W_l)], "rpn_reg": [(N, 4A, H_l, W_l)]}``."""
        feats = list(self.extract_feat(images))
        return {"feats": feats, **self.rpn_head(feats)}

    def loss(
        self,
        outputs: dict[str, list[Tensor]],
        targets: Sequence[dict[str, Tensor]],
        image_size: tuple[int, int] | Sequence[tuple[int, int]],
    ) -> dict[str, Tensor]:
        """``{"loss_rpn_cls", "loss_rpn_bbox"}`` and the RoI head's losses.

        Args:
            outputs: ``forward``'s outputs.
            targets: per image ``{"boxes": (M, 4) xyxy pixels, "labels": (M,) int64
                0-based, "img_shape": optional (H, W) before padding}``.
            image_size: the padded ``(H, W)`` of each image (mmdetection's ``pad_shape``),
                or one for the batch: anchors beyond it are not sampled. Training proposals
                are clipped to ``img_shape`` (the padded size when a target has none).
        """
        pads = image_sizes_of(image_size, len(targets))
        losses = self.rpn_head.loss(outputs, targets, pads)
        shapes = [
            tuple(int(v) for v in t.get("img_shape", pad))
            for t, pad in zip(targets, pads, strict=True)
        ]
        proposals = self.rpn_head.proposals(outputs, shapes, self.rpn_train_cfg)
        boxes = [p["boxes"] for p in proposals]
        targets = [{**t, "img_shape": s} for t, s in zip(targets, shapes, strict=True)]
        return {**losses, **self.roi_head.loss(outputs["feats"], boxes, targets)}

    def predict(
        self, outputs: dict[str, list[Tensor]], image_sizes: Sequence[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        """Per image ``{"boxes", "scores", "labels"}`` (and the RoI head's ``"masks"``) in
        input pixels, clipped to the image's ``(H, W)`` before padding: test proposals, then
        the RoI head."""
        proposals = self.rpn_head.proposals(outputs, image_sizes, RPN_TEST_CFG)
        boxes = [p["boxes"] for p in proposals]
        return self.roi_head.predict(outputs["feats"], boxes, image_sizes)
