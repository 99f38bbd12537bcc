"""TrivialAugment Wide (Müller & Hutter, ICCV 2021) on Pillow, drawing as torchvision does.

Müller and Hutter, "TrivialAugment: Tuning-free Yet State-of-the-Art Data Augmentation",
ICCV 2021. One op drawn uniformly from 14, with a magnitude drawn uniformly from 31 bins
(and a random sign for the signed ops). The op list, bins, RNG calls (torch's global RNG, in
the same order) and Pillow calls follow ``torchvision.transforms.TrivialAugmentWide``, so a
seed gives the same augmentation. CAKD's released recipe uses it (``--auto-augment
ta_wide``) with bilinear interpolation.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps

from kdforge.data.transforms import RandomTransform

__all__ = ["TRIVIAL_AUGMENT_OPS", "TrivialAugmentWide", "apply_op"]

# In torchvision's order: the op index drawn selects from this tuple.
TRIVIAL_AUGMENT_OPS: tuple[str, ...] = (
    "Identity",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
    "Brightness",
    "Color",
    "Contrast",
    "Sharpness",
    "Posterize",
    "Solarize",
    "AutoContrast",
    "Equalize",
)
_INTERPOLATION = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR}
_ENHANCE = {
    "Brightness": ImageEnhance.Brightness,
    "Color": ImageEnhance.Color,  # torchvision's adjust_saturation
    "Contrast": ImageEnhance.Contrast,
    "Sharpness": ImageEnhance.Sharpness,
}


def _magnitude_space(num_bins: int) -> dict[str, tuple[torch.Tensor | None, bool]]:
    lin = torch.linspace
    return {
        "Identity": (None, False),
        "ShearX": (lin(0.0, 0.99, num_bins), True),
        "ShearY": (lin(0.0, 0.99, num_bins), True),
        "TranslateX": (lin(0.0, 32.0, num_bins), True),
        "TranslateY": (lin(0.0, 32.0, num_bins), True),
        "Rotate": (lin(0.0, 135.0, num_bins), True),
        "Brightness": (lin(0.0, 0.99, num_bins), True),
        "Color": (lin(0.0, 0.99, num_bins), True),
        "Contrast": (lin(0.0, 0.99, num_bins), True),
        "Sharpness": (lin(0.0, 0.99, num_bins), True),
        "Posterize": (8 - (torch.arange(num_bins) / ((num_bins - 1) / 6)).round().int(), False),
        "Solarize": (lin(255.0, 0.0, num_bins), False),
        "AutoContrast": (None, False),
        "Equalize": (None, False),
    }


def _inverse_affine(shear_x: float, shear_y: float, translate: tuple[int, int], center) -> list:
    """torchvision's ``_get_inverse_affine_matrix`` at angle 0 and scale 1 (degrees, pixels)."""
    sx, sy = math.radians(shear_x), math.radians(shear_y)
    (cx, cy), (tx, ty) = center, translate
    a = math.cos(-sy) / math.cos(sy)
    b = -math.cos(-sy) * math.tan(sx) / math.cos(sy) - math.sin(0.0)
    c = math.sin(-sy) / math.cos(sy)
    d = -math.sin(-sy) * math.tan(sx) / math.cos(sy) + math.cos(0.0)
    m = [d, -b, 0.0, -c, a, 0.0]
    m[2] += m[0] * (-cx - tx) + m[1] * (-cy - ty)
    m[5] += m[3] * (-cx - tx) + m[4] * (-cy - ty)
    m[2] += cx
    m[5] += cy
    return m


def _fillcolor(img: Image.Image, fill: int) -> int | tuple[int, ...]:
    bands = len(img.getbands())
    return (fill,) * bands if bands > 1 else fill


def _affine(img: Image.Image, matrix: list, resample: int, fill: int) -> Image.Image:
    """Pillow warp: output ``(x, y)`` reads input ``(a·x + b·y + c, d·x + e·y + f)``."""
    return img.transform(
        img.size, Image.Transform.AFFINE, matrix, resample, fillcolor=_fillcolor(img, fill)
    )


def apply_op(
    img: Image.Image, op: str, magnitude: float, interpolation: str = "nearest", fill: int = 0
) -> Image.Image:
    """Apply one TrivialAugment op to a PIL image, with torchvision's semantics.

    Shears (output ``(x, y)`` reads input ``(x + m·y, y)``, or ``(x, y + m·x)``, about the
    top-left corner), translations (``int(m)`` pixels) and rotations (``m`` degrees
    counter-clockwise about the centre) fill uncovered pixels with ``fill``; the colour ops
    use ``ImageEnhance`` with factor ``1 + m``; Posterize keeps ``int(m)`` bits; Solarize
    inverts pixels ``>= m``.
    """
    resample = _INTERPOLATION[interpolation]
    if op == "Identity":
        return img
    if op in ("ShearX", "ShearY"):
        angle = math.degrees(math.atan(magnitude))  # about the top-left corner
        shear = (angle, 0.0) if op == "ShearX" else (0.0, angle)
        return _affine(img, _inverse_affine(*shear, (0, 0), (0, 0)), resample, fill)
    if op in ("TranslateX", "TranslateY"):
        shift = (int(magnitude), 0) if op == "TranslateX" else (0, int(magnitude))
        centre = (img.width * 0.5, img.height * 0.5)
        return _affine(img, _inverse_affine(0.0, 0.0, shift, centre), resample, fill)
    if op == "Rotate":
        return img.rotate(magnitude, resample, expand=False, fillcolor=_fillcolor(img, fill))
    if op in _ENHANCE:
        return _ENHANCE[op](img).enhance(1.0 + magnitude)
    if op == "Posterize":
        return ImageOps.posterize(img, int(magnitude))
    if op == "Solarize":
        return ImageOps.solarize(img, magnitude)
    if op == "AutoContrast":
        return ImageOps.autocontrast(img)
    if op == "Equalize":
        return ImageOps.equalize(img)
    raise ValueError(f"unknown TrivialAugment op {op!r}; valid: {', '.join(TRIVIAL_AUGMENT_OPS)}")


class TrivialAugmentWide(RandomTransform):
    """One random op of :data:`TRIVIAL_AUGMENT_OPS` at a random magnitude, per image.

    Takes a PIL image (``"L"`` or ``"RGB"``) or a ``uint8`` ``(C, H, W)`` tensor (round-tripped
    through Pillow) and returns the same kind. ``sample_params`` returns ``(op, magnitude)``.

    Args:
        num_magnitude_bins: magnitude bins (31).
        interpolation: ``"nearest"`` (torchvision's default) or ``"bilinear"`` (CAKD recipe),
            for the geometric ops.
        fill: value of pixels uncovered by the geometric ops (0).
    """

    def __init__(
        self, num_magnitude_bins: int = 31, interpolation: str = "nearest", fill: int = 0
    ) -> None:
        if interpolation not in _INTERPOLATION:
            raise ValueError(f"interpolation must be one of {list(_INTERPOLATION)}")
        self.num_magnitude_bins = num_magnitude_bins
        self.interpolation, self.fill = interpolation, fill
        self._space = _magnitude_space(num_magnitude_bins)

    def sample_params(self, img: object = None) -> tuple[str, float]:
        """Draw ``(op, signed magnitude)``; ``img`` is unused (uniform signature)."""
        op = TRIVIAL_AUGMENT_OPS[int(torch.randint(len(TRIVIAL_AUGMENT_OPS), (1,)).item())]
        magnitudes, signed = self._space[op]
        magnitude = 0.0
        if magnitudes is not None:
            magnitude = float(magnitudes[torch.randint(len(magnitudes), (1,))].item())
        if signed and torch.randint(2, (1,)):
            magnitude = -magnitude
        return op, magnitude

    def apply(self, img: Image.Image | torch.Tensor, params: tuple[str, float]):
        """Apply ``params = (op, magnitude)`` to ``img``."""
        if isinstance(img, Image.Image):
            return apply_op(img, *params, self.interpolation, self.fill)
        if not isinstance(img, torch.Tensor) or img.dtype != torch.uint8 or img.ndim != 3:
            raise TypeError("TrivialAugmentWide takes a PIL image or a uint8 (C, H, W) tensor")
        arr = img.permute(1, 2, 0).numpy()
        pil = Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr)
        out = np.asarray(apply_op(pil, *params, self.interpolation, self.fill))
        return torch.from_numpy(out.copy()).reshape(*out.shape[:2], -1).permute(2, 0, 1)
