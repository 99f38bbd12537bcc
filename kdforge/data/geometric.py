"""Resizing and flipping as mmcv does (``mmcv/image/geometric.py``), with OpenCV.

The detection and segmentation pipelines work on numpy arrays: images ``(H, W, 3)`` uint8
RGB, masks ``(H, W)`` integer class ids. Images are resized with ``cv2.resize(...,
INTER_LINEAR)``: bilinear with half-pixel centres and no antialiasing, also when shrinking
(Pillow's bilinear filter widens its support and so averages more pixels when it shrinks).
Masks use ``INTER_NEAREST``, which takes source pixel ``floor(x · in / out)`` (Pillow's
nearest takes ``floor((x + 0.5) · in / out)``). Classification keeps Pillow, as torchvision
does (``kdforge.data.transforms``).
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from PIL import Image

__all__ = ["INTERPOLATIONS", "as_array", "hflip", "imrescale", "imresize", "rescale_size"]

INTERPOLATIONS = {"bilinear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST}


def rescale_size(width: int, height: int, scale: tuple[int, int]) -> tuple[int, int]:
    """mmcv's keep-ratio rule: the largest size with long side <= max(scale), short <= min(scale).

    The factor is ``min(max(scale) / long side, min(scale) / short side)``.

    Returns:
        ``(new_width, new_height)``, each ``int(side * factor + 0.5)``.
    """
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(width * factor + 0.5), int(height * factor + 0.5)


def as_array(image: Any) -> np.ndarray:
    """A numpy view of ``image``: a PIL image becomes ``(H, W, 3)`` RGB (or ``(H, W)`` for
    a mask mode: ``L``, ``P``, ``I``); an array is returned as it is."""
    if isinstance(image, Image.Image):
        if image.mode not in ("RGB", "L", "P", "I", "1"):
            image = image.convert("RGB")
        return np.asarray(image, dtype=np.uint8 if image.mode == "1" else None)
    return np.asarray(image)


def imresize(
    image: np.ndarray, size: tuple[int, int], interpolation: str = "bilinear"
) -> np.ndarray:
    """``cv2.resize(image, size = (width, height))`` with mmcv's ``interpolation`` names."""
    if interpolation not in INTERPOLATIONS:
        raise ValueError(
            f"interpolation must be one of {list(INTERPOLATIONS)}, got {interpolation!r}"
        )
    array = np.ascontiguousarray(image)
    return cv2.resize(array, size, interpolation=INTERPOLATIONS[interpolation])


def imrescale(
    image: np.ndarray, scale: tuple[int, int], interpolation: str = "bilinear"
) -> np.ndarray:
    """Keep-ratio resize to fit ``scale`` (:func:`rescale_size`), as ``mmcv.imrescale``."""
    height, width = image.shape[:2]
    return imresize(image, rescale_size(width, height, scale), interpolation)


def hflip(image: np.ndarray) -> np.ndarray:
    """Mirror left-right (``mmcv.imflip``), as a contiguous copy."""
    return np.ascontiguousarray(image[:, ::-1])
