"""mmsegmentation's ``PhotoMetricDistortion`` on 8-bit RGB, with OpenCV's 8-bit HSV maths."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

__all__ = ["DistortionParams", "PhotoMetricDistortion", "hsv_to_rgb_u8", "rgb_to_hsv_u8"]


def rgb_to_hsv_u8(rgb: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB -> uint8 HSV as OpenCV's: H in 0..179 (degrees / 2), S, V 0..255."""
    x = rgb.astype(np.float64)
    v, vmin = x.max(-1), x.min(-1)
    diff = v - vmin
    s = np.where(v > 0, diff * 255.0 / np.maximum(v, 1.0), 0.0)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    safe = np.maximum(diff, 1e-12)
    h = np.where(
        v == r, (g - b) / safe, np.where(v == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe)
    )
    h = np.where(diff > 0, h * 30.0, 0.0)  # sectors of 60 degrees = 30 units
    h = np.round(h)
    h = np.where(h < 0, h + 180.0, h)
    out = np.stack([h % 180.0, np.round(s), v], -1)
    return out.astype(np.uint8)


def hsv_to_rgb_u8(hsv: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_hsv_u8` (OpenCV's ``HSV2RGB`` on 8 bits), rounded to uint8."""
    h = hsv[..., 0].astype(np.float64) / 30.0  # sector 0..6
    s, v = hsv[..., 1] / 255.0, hsv[..., 2].astype(np.float64)
    sector = np.floor(h).astype(np.int64) % 6
    f = h - np.floor(h)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    table = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    rgb = np.zeros((*hsv.shape[:-1], 3))
    for i, channels in enumerate(table):
        rgb[sector == i] = np.stack(channels, -1)[sector == i]
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


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

    def apply(self, image: Image.Image, mask: Any, params: DistortionParams) -> tuple[Any, Any]:
        """Distort ``image`` (RGB) with ``params``; ``mask`` passes through."""
        img = np.asarray(image.convert("RGB"))
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
        return Image.fromarray(img), mask

    def __call__(self, image: Image.Image, mask: Any) -> tuple[Any, Any]:
        return self.apply(image, mask, self.sample_params(image, mask))

    def __repr__(self) -> str:
        return (
            f"PhotoMetricDistortion(brightness_delta={self.brightness_delta}, "
            f"contrast_range={self.contrast_range}, saturation_range={self.saturation_range}, "
            f"hue_delta={self.hue_delta})"
        )
