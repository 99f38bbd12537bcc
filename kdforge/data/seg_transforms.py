"""Segmentation transforms on ``(image, mask)`` pairs, following mmsegmentation's.

Each transform is called as ``t(image, mask) -> (image, mask)``: an ``(H, W, 3)`` uint8 RGB
array and an ``(H, W)`` array of class ids (as ``SegmentationFolder`` loads them; PIL
images are accepted and converted). As in ``kdforge.data.transforms``, randomness comes only
from torch's global RNG and every random transform splits into ``sample_params(image,
mask)`` and ``apply(image, mask, params)``. Resizing is mmcv's (:mod:`kdforge.data.geometric`):
images with OpenCV bilinear (no antialiasing when shrinking), masks with OpenCV nearest.
The photometric distortion works on 8-bit RGB with OpenCV's 8-bit HSV conversion (hue
0..179), truncating to uint8 after every step as mmsegmentation does; it lives in
``_photometric.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from kdforge.data._photometric import PhotoMetricDistortion
from kdforge.data.det_transforms import DETECTION_MEAN, DETECTION_STD
from kdforge.data.geometric import as_array, hflip, imresize, rescale_size

__all__ = [
    "SEG_MEAN",
    "SEG_STD",
    "PhotoMetricDistortion",
    "SegCompose",
    "SegNormalize",
    "SegPad",
    "SegRandomCrop",
    "SegRandomFlip",
    "SegRandomResize",
    "collate_segmentation",
]

SEG_MEAN, SEG_STD = DETECTION_MEAN, DETECTION_STD  # ImageNet, RGB, 0-255
Pair = tuple[Any, Any]


class SegCompose:
    """Apply ``(image, mask)`` transforms one after the other."""

    def __init__(self, transforms: Sequence[Callable[[Any, Any], Pair]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: Any, mask: Any) -> Pair:
        for t in self.transforms:
            image, mask = t(image, mask)
        return image, mask

    def __repr__(self) -> str:
        return f"SegCompose({self.transforms!r})"


class SegRandomResize:
    """Keep-ratio resize to ``scale × ratio``, ratio ~ U(ratio_range) (mmseg ``RandomResize``).

    With ``scale=(2048, 1024)`` a 2048x1024 Cityscapes frame becomes ``(2048r, 1024r)``.
    """

    def __init__(
        self, scale: tuple[int, int] = (2048, 1024), ratio_range: tuple[float, float] = (0.5, 2.0)
    ) -> None:
        self.scale, self.ratio_range = (int(scale[0]), int(scale[1])), tuple(ratio_range)

    def sample_params(self, image: Any = None, mask: Any = None) -> float:
        """Draw the ratio; ``image`` and ``mask`` are unused (a uniform signature)."""
        low, high = self.ratio_range
        return low + float(torch.rand(1).item()) * (high - low)

    def apply(self, image: Any, mask: Any, ratio: float) -> Pair:
        """Resize both to fit ``(int(scale[0] · ratio), int(scale[1] · ratio))``: the image
        bilinear, the mask nearest (``mmcv.imrescale``)."""
        image, mask = as_array(image), as_array(mask)
        scale = (int(self.scale[0] * ratio), int(self.scale[1] * ratio))
        size = rescale_size(image.shape[1], image.shape[0], scale)  # (w, h)
        return imresize(image, size, "bilinear"), imresize(mask, size, "nearest")

    def __call__(self, image: Any, mask: Any) -> Pair:
        return self.apply(image, mask, self.sample_params(image, mask))

    def __repr__(self) -> str:
        return f"SegRandomResize(scale={self.scale}, ratio_range={self.ratio_range})"


class SegRandomCrop:
    """Random ``(h, w)`` crop; retried so no class covers ``>= cat_max_ratio`` of it.

    mmsegmentation's rule: draw a crop; while fewer than two labelled classes are in it or
    the largest one holds ``cat_max_ratio`` or more of its labelled pixels (``ignore_index``
    not counted), draw again — at most 10 times; the last draw is then kept unchecked. An
    image smaller than the crop yields the whole of that side (pad it afterwards).
    """

    def __init__(
        self,
        crop_size: tuple[int, int] = (512, 1024),
        cat_max_ratio: float = 0.75,
        ignore_index: int = 255,
    ) -> None:
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.cat_max_ratio, self.ignore_index = cat_max_ratio, ignore_index

    def _draw(self, height: int, width: int) -> tuple[int, int]:
        top = int(torch.randint(max(height - self.crop_size[0], 0) + 1, (1,)).item())
        left = int(torch.randint(max(width - self.crop_size[1], 0) + 1, (1,)).item())
        return top, left

    def _accepts(self, labels: np.ndarray, top: int, left: int) -> bool:
        crop = labels[top : top + self.crop_size[0], left : left + self.crop_size[1]]
        values, counts = np.unique(crop, return_counts=True)
        counts = counts[values != self.ignore_index]
        return len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio

    def sample_params(self, image: Any, mask: Any) -> tuple[int, int]:
        """Draw ``(top, left)`` of the crop, following the category-max-ratio rule."""
        height, width = as_array(image).shape[:2]
        top, left = self._draw(height, width)
        if self.cat_max_ratio < 1.0:
            labels = as_array(mask)
            for _ in range(10):
                if self._accepts(labels, top, left):
                    break
                top, left = self._draw(height, width)
        return top, left

    def apply(self, image: Any, mask: Any, params: tuple[int, int]) -> Pair:
        """Crop both at ``params = (top, left)`` (an image smaller than the crop keeps
        that side whole)."""
        top, left = params
        rows = slice(top, top + self.crop_size[0])
        cols = slice(left, left + self.crop_size[1])
        return as_array(image)[rows, cols], as_array(mask)[rows, cols]

    def __call__(self, image: Any, mask: Any) -> Pair:
        return self.apply(image, mask, self.sample_params(image, mask))

    def __repr__(self) -> str:
        return f"SegRandomCrop(crop_size={self.crop_size}, cat_max_ratio={self.cat_max_ratio})"


class SegRandomFlip:
    """Mirror image and mask left-right together with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def sample_params(self, image: Any = None, mask: Any = None) -> bool:
        """Draw whether to flip; ``image`` and ``mask`` are unused (a uniform signature)."""
        return bool(torch.rand(1).item() < self.p)

    def apply(self, image: Any, mask: Any, flip: bool) -> Pair:
        """Mirror both if ``flip``."""
        if not flip:
            return image, mask
        return hflip(as_array(image)), hflip(as_array(mask))

    def __call__(self, image: Any, mask: Any) -> Pair:
        return self.apply(image, mask, self.sample_params(image, mask))

    def __repr__(self) -> str:
        return f"SegRandomFlip(p={self.p})"


class SegNormalize:
    """RGB image -> ``(3, H, W)`` float ``(pixel - mean) / std``; mask -> ``(H, W)`` int64."""

    def __init__(self, mean: Sequence[float] = SEG_MEAN, std: Sequence[float] = SEG_STD) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(std, dtype=torch.float32)[:, None, None]

    def __call__(self, image: Any, mask: Any) -> tuple[torch.Tensor, torch.Tensor]:
        array = as_array(image).astype(np.float32)  # (H, W, 3)
        if array.ndim == 2:  # grey: replicated, as OpenCV's IMREAD_COLOR does
            array = np.repeat(array[:, :, None], 3, axis=2)
        tensor = torch.from_numpy(array).permute(2, 0, 1)  # (3, H, W)
        labels = torch.from_numpy(as_array(mask).astype(np.int64))  # (H, W)
        return (tensor - self.mean) / self.std, labels

    def __repr__(self) -> str:
        return (
            f"SegNormalize(mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()})"
        )


class SegPad:
    """Pad tensors at the bottom and right to ``size = (h, w)``: image with ``pad_val``, mask
    with ``seg_pad_val`` (mmsegmentation pads after normalising: 0 and 255)."""

    def __init__(
        self, size: tuple[int, int] = (512, 1024), pad_val: float = 0.0, seg_pad_val: int = 255
    ) -> None:
        self.size = (int(size[0]), int(size[1]))
        self.pad_val, self.seg_pad_val = pad_val, seg_pad_val

    def __call__(
        self, image: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        pad = (0, max(self.size[1] - image.shape[-1], 0), 0, max(self.size[0] - image.shape[-2], 0))
        if not any(pad):
            return image, mask
        return F.pad(image, pad, value=self.pad_val), F.pad(mask, pad, value=self.seg_pad_val)

    def __repr__(self) -> str:
        return f"SegPad(size={self.size}, pad_val={self.pad_val}, seg_pad_val={self.seg_pad_val})"


def collate_segmentation(
    batch: Sequence[tuple[torch.Tensor, torch.Tensor]],
    pad_value: float = 0.0,
    seg_pad_value: int = 255,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``(image (3, H, W), mask (H, W))`` items into ``(N, 3, H, W)`` and ``(N, H, W)``.

    Items of different sizes are padded at the bottom and right to the largest height and
    width (image with ``pad_value``, mask with ``seg_pad_value``, so padding is ignored).
    """
    height = max(img.shape[-2] for img, _ in batch)
    width = max(img.shape[-1] for img, _ in batch)
    images, masks = [], []
    for img, mask in batch:
        pad = (0, width - img.shape[-1], 0, height - img.shape[-2])
        images.append(F.pad(img, pad, value=pad_value))
        masks.append(F.pad(mask, pad, value=seg_pad_value))
    return torch.stack(images), torch.stack(masks)
