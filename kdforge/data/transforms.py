"""Image transforms for classification (primitives), written on Pillow, numpy and torch.

Geometric transforms take a PIL image or a ``(..., H, W)`` tensor and return the same kind.
Randomness comes only from torch's global RNG, so ``torch.manual_seed`` and DataLoader worker
seeding make runs reproducible, and the draws match torchvision's for the same seed. Each random
transform splits into ``sample_params(img)`` and ``apply(img, params)`` so that recorded
augmentation parameters can be replayed; ``__call__`` does both. :mod:`kdforge.data.presets`
composes them into the data sets' pipelines.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CenterCrop",
    "Compose",
    "Normalize",
    "RandomCrop",
    "RandomHorizontalFlip",
    "RandomResizedCrop",
    "RandomTransform",
    "Resize",
    "ToTensor",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

ImageLike = Image.Image | torch.Tensor
Box = tuple[int, int, int, int]  # (top, left, height, width)


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    if len(size) != 2:
        raise ValueError(f"size must be an int or (height, width), got {size!r}")
    return int(size[0]), int(size[1])


def _hw(img: ImageLike) -> tuple[int, int]:
    if isinstance(img, Image.Image):
        return img.height, img.width
    if isinstance(img, torch.Tensor) and img.ndim >= 2:
        return int(img.shape[-2]), int(img.shape[-1])
    raise TypeError(f"expected a PIL image or a (..., H, W) tensor, got {type(img).__name__}")


def _crop(img: ImageLike, top: int, left: int, height: int, width: int) -> ImageLike:
    if isinstance(img, Image.Image):
        return img.crop((left, top, left + width, top + height))
    return img[..., top : top + height, left : left + width]


def _pad(img: ImageLike, ltrb: Sequence[int]) -> ImageLike:
    """Zero-pad by (left, top, right, bottom) pixels."""
    if not any(ltrb):
        return img
    if isinstance(img, Image.Image):
        return ImageOps.expand(img, border=tuple(ltrb), fill=0)
    left, top, right, bottom = ltrb
    return F.pad(img, (left, right, top, bottom), value=0)


def _resize(img: ImageLike, height: int, width: int) -> ImageLike:
    """Bilinear resize (antialiased when shrinking, as Pillow does)."""
    if isinstance(img, Image.Image):
        return img.resize((width, height), Image.Resampling.BILINEAR)
    x = img.reshape(-1, *img.shape[-3:]) if img.ndim >= 3 else img[None, None]
    out = F.interpolate(
        x.float(), size=(height, width), mode="bilinear", align_corners=False, antialias=True
    )
    if img.dtype == torch.uint8:
        out = out.round_().clamp_(0, 255)
    elif not img.is_floating_point():
        out = out.round_()
    return out.to(img.dtype).reshape(*img.shape[:-2], height, width)


class _Transform:
    """Base giving ``ClassName(attr=value, ...)`` reprs from the instance attributes."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class RandomTransform(_Transform, abc.ABC):
    """A random transform: ``t(img) == t.apply(img, t.sample_params(img))``.

    Record ``sample_params(img)`` to replay the same augmentation later with ``apply``.
    """

    @abc.abstractmethod
    def sample_params(self, img: Any) -> Any:
        """Draw this call's random parameters from torch's global RNG."""

    @abc.abstractmethod
    def apply(self, img: Any, params: Any) -> Any:
        """Transform ``img`` deterministically with ``params``."""

    def __call__(self, img: Any) -> Any:
        return self.apply(img, self.sample_params(img))


class Compose:
    """Apply transforms one after the other."""

    def __init__(self, transforms: Sequence[Callable[[Any], Any]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, img: Any) -> Any:
        for t in self.transforms:
            img = t(img)
        return img

    def __repr__(self) -> str:
        body = "".join(f"\n    {t!r}," for t in self.transforms)
        return f"Compose([{body}\n])"


class RandomCrop(RandomTransform):
    """Zero-pad each border by ``padding`` pixels, then crop ``size`` at a random place.

    Args:
        size: Output ``(height, width)``, or an int for a square.
        padding: Int for all borders or ``(left, top, right, bottom)``.
    """

    def __init__(self, size: int | Sequence[int], padding: int | Sequence[int] = 0) -> None:
        self.size = _pair(size)
        pad = (padding,) * 4 if isinstance(padding, int) else tuple(int(p) for p in padding)
        if len(pad) != 4 or min(pad) < 0:
            raise ValueError(f"padding must be an int or 4 non-negative ints, got {padding!r}")
        self.padding = pad

    def sample_params(self, img: ImageLike) -> Box:
        """Draw ``(top, left, height, width)`` in the coordinates of the *padded* image."""
        h, w = _hw(img)
        h += self.padding[1] + self.padding[3]
        w += self.padding[0] + self.padding[2]
        th, tw = self.size
        if h < th or w < tw:
            raise ValueError(f"crop size {self.size} is larger than the padded image ({h}, {w})")
        if (h, w) == (th, tw):
            return 0, 0, h, w
        top = int(torch.randint(0, h - th + 1, size=(1,)).item())
        left = int(torch.randint(0, w - tw + 1, size=(1,)).item())
        return top, left, th, tw

    def apply(self, img: ImageLike, params: Box) -> ImageLike:
        """Pad ``img`` and crop the box ``params``."""
        return _crop(_pad(img, self.padding), *params)


class RandomHorizontalFlip(RandomTransform):
    """Mirror the image left-right with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def sample_params(self, img: ImageLike | None = None) -> bool:
        """Draw whether to flip; ``img`` is unused and accepted for a uniform signature."""
        return bool(torch.rand(1).item() < self.p)

    def apply(self, img: ImageLike, params: bool) -> ImageLike:
        """Flip ``img`` if ``params`` is true."""
        if not params:
            return img
        if isinstance(img, Image.Image):
            return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return img.flip(-1)


class RandomResizedCrop(RandomTransform):
    """Crop a random area and aspect ratio, then resize bilinearly to ``size``.

    Follows torchvision's sampling: up to 10 draws of an area fraction (uniform in ``scale``)
    and an aspect ratio (log-uniform in ``ratio``); if none fits, a centre crop of the whole
    image clamped to the ratio range.
    """

    def __init__(
        self,
        size: int | Sequence[int],
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
    ) -> None:
        if scale[0] > scale[1] or ratio[0] > ratio[1]:
            raise ValueError(f"scale and ratio must be (min, max), got {scale} and {ratio}")
        self.size = _pair(size)
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))

    def sample_params(self, img: ImageLike) -> Box:
        """Draw the crop box ``(top, left, height, width)`` in ``img``."""
        height, width = _hw(img)
        area = height * width
        log_lo, log_hi = torch.log(torch.tensor(self.ratio)).tolist()
        for _ in range(10):
            target_area = area * torch.empty(1).uniform_(*self.scale).item()
            aspect = torch.exp(torch.empty(1).uniform_(log_lo, log_hi)).item()  # float32
            w = round(math.sqrt(target_area * aspect))
            h = round(math.sqrt(target_area / aspect))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, size=(1,)).item())
                left = int(torch.randint(0, width - w + 1, size=(1,)).item())
                return top, left, h, w
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w, h = width, round(width / self.ratio[0])
        elif in_ratio > self.ratio[1]:
            w, h = round(height * self.ratio[1]), height
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def apply(self, img: ImageLike, params: Box) -> ImageLike:
        """Crop the box ``params`` and resize it to ``size``."""
        return _resize(_crop(img, *params), *self.size)


class Resize(_Transform):
    """Bilinear resize; an int ``size`` sets the shorter side and keeps the aspect ratio.

    As in torchvision, the longer side becomes ``int(size * long / short)``.
    A ``(height, width)`` pair resizes to exactly that.
    """

    def __init__(self, size: int | Sequence[int]) -> None:
        self.size = size if isinstance(size, int) else _pair(size)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """The ``(height, width)`` an image of the given size is resized to."""
        if not isinstance(self.size, int):
            return self.size
        short, long = sorted((height, width))
        new_long = int(self.size * long / short)
        return (self.size, new_long) if height <= width else (new_long, self.size)

    def __call__(self, img: ImageLike) -> ImageLike:
        h, w = _hw(img)
        out = self.output_size(h, w)
        return img if out == (h, w) else _resize(img, *out)


class CenterCrop(_Transform):
    """Crop the centre ``size``; an image smaller than that is first zero-padded around."""

    def __init__(self, size: int | Sequence[int]) -> None:
        self.size = _pair(size)

    def __call__(self, img: ImageLike) -> ImageLike:
        h, w = _hw(img)
        th, tw = self.size
        if th > h or tw > w:
            dh, dw = max(th - h, 0), max(tw - w, 0)
            img = _pad(img, (dw // 2, dh // 2, (dw + 1) // 2, (dh + 1) // 2))
            h, w = _hw(img)
        return _crop(img, round((h - th) / 2.0), round((w - tw) / 2.0), th, tw)


class ToTensor(_Transform):
    """PIL image or HWC/HW numpy array -> CHW float tensor; uint8 values are scaled to [0, 1]."""

    def __call__(self, pic: Image.Image | np.ndarray) -> torch.Tensor:
        if isinstance(pic, Image.Image):
            arr = np.array(pic, copy=True)  # mode "1" gives bools, i.e. 0/1
        elif isinstance(pic, np.ndarray):
            arr = pic
        else:
            raise TypeError(f"ToTensor expects a PIL image or numpy array, got {type(pic)}")
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if arr.ndim != 3:
            raise ValueError(f"ToTensor expects an HW or HWC image, got shape {arr.shape}")
        tensor = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
        if tensor.dtype == torch.uint8:
            return tensor.float().div_(255.0)
        return tensor.float()


class Normalize(_Transform):
    """``(x - mean) / std`` per channel of a ``(C, H, W)`` or ``(N, C, H, W)`` float tensor."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        if len(mean) != len(std) or any(s == 0 for s in std):
            raise ValueError(f"mean and std must have equal length and std no zeros: {mean}, {std}")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        if not tensor.is_floating_point():
            raise TypeError(f"Normalize expects a float tensor, got {tensor.dtype}")
        mean = torch.tensor(self.mean, dtype=tensor.dtype, device=tensor.device)[:, None, None]
        std = torch.tensor(self.std, dtype=tensor.dtype, device=tensor.device)[:, None, None]
        return (tensor - mean) / std
