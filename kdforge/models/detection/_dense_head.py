"""Shared parts of the dense heads: mmcv-named conv blocks, level scales, splittable towers.

A head has a classification and a regression tower of ``stacked_convs`` stages each
(``cls_convs[i]``, ``reg_convs[i]``), shared by all FPN levels, then 3x3 predictors.
``forward_until(stage, feats)`` runs the first ``stage`` stages of both towers and
``forward_from(stage, cls_feats, reg_feats)`` the remaining ones plus the predictors, so
``forward_from(s, *forward_until(s, x)) == forward(x)`` for every ``s``; CrossKD (Wang et
al., 2024) feeds one head's stage-``s`` features into another head's ``forward_from``.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

from kdforge.models.detection.postprocess import (
    PostprocessConfig,
    filter_scores_and_topk,
    select_detections,
)

__all__ = ["ConvModule", "DenseHead", "Scale", "flatten_levels", "image_sizes_of", "reduce_mean"]


class ConvModule(nn.Module):
    """Conv -> optional GroupNorm -> optional ReLU, with mmcv ``ConvModule`` names.

    Parameters are ``conv.weight``/``conv.bias`` and ``gn.weight``/``gn.bias``, so
    mmdetection state dicts load as they are. By default the conv has a bias only without a
    norm (mmcv's ``bias="auto"``). The ReLU is **in place**, as mmcv's: a forward hook on
    ``.gn`` (or on ``.conv`` when there is no norm) records a tensor that the ReLU then
    overwrites, i.e. it sees the post-activation values. ``forward(x, activate=False)``
    returns the pre-activation output.

    Args:
        in_chs, out_chs, kernel_size, stride, padding: as ``nn.Conv2d``.
        norm_groups: groups of a ``GroupNorm`` (named ``gn``); ``None`` for no norm.
        act: append an in-place ReLU (named ``activate``).
        bias: force the conv bias on or off; ``None`` is mmcv's ``"auto"``.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        norm_groups: int | None = None,
        act: bool = True,
        bias: bool | None = None,
    ) -> None:
        super().__init__()
        with_norm = norm_groups is not None
        bias = not with_norm if bias is None else bias
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding, bias=bias)
        self.gn = nn.GroupNorm(norm_groups, out_chs) if with_norm else None
        self.activate = nn.ReLU(inplace=True) if act else None

    def forward(self, x: Tensor, activate: bool = True) -> Tensor:
        x = self.conv(x)
        if self.gn is not None:
            x = self.gn(x)
        if activate and self.activate is not None:
            x = self.activate(x)
        return x


class Scale(nn.Module):
    """A learnable scalar multiplier (mmcv ``Scale``; parameter ``scale``), one per level."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(scale, dtype=torch.float))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


def reduce_mean(value: Tensor) -> Tensor:
    """Average a loss normaliser over processes, as mmdetection does (no-op without DDP)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    value = value.clone()
    dist.all_reduce(value.div_(dist.get_world_size()))
    return value


def flatten_levels(outs: Sequence[Tensor], channels: int) -> Tensor:
    """Per-level ``(N, A * C, H_l, W_l)`` -> ``(N, sum_l H_l W_l A, C)``, in prior order."""
    n = outs[0].shape[0]
    return torch.cat([o.permute(0, 2, 3, 1).reshape(n, -1, channels) for o in outs], 1)


def image_sizes_of(
    image_size: tuple[int, int] | Sequence[tuple[int, int]], num_images: int
) -> list[tuple[int, int]]:
    """One ``(H, W)`` for the batch, or one per image -> a list of ``num_images`` sizes."""
    if len(image_size) == 2 and all(isinstance(v, int) for v in image_size):
        return [tuple(image_size)] * num_images
    sizes = [tuple(int(v) for v in s) for s in image_size]
    if len(sizes) != num_images:
        raise ValueError(f"{len(sizes)} image sizes for {num_images} images")
    return sizes


def init_head_conv(conv: nn.Conv2d, prior_prob: float | None = None) -> None:
    """mmdetection head init: weights N(0, 0.01); bias 0, or ``-log((1 - p) / p)``
    for a classifier so that every sigmoid starts at ``prior_prob`` (Lin et al., 2017)."""
    nn.init.normal_(conv.weight, std=0.01)
    if conv.bias is not None:
        bias = 0.0 if prior_prob is None else -math.log((1 - prior_prob) / prior_prob)
        nn.init.constant_(conv.bias, bias)


class DenseHead(nn.Module, abc.ABC):
    """Base of the dense heads: two splittable towers, predictors per level, post-processing.

    Subclasses define the predictors in ``predict_level``, the training targets and
    losses in ``loss``, the priors (``_priors``) and their decoding (``_decode``) for
    ``predict``, and set ``self.strides`` and ``self.test_cfg``.

    Args:
        num_classes: object classes (sigmoid outputs, no background class).
        in_channels: channels of the FPN levels.
        feat_channels: channels of the tower convolutions.
        stacked_convs: stages per tower.
        norm_groups: GroupNorm groups in the towers (32), or ``None`` for conv + bias.
        conv_bias: tower convs with a bias even before a GroupNorm (mmdetection's
            ``conv_bias=True``); ``None``: a bias only without a norm (``"auto"``).
    """

    score_factor_key: str | None = None  # e.g. "centerness": multiplied into the scores

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        feat_channels: int,
        stacked_convs: int,
        norm_groups: int | None,
        conv_bias: bool | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.cls_convs = nn.ModuleList()
        self.reg_convs = nn.ModuleList()
        for i in range(stacked_convs):
            chs = in_channels if i == 0 else feat_channels
            for tower in (self.cls_convs, self.reg_convs):
                tower.append(
                    ConvModule(chs, feat_channels, 3, 1, 1, norm_groups=norm_groups, bias=conv_bias)
                )
        self.strides: tuple[int, ...] = ()
        self.test_cfg = PostprocessConfig()

    def _init_weights(self, cls_conv: nn.Conv2d) -> None:
        """Every conv N(0, 0.01) with zero bias; the classifier's bias at prior 0.01."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                init_head_conv(m)
        init_head_conv(cls_conv, prior_prob=0.01)

    @property
    def num_stages(self) -> int:
        """Stages per tower; valid split points are ``0..num_stages``."""
        return len(self.cls_convs)

    def _check_stage(self, stage: int) -> None:
        if not 0 <= stage <= self.num_stages:
            raise ValueError(f"stage must be in [0, {self.num_stages}], got {stage}")

    def forward_until(
        self, stage: int, feats: Sequence[Tensor]
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Run the first ``stage`` stages of both towers on every level.

        Returns:
            ``(cls_feats, reg_feats)``, one ``(N, C, H_l, W_l)`` tensor per level: the
            (post-ReLU) outputs of ``cls_convs[stage - 1]``/``reg_convs[stage - 1]``, or the
            inputs themselves for ``stage == 0``.
        """
        self._check_stage(stage)
        cls_feats, reg_feats = [], []
        for x in feats:
            c = r = x
            for i in range(stage):
                c, r = self.cls_convs[i](c), self.reg_convs[i](r)
            cls_feats.append(c)
            reg_feats.append(r)
        return cls_feats, reg_feats

    def forward_from(
        self,
        stage: int,
        cls_feats: Sequence[Tensor],
        reg_feats: Sequence[Tensor] | None = None,
    ) -> dict[str, list[Tensor]]:
        """Run stages ``stage..`` of both towers, then the predictors (with level scales).

        Args:
            stage: index of the first tower stage to run.
            cls_feats: per-level inputs of ``cls_convs[stage]``.
            reg_feats: per-level inputs of ``reg_convs[stage]``; ``cls_feats`` if None
                (both towers start from the FPN features at stage 0).

        Returns:
            ``{output name: [per-level (N, C_out, H_l, W_l) tensors]}``.
        """
        self._check_stage(stage)
        reg_feats = cls_feats if reg_feats is None else reg_feats
        if len(cls_feats) != len(self.strides) or len(reg_feats) != len(self.strides):
            raise ValueError(f"expected {len(self.strides)} levels, got {len(cls_feats)}")
        outputs: dict[str, list[Tensor]] = {}
        for level, (c, r) in enumerate(zip(cls_feats, reg_feats, strict=True)):
            for i in range(stage, self.num_stages):
                c, r = self.cls_convs[i](c), self.reg_convs[i](r)
            for key, value in self.predict_level(level, c, r).items():
                outputs.setdefault(key, []).append(value)
        return outputs

    def forward(self, feats: Sequence[Tensor]) -> dict[str, list[Tensor]]:
        """Head outputs of the FPN levels: ``forward_from(0, feats)``."""
        return self.forward_from(0, feats)

    @abc.abstractmethod
    def predict_level(self, level: int, cls_feat: Tensor, reg_feat: Tensor) -> dict[str, Tensor]:
        """Predictors on the tower outputs of one level."""

    @abc.abstractmethod
    def loss(
        self,
        outputs: dict[str, list[Tensor]],
        targets: Sequence[dict[str, Tensor]],
        image_size: tuple[int, int] | Sequence[tuple[int, int]],
    ) -> dict[str, Tensor]:
        """Named training losses; see :meth:`DenseDetector.loss` for the arguments."""

    @abc.abstractmethod
    def _priors(self, featmap_sizes: list[tuple[int, int]], device, dtype) -> list[Tensor]:
        """Anchors or points of every level."""

    @abc.abstractmethod
    def _decode(
        self, level: int, priors: Tensor, reg: Tensor, max_shape: tuple[int, int]
    ) -> Tensor:
        """Boxes of one level from its priors and ``(n, C_reg)`` regression outputs."""

    @torch.no_grad()
    def predict(
        self, outputs: dict[str, list[Tensor]], image_sizes: Sequence[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        """Detections per image after score threshold, top-k, NMS and max-per-image.

        Args:
            outputs: the head's forward outputs.
            image_sizes: ``(H, W)`` of each image before batch padding; boxes are clipped
                to it and are in the input's pixel coordinates (undo the resize outside).

        Returns:
            one ``{"boxes": (n, 4) xyxy, "scores": (n,), "labels": (n,) int64}`` per image.
        """
        cls_outs, reg_outs = outputs["cls"], outputs["reg"]
        factor_outs = outputs[self.score_factor_key] if self.score_factor_key else None
        sizes = [tuple(o.shape[-2:]) for o in cls_outs]
        priors = self._priors(sizes, cls_outs[0].device, torch.float32)
        cfg, results = self.test_cfg, []
        for i, image_size in enumerate(image_sizes):
            boxes, scores, labels, factors = [], [], [], []
            for level, (cls, reg) in enumerate(zip(cls_outs, reg_outs, strict=True)):
                prob = cls[i].permute(1, 2, 0).reshape(-1, self.num_classes).sigmoid()
                s, lab, keep = filter_scores_and_topk(prob, cfg.score_thr, cfg.nms_pre)
                reg_i = reg[i].permute(1, 2, 0).reshape(prob.shape[0], -1)[keep]
                boxes.append(self._decode(level, priors[level][keep], reg_i, tuple(image_size)))
                scores.append(s)
                labels.append(lab)
                if factor_outs is not None:
                    factors.append(
                        factor_outs[level][i].permute(1, 2, 0).reshape(-1).sigmoid()[keep]
                    )
            results.append(
                select_detections(
                    torch.cat(boxes),
                    torch.cat(scores),
                    torch.cat(labels),
                    cfg,
                    torch.cat(factors) if factors else None,
                )
            )
        return results
