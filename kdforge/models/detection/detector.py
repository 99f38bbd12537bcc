"""``DenseDetector``: backbone -> FPN -> dense head, usable as a plain model by a Distiller."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from kdforge.models.detection._dense_head import DenseHead

__all__ = ["DenseDetector"]


class DenseDetector(nn.Module):
    """A one-stage detector (mmdetection's ``SingleStageDetector``, without data handling).

    ``forward`` returns the raw head outputs so that the detector is an ordinary module
    for distillation; ``loss`` and ``predict`` turn them into losses or detections.
    Submodules are named ``backbone``, ``neck`` and ``bbox_head`` as in mmdetection, so
    checkpoints and module paths carry over (``bbox_head.cls_convs.0``,
    ``neck.fpn_convs.2``).

    Args:
        backbone: ``images -> tuple of stage outputs`` with a ``feature_info`` list.
        neck: ``stage outputs -> tuple of pyramid levels`` (``FPN``).
        head: a :class:`DenseHead`.

    Attributes:
        feature_info: ``module`` path, ``num_chs`` and ``reduction`` of the backbone
            stages (``backbone.layer1..4``) then of the pyramid levels
            (``neck.fpn_convs.0..4`` = ``P3..P7``), each with a ``name`` (``C2``, ``P3``...).
    """

    def __init__(self, backbone: nn.Module, neck: nn.Module, head: DenseHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.bbox_head = head
        self.feature_info: list[dict] = []
        for info in backbone.feature_info:
            level = info["reduction"].bit_length() - 1
            self.feature_info.append(
                {**info, "module": f"backbone.{info['module']}", "name": f"C{level}"}
            )
        for i, stride in enumerate(head.strides):
            self.feature_info.append(
                {
                    "module": f"neck.fpn_convs.{i}",
                    "num_chs": neck.fpn_convs[i].conv.out_channels,
                    "reduction": stride,
                    "name": f"P{stride.bit_length() - 1}",
                }
            )

    @property
    def head(self) -> DenseHead:
        """The dense head (``bbox_head``)."""
        return self.bbox_head

    def extract_feat(self, images: Tensor) -> tuple[Tensor, ...]:
        """``(N, 3, H, W)`` -> FPN levels ``P3..P7``."""
        return self.neck(self.backbone(images))

    def forward(self, images: Tensor) -> dict[str, list[Tensor]]:
        """``(N, 3, H, W)`` normalised, padded images -> ``{"cls": [...], "reg": [...], ...}``,
        one ``(N, C, H_l, W_l)`` tensor per pyramid level."""
        return self.bbox_head(self.extract_feat(images))

    def loss(
        self,
        outputs: dict[str, list[Tensor]],
        targets: Sequence[dict[str, Tensor]],
        image_size: tuple[int, int] | Sequence[tuple[int, int]],
    ) -> dict[str, Tensor]:
        """Named training losses (mmdetection's names, e.g. ``loss_cls``, ``loss_bbox``).

        Args:
            outputs: ``forward``'s outputs.
            targets: per image ``{"boxes": (M, 4) xyxy pixels, "labels": (M,) int64
                0-based, "ignore_boxes": optional (K, 4) crowd boxes}``.
            image_size: the padded ``(H, W)`` of each image (mmdetection's ``pad_shape``),
                or one ``(H, W)`` for the whole batch; anchors beyond it get no loss.
        """
        return self.bbox_head.loss(outputs, targets, image_size)

    def predict(
        self, outputs: dict[str, list[Tensor]], image_sizes: Sequence[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        """Per image ``{"boxes", "scores", "labels"}`` in input pixels, clipped to the
        image's ``(H, W)`` before padding (see :meth:`DenseHead.predict`)."""
        return self.bbox_head.predict(outputs, image_sizes)
