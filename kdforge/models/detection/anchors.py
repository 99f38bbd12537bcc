"""Prior generators: anchor boxes (RetinaNet, ATSS, GFL) and points (FCOS) per FPN level.

Both follow mmdetection 3.x (``AnchorGenerator`` with ``center_offset=0`` and
``MlvlPointGenerator`` with ``offset=0.5``), so priors are ordered location-major,
row by row, with the ``A`` anchors of one location contiguous. That is the order of
``head_output.permute(0, 2, 3, 1).reshape(N, -1, K)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["AnchorGenerator", "grid_points", "valid_flags"]


class AnchorGenerator:
    """Anchors of Lin et al., 2017 ("Focal Loss for Dense Object Detection").

    At level ``l`` (stride ``s``) the base anchors are centred at ``(0, 0)`` with widths
    ``s * scale / sqrt(ratio)`` and heights ``s * scale * sqrt(ratio)`` (``ratio = h/w``),
    ratio-major (``index = ratio_index * len(scales) + scale_index``), and are shifted
    to ``(x * s, y * s)`` for every feature-map cell: the anchor centre sits on the cell's
    top-left corner, as mmdetection's ``center_offset=0``.

    Args:
        strides: stride of each level, e.g. ``(8, 16, 32, 64, 128)``.
        ratios: height/width ratios, e.g. ``(0.5, 1.0, 2.0)``.
        octave_base_scale: anchor size in strides of the first octave scale.
        scales_per_octave: scales ``octave_base_scale * 2 ** (i / scales_per_octave)``.
    """

    def __init__(
        self,
        strides: Sequence[int],
        ratios: Sequence[float],
        octave_base_scale: float,
        scales_per_octave: int,
    ) -> None:
        self.strides = tuple(strides)
        scales = torch.tensor(
            [octave_base_scale * 2 ** (i / scales_per_octave) for i in range(scales_per_octave)]
        )
        h_ratios = torch.tensor(ratios, dtype=torch.float32).sqrt()
        w_ratios = 1 / h_ratios
        self.base_anchors = []
        for stride in self.strides:
            ws = (stride * w_ratios[:, None] * scales[None, :]).reshape(-1)  # (A,)
            hs = (stride * h_ratios[:, None] * scales[None, :]).reshape(-1)
            self.base_anchors.append(torch.stack((-0.5 * ws, -0.5 * hs, 0.5 * ws, 0.5 * hs), 1))

    @property
    def num_base_anchors(self) -> int:
        """Anchors per location ``A`` (the same on every level)."""
        return self.base_anchors[0].shape[0]

    def grid_anchors(
        self,
        featmap_sizes: Sequence[tuple[int, int]],
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> list[Tensor]:
        """``[(H_l * W_l * A, 4)]`` anchors of every level, in absolute pixels."""
        anchors = []
        for (h, w), stride, base in zip(
            featmap_sizes, self.strides, self.base_anchors, strict=True
        ):
            ys, xs = torch.meshgrid(
                torch.arange(h, device=device, dtype=dtype) * stride,
                torch.arange(w, device=device, dtype=dtype) * stride,
                indexing="ij",
            )
            shifts = torch.stack((xs, ys, xs, ys), -1).reshape(-1, 1, 4)  # (HW, 1, 4)
            anchors.append((shifts + base.to(device, dtype)[None]).reshape(-1, 4))
        return anchors


def grid_points(
    featmap_sizes: Sequence[tuple[int, int]],
    strides: Sequence[int],
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    offset: float = 0.5,
) -> list[Tensor]:
    """FCOS locations (Tian et al., 2019): ``((x + offset) * s, (y + offset) * s)`` per cell.

    Returns ``[(H_l * W_l, 2)]`` ``(x, y)`` points, row by row.
    """
    points = []
    for (h, w), stride in zip(featmap_sizes, strides, strict=True):
        ys, xs = torch.meshgrid(
            (torch.arange(h, device=device, dtype=dtype) + offset) * stride,
            (torch.arange(w, device=device, dtype=dtype) + offset) * stride,
            indexing="ij",
        )
        points.append(torch.stack((xs, ys), -1).reshape(-1, 2))
    return points


def valid_flags(
    featmap_sizes: Sequence[tuple[int, int]],
    strides: Sequence[int],
    pad_shape: tuple[int, int],
    num_base_anchors: int,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Which priors lie on an image's own (padded) area of a batch, all levels concatenated.

    mmdetection marks cell ``(y, x)`` of level ``l`` valid when
    ``y < ceil(h / s_l)`` and ``x < ceil(w / s_l)`` for the image's ``pad_shape`` ``(h, w)``;
    priors on the batch padding beyond it get no label and no loss weight.
    """
    flags = []
    for (feat_h, feat_w), stride in zip(featmap_sizes, strides, strict=True):
        valid_h = min(math.ceil(pad_shape[0] / stride), feat_h)
        valid_w = min(math.ceil(pad_shape[1] / stride), feat_w)
        grid = torch.zeros(feat_h, feat_w, dtype=torch.bool, device=device)
        grid[:valid_h, :valid_w] = True
        flags.append(grid.reshape(-1, 1).expand(-1, num_base_anchors).reshape(-1))
    return torch.cat(flags)
