"""Detection augmentations beyond resize and flip: mmdetection's ``RandomCrop`` and
``RandomChoice``, and the DETR-family training pipeline built from them.

Transforms take and return ``(image, target)`` as :mod:`kdforge.data.det_transforms`;
randomness comes from torch's global RNG with a ``sample_params`` / ``apply`` split.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from kdforge.data.det_transforms import DetCompose, DetRandomFlip, DetRandomResize, Scale
from kdforge.data.geometric import as_array

__all__ = ["DETR_SCALES", "DetRandomChoice", "DetRandomCrop", "detr_train_augment"]

Target = dict[str, Any]
Transform = Callable[[Any, Target], tuple[Any, Target]]

# mmdetection configs/dino/dino-4scale_r50_8xb2-12e_coco.py (and Deformable DETR's)
DETR_SCALES: list[Scale] = [(s, 1333) for s in range(480, 801, 32)]
DETR_CROP_SCALES: list[Scale] = [(400, 4200), (500, 4200), (600, 4200)]


def _randint(low: int, high: int) -> int:
    """Uniform integer in ``[low, high]``."""
    return int(torch.randint(low, high + 1, (1,)).item())


def _crop_boxes(boxes: torch.Tensor, x1: int, y1: int, width: int, height: int):
    """``(M, 4)`` boxes shifted by ``(-x1, -y1)`` and clipped to ``width x height``, and
    which of them are inside (``x1 < w, y1 < h, x2 > 0, y2 > 0``, mmdetection's test)."""
    boxes = boxes - boxes.new_tensor([x1, y1, x1, y1])
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    inside = (boxes[:, 0] < width) & (boxes[:, 1] < height) & (boxes[:, 2] > 0) & (boxes[:, 3] > 0)
    return boxes, inside


class DetRandomCrop:
    """mmdetection ``RandomCrop(crop_type="absolute_range")``: crop height and width drawn
    uniformly in ``[min(side, lo), min(side, hi)]``, the offset uniformly where the crop fits.

    Boxes are shifted and clipped to the crop; boxes then outside it (mmdetection's
    ``is_inside``: ``x1 < w, y1 < h, x2 > 0, y2 > 0``) are dropped with their labels (crowd
    boxes and masks alike). A crop may keep no box (``allow_negative_crop=True``, as DETR).

    Args:
        crop_size: ``(lo, hi)`` pixel range of both sides (DETR: ``(384, 600)``).
    """

    def __init__(self, crop_size: tuple[int, int]) -> None:
        lo, hi = int(crop_size[0]), int(crop_size[1])
        if not 0 < lo <= hi:
            raise ValueError(f"crop_size must be (lo, hi) with 0 < lo <= hi, got {crop_size!r}")
        self.crop_size = (lo, hi)

    def sample_params(self, image: Any) -> tuple[int, int, int, int]:
        """``(y1, x1, crop_h, crop_w)`` for an image of its size."""
        height, width = as_array(image).shape[:2]
        lo, hi = self.crop_size
        crop_h = _randint(min(height, lo), min(height, hi))
        crop_w = _randint(min(width, lo), min(width, hi))
        return _randint(0, height - crop_h), _randint(0, width - crop_w), crop_h, crop_w

    def apply(
        self, image: Any, target: Target, params: tuple[int, int, int, int]
    ) -> tuple[Any, Target]:
        """Crop ``image`` to ``params`` and carry the boxes (and masks) along."""
        y1, x1, crop_h, crop_w = params
        out = dict(target)
        out["boxes"], keep = _crop_boxes(target["boxes"], x1, y1, crop_w, crop_h)
        out["ignore_boxes"], inside = _crop_boxes(target["ignore_boxes"], x1, y1, crop_w, crop_h)
        out["ignore_boxes"] = out["ignore_boxes"][inside]
        out["boxes"], out["labels"] = out["boxes"][keep], target["labels"][keep]
        if "masks" in target:
            out["masks"] = target["masks"][keep][:, y1 : y1 + crop_h, x1 : x1 + crop_w]
        out["img_shape"] = (crop_h, crop_w)
        return np.ascontiguousarray(as_array(image)[y1 : y1 + crop_h, x1 : x1 + crop_w]), out

    def __call__(self, image: Any, target: Target) -> tuple[Any, Target]:
        return self.apply(image, target, self.sample_params(image))

    def __repr__(self) -> str:
        return f"DetRandomCrop(crop_size={self.crop_size})"


class DetRandomChoice:
    """mmcv ``RandomChoice`` (``prob=None``): apply one of several transform sequences,
    chosen uniformly."""

    def __init__(self, choices: Sequence[Sequence[Transform]]) -> None:
        if not choices:
            raise ValueError("DetRandomChoice needs at least one transform sequence")
        self.choices = [DetCompose(list(c)) for c in choices]

    def sample_params(self, image: Any = None) -> int:
        """The index of the sequence to apply; ``image`` is unused (a uniform signature)."""
        return int(torch.randint(len(self.choices), (1,)).item())

    def apply(self, image: Any, target: Target, index: int) -> tuple[Any, Target]:
        """Run sequence ``index``."""
        return self.choices[index](image, target)

    def __call__(self, image: Any, target: Target) -> tuple[Any, Target]:
        return self.apply(image, target, self.sample_params(image))

    def __repr__(self) -> str:
        return f"DetRandomChoice({self.choices!r})"


def detr_train_augment(
    scales: Sequence[Scale] = DETR_SCALES,
    crop_scales: Sequence[Scale] = DETR_CROP_SCALES,
    crop_size: tuple[int, int] = (384, 600),
) -> DetCompose:
    """DETR's training augmentation (mmdetection's DINO / Deformable DETR configs): flip with
    p=0.5, then either a keep-ratio resize to one of ``scales`` or a resize to one of
    ``crop_scales``, a ``crop_size`` crop and a resize to one of ``scales``."""
    resize = DetRandomResize(scales, mode="value")
    return DetCompose(
        [
            DetRandomFlip(0.5),
            DetRandomChoice(
                [
                    [resize],
                    [
                        DetRandomResize(crop_scales, mode="value"),
                        DetRandomCrop(crop_size),
                        resize,
                    ],
                ]
            ),
        ]
    )
