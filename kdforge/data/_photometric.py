"""mmsegmentation's ``PhotoMetricDistortion`` on 8-bit RGB, with OpenCV's 8-bit HSV conversion."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch

from kdforge.data.geometric import as_array

__all__ = ["DistortionParams", "PhotoMetricDistortion", "hsv_to_rgb_u8", "rgb_to_hsv_u8"]


def rgb_to_hsv_u8(rgb: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB -> uint8 HSV, OpenCV's ``RGB2HSV``: H in 0..179 (degrees / 2),
    S, V 0..255 (mmcv's ``bgr2hsv`` on the same pixels in BGR order)."""
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2HSV)


def hsv_to_rgb_u8(hsv: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_hsv_u8`: OpenCV's 8-bit ``HSV2RGB`` (mmcv's ``hsv2bgr``)."""
    return cv2.cvtColor(np.ascontiguousarray(hsv), cv2.COLOR_HSV2RGB)


def _convert(x: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """``clip(x · alpha + beta, 0, 255)`` truncated to uint8 (mmsegmentation's ``convert``)."""
    return np.clip(x.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class DistortionParams:
    """One draw: each factor is ``None`` when that step is skipped."""

    brightness: float | None  # added to every channel
    contrast_first: bool  # contrast before (True) or after the HSV steps
    contrast: float | None  # multiplies every channel
    saturation: float | None  # multiplies S
    hue: int | None  # added to H (mod 180)


class PhotoMetricDistortion:
    """Random brightness, contrast, saturation and hue, each applied with probability 0.5.

    Order (mmsegmentation): brightness ``+U(-delta, delta)``; a coin decides whether
    contrast ``×U(contrast_range)`` comes second or last; saturation ``×U(range)`` on HSV's
    S; hue ``+randint(-hue_delta, hue_delta)`` (upper end excluded, as numpy's ``randint``)
    on H mod 180. The mask is returned unchanged.
    """

    def __init__(
        self,
        brightness_delta: int = 32,
        contrast_range: tuple[float, float] = (0.5, 1.5),
        saturation_range: tuple[float, float] = (0.5, 1.5),
        hue_delta: int = 18,
    ) -> None:
        self.brightness_delta, self.hue_delta = brightness_delta, hue_delta
        self.contrast_range, self.saturation_range = tuple(contrast_range), tuple(saturation_range)

    @staticmethod
    def _coin() -> bool:
        return bool(torch.randint(2, (1,)).item())

    @staticmethod
    def _uniform(low: float, high: float) -> float:
        return low + float(torch.rand(1).item()) * (high - low)

    def sample_params(self, image: Any = None, mask: Any = None) -> DistortionParams:
        """Draw in mmsegmentation's order; ``image`` and ``mask`` are unused."""
        d = self.brightness_delta
        brightness = self._uniform(-d, d) if self._coin() else None
        contrast_first = self._coin()
        contrast = None
        if contrast_first and self._coin():
            contrast = self._uniform(*self.contrast_range)
        saturation = self._uniform(*self.saturation_range) if self._coin() else None
        hue = None
        if self._coin():
            hue = int(torch.randint(-self.hue_delta, self.hue_delta, (1,)).item())
        if not contrast_first and self._coin():
            contrast = self._uniform(*self.contrast_range)
        return DistortionParams(brightness, contrast_first, contrast, saturation, hue)

    def apply(self, image: Any, mask: Any, params: DistortionParams) -> tuple[np.ndarray, Any]:
        """Distort ``image`` (``(H, W, 3)`` uint8 RGB) with ``params``; ``mask`` passes through."""
        img = as_array(image)
        if params.brightness is not None:
            img = _convert(img, beta=params.brightness)
        if params.contrast_first and params.contrast is not None:
            img = _convert(img, alpha=params.contrast)
        if params.saturation is not None:
            hsv = rgb_to_hsv_u8(img)
            hsv[..., 1] = _convert(hsv[..., 1], alpha=params.saturation)
            img = hsv_to_rgb_u8(hsv)
        if params.hue is not None:
            hsv = rgb_to_hsv_u8(img)
            hsv[..., 0] = (hsv[..., 0].astype(np.int64) + params.hue) % 180
            img = hsv_to_rgb_u8(hsv)
        if not params.contrast_first and params.contrast is not None:
            img = _convert(img, alpha=params.contrast)
        return img, mask

    def __call__(self, image: Any, mask: Any) -> tuple[np.ndarray, Any]:
        return self.apply(image, mask, self.sample_params(image, mask))

    def __repr__(self) -> str:
        return (
            f"PhotoMetricDistortion(brightness_delta={self.brightness_delta}, "
            f"contrast_range={self.contrast_range}, saturation_range={self.saturation_range}, "
            f"hue_delta={self.hue_delta})"
        )
