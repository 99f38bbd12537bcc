"""Detection transforms on ``(image, target)`` pairs, with mmdetection's box arithmetic.

Each transform is called as ``t(image, target) -> (image, target)``; ``image`` is an
``(H, W, 3)`` uint8 RGB array (as ``CocoDetection`` decodes it; a PIL image is accepted and
converted) and ``target`` the dict of ``CocoDetection``. As in ``kdforge.data.transforms``,
randomness comes only from torch's global RNG and random transforms split into
``sample_params(image)`` and ``apply(image, target, params)``. Resizing is mmcv's: OpenCV
bilinear without antialiasing (:mod:`kdforge.data.geometric`). Instance masks
(``target["masks"]``, ``(M, H, W)`` uint8, :mod:`kdforge.data.instance_masks`) follow the
image as mmdetection's ``BitmapMasks`` do: resized with OpenCV nearest, flipped, and padded
with 0 to the batch's size by ``collate_detection`` (its ``pad_mask=True``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from kdforge.data.geometric import as_array, hflip, imresize, rescale_size

__all__ = [
    "CAFFE_MEAN",
    "DETECTION_MEAN",
    "DETECTION_STD",
    "DetCompose",
    "DetNormalize",
    "DetRandomFlip",
    "DetRandomResize",
    "DetResize",
    "collate_detection",
    "rescale_boxes",
    "rescale_size",
]

DETECTION_MEAN = (123.675, 116.28, 103.53)  # ImageNet, RGB, 0-255 (mmdetection's img_norm_cfg)
DETECTION_STD = (58.395, 57.12, 57.375)
CAFFE_MEAN = (102.9801, 115.9465, 122.7717)  # BGR, 0-255, std 1 (Detectron's caffe ResNets)

Target = dict[str, Any]
Scale = tuple[int, int]


def _hflip(boxes: torch.Tensor, width: int) -> torch.Tensor:
    """Mirror ``(M, 4)`` xyxy boxes in an image ``width`` wide: ``(w - x2, y1, w - x1, y2)``."""
    return torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], 1)


def _resize_masks(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(M, H, W)`` masks -> ``(M, h, w)`` for ``size = (w, h)``, OpenCV nearest."""
    width, height = size
    resized = [imresize(m.numpy(), size, "nearest") for m in masks]
    return torch.from_numpy(np.stack(resized)) if resized else masks.new_zeros(0, height, width)


def _pad_masks(masks: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``(M, h, w)`` masks padded with 0 at the bottom and right to ``(M, height, width)``."""
    return F.pad(masks, (0, width - masks.shape[-1], 0, height - masks.shape[-2]))


class DetCompose:
    """Apply ``(image, target)`` transforms one after the other."""

    def __init__(self, transforms: Sequence[Callable[[Any, Target], tuple[Any, Target]]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: Any, target: Target) -> tuple[Any, Target]:
        for t in self.transforms:
            image, target = t(image, target)
        return image, target

    def __repr__(self) -> str:
        return f"DetCompose({self.transforms!r})"


class DetResize:
    """Keep-ratio resize to fit ``scale`` (mmdetection ``Resize(scale, keep_ratio=True)``).

    Boxes are multiplied by ``(w_scale, h_scale)`` and clipped to the new image, masks
    resized to it with OpenCV nearest (``BitmapMasks.rescale``);
    ``target["scale_factor"]`` accumulates the factors relative to the original image.
    """

    def __init__(self, scale: Scale = (1333, 800)) -> None:
        self.scale = (int(scale[0]), int(scale[1]))

    def apply(self, image: Any, target: Target, scale: Scale) -> tuple[np.ndarray, Target]:
        """Resize ``image`` (bilinear, ``cv2.resize``) and its boxes to fit ``scale``."""
        image = as_array(image)
        height, width = image.shape[:2]
        new_w, new_h = rescale_size(width, height, scale)
        w_scale, h_scale = new_w / width, new_h / height
        factor = torch.tensor([w_scale, h_scale, w_scale, h_scale])
        target = dict(target)
        for key in ("boxes", "ignore_boxes"):
            boxes = target[key] * factor  # (M, 4)
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, new_w)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, new_h)
            target[key] = boxes
        if "masks" in target:
            target["masks"] = _resize_masks(target["masks"], (new_w, new_h))
        old_w, old_h = target["scale_factor"]
        target.update(img_shape=(new_h, new_w), scale_factor=(old_w * w_scale, old_h * h_scale))
        return imresize(image, (new_w, new_h), "bilinear"), target

    def __call__(self, image: Any, target: Target) -> tuple[np.ndarray, Target]:
        return self.apply(image, target, self.scale)

    def __repr__(self) -> str:
        return f"DetResize(scale={self.scale})"


class DetRandomResize(DetResize):
    """Multi-scale keep-ratio resize with a scale drawn per image.

    ``mode="range"`` (mmdetection's ``multiscale_mode='range'``, ``RandomResize``) draws the long
    and the short edge uniformly between the extremes of ``scales``: ``[(1333, 640), (1333,
    800)]`` gives a shorter side in 640..800 with the longer at most 1333. ``mode="value"``
    (``RandomChoiceResize``) picks one of ``scales``.
    """

    def __init__(self, scales: Sequence[Scale], mode: str = "range") -> None:
        if mode not in ("range", "value") or not scales or (mode == "range" and len(scales) != 2):
            raise ValueError(
                f"mode must be 'range' (with 2 scales) or 'value' (1 or more); "
                f"got {mode!r} and {scales!r}"
            )
        self.scales = [(int(s[0]), int(s[1])) for s in scales]
        self.mode = mode

    def sample_params(self, image: Any = None) -> Scale:
        """Draw the ``(long, short)`` scale; ``image`` is unused (a uniform signature)."""
        if self.mode == "value":
            return self.scales[int(torch.randint(len(self.scales), (1,)).item())]
        longs, shorts = [max(s) for s in self.scales], [min(s) for s in self.scales]
        long = int(torch.randint(min(longs), max(longs) + 1, (1,)).item())
        short = int(torch.randint(min(shorts), max(shorts) + 1, (1,)).item())
        return long, short

    def __call__(self, image: Any, target: Target) -> tuple[np.ndarray, Target]:
        return self.apply(image, target, self.sample_params(image))

    def __repr__(self) -> str:
        return f"DetRandomResize(scales={self.scales}, mode={self.mode!r})"


class DetRandomFlip:
    """Horizontal flip with probability ``p``; boxes become ``(w - x2, y1, w - x1, y2)``,
    masks are mirrored."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def sample_params(self, image: Any = None) -> bool:
        """Draw whether to flip; ``image`` is unused (a uniform signature)."""
        return bool(torch.rand(1).item() < self.p)

    def apply(self, image: Any, target: Target, flip: bool) -> tuple[Any, Target]:
        """Mirror ``image`` and its boxes if ``flip``."""
        if not flip:
            return image, target
        image = as_array(image)
        target = dict(target, flip=not target["flip"])
        for key in ("boxes", "ignore_boxes"):
            target[key] = _hflip(target[key], image.shape[1])
        if "masks" in target:
            target["masks"] = target["masks"].flip(-1)  # (M, H, W)
        return hflip(image), target

    def __call__(self, image: Any, target: Target) -> tuple[Any, Target]:
        return self.apply(image, target, self.sample_params(image))

    def __repr__(self) -> str:
        return f"DetRandomFlip(p={self.p})"


class DetNormalize:
    """RGB image -> ``(3, H, W)`` float tensor ``(pixel - mean) / std`` in 0-255 units.

    Images arrive RGB (``decode_image_cv`` turns OpenCV's BGR around), so this equals
    mmdetection's ``bgr_to_rgb=True`` normalisation of its BGR loads; ``to_bgr=True`` reverses
    the channels first (``bgr_to_rgb=False``, the caffe-style backbones:
    ``DetNormalize(CAFFE_MEAN, (1, 1, 1), to_bgr=True)``).
    """

    def __init__(
        self,
        mean: Sequence[float] = DETECTION_MEAN,
        std: Sequence[float] = DETECTION_STD,
        to_bgr: bool = False,
    ) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(std, dtype=torch.float32)[:, None, None]
        self.to_bgr = to_bgr

    def __call__(self, image: Any, target: Target) -> tuple[torch.Tensor, Target]:
        array = as_array(image).astype(np.float32)  # (H, W, 3)
        if array.ndim == 2:  # grey: replicated, as OpenCV's IMREAD_COLOR does
            array = np.repeat(array[:, :, None], 3, axis=2)
        tensor = torch.from_numpy(array).permute(2, 0, 1)  # (3, H, W)
        if self.to_bgr:
            tensor = tensor.flip(0)
        return (tensor - self.mean) / self.std, target

    def __repr__(self) -> str:
        return (
            f"DetNormalize(mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"
            f"{', to_bgr=True' if self.to_bgr else ''})"
        )


def collate_detection(
    batch: Sequence[tuple[torch.Tensor, Target]], size_divisor: int = 32, pad_value: float = 0.0
) -> tuple[torch.Tensor, list[Target]]:
    """Stack ``(image, target)`` items into ``(images (N, 3, H, W), [target, ...])``.

    Images are padded at the bottom and right with ``pad_value`` to the largest height and
    width in the batch, rounded up to a multiple of ``size_divisor`` (mmdetection's
    ``pad_size_divisor``: 32 for most detectors, 1 for the DETR family); the targets'
    ``masks`` likewise with 0. New target dicts (the items' are not changed) carry
    ``pad_shape``: the image's own ``(H, W)`` rounded up to ``size_divisor``, as mmdetection's
    data preprocessor records it (the region whose priors the dense heads may assign).
    """
    height = _round_up(max(img.shape[-2] for img, _ in batch), size_divisor)
    width = _round_up(max(img.shape[-1] for img, _ in batch), size_divisor)
    images = torch.stack(
        [
            F.pad(img, (0, width - img.shape[-1], 0, height - img.shape[-2]), value=pad_value)
            for img, _ in batch
        ]
    )
    targets = []
    for img, target in batch:
        pad_shape = (_round_up(img.shape[-2], size_divisor), _round_up(img.shape[-1], size_divisor))
        target = dict(target, pad_shape=pad_shape)
        if "masks" in target:
            target["masks"] = _pad_masks(target["masks"], height, width)
        targets.append(target)
    return images, targets


def _round_up(size: int, divisor: int) -> int:
    return math.ceil(size / divisor) * divisor


def rescale_boxes(boxes: torch.Tensor, target: Target) -> torch.Tensor:
    """Map ``(M, 4)`` xyxy boxes on the transformed image back to the original image's pixels.

    Undoes a flip, then divides by ``scale_factor`` (mmdetection's ``rescale=True``).
    """
    if target["flip"]:
        boxes = _hflip(boxes, target["img_shape"][1])
    w_scale, h_scale = target["scale_factor"]
    return boxes / boxes.new_tensor([w_scale, h_scale, w_scale, h_scale])
