"""The 15 ImageNet-C / COCO-C corruptions at 5 severities, in numpy, scipy and Pillow.

Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
Perturbations" (ICLR 2019), with the severity constants of their ``imagecorruptions``
package (Michaelis et al., "Benchmarking Robustness in Object Detection", 2019), which
applies them to images of any size. Every function maps an ``(H, W, 3)`` uint8 image, a
severity in 1..5 and a ``numpy`` generator to a new ``(H, W, 3)`` uint8 image; all
randomness comes from the generator, so a seed gives the same picture every time.

Two differ from the originals on purpose, to need no system library or data file:

* ``motion_blur``: the original calls ImageMagick (Wand); here a one-sided line kernel
  with Gaussian weights along the motion direction, the kernel ``imagecorruptions`` builds
  from shifted copies (same radius, sigma and angle range).
* ``frost``: the original blends one of six frost photographs; here a procedural texture
  (fractal noise plus random ice needles, bluish white) is blended with the same weights.
  Frost numbers are therefore not comparable to published ImageNet-C / COCO-C frost results.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from kdforge.errors import ConfigError

__all__ = ["CORRUPTIONS", "SEVERITIES", "check_corruptions", "corrupt"]

SEVERITIES = (1, 2, 3, 4, 5)

Corruption = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]


def _float(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float32) / 255.0


def _uint8(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)  # truncates, as imagecorruptions


def _blur(x: np.ndarray, sigma: float, mode: str = "nearest", truncate: float = 4.0):
    """Gaussian blur over the spatial axes of ``(H, W[, C])`` (skimage's ``gaussian``)."""
    sigmas = (sigma, sigma, 0.0)[: x.ndim]
    return ndimage.gaussian_filter(x, sigmas, mode=mode, truncate=truncate)


def _clipped_zoom(x: np.ndarray, factor: float) -> np.ndarray:
    """Zoom into the centre of ``(H, W, C)`` by ``factor`` and keep the ``(H, W)`` middle."""
    height, width = x.shape[:2]
    ch, cw = math.ceil(height / factor), math.ceil(width / factor)
    top, left = (height - ch) // 2, (width - cw) // 2
    zoomed = ndimage.zoom(x[top : top + ch, left : left + cw], (factor, factor, 1), order=1)
    dy, dx = max(zoomed.shape[0] - height, 0) // 2, max(zoomed.shape[1] - width, 0) // 2
    zoomed = zoomed[dy : dy + height, dx : dx + width]
    pad = ((0, height - zoomed.shape[0]), (0, width - zoomed.shape[1]), (0, 0))
    return np.pad(zoomed, pad, mode="edge")


def _power_of_two(n: int) -> int:
    """The smallest power of two >= ``n`` (at least 2)."""
    return max(2, 1 << (n - 1).bit_length())


def _plasma(size: int, decay: float, rng: np.random.Generator) -> np.ndarray:
    """``(size, size)`` diamond-square fractal noise in [0, 1]; ``size`` a power of two."""
    grid = np.zeros((size, size))
    step, wibble = size, 100.0
    while step >= 2:
        half = step // 2
        corners = grid[0:size:step, 0:size:step]
        square = corners + np.roll(corners, -1, axis=0)
        square = square + np.roll(square, -1, axis=1)
        grid[half::step, half::step] = square / 4 + wibble * rng.uniform(
            -wibble, wibble, square.shape
        )
        centres = grid[half::step, half::step]
        corners = grid[0:size:step, 0:size:step]
        top = centres + np.roll(centres, 1, axis=0) + corners + np.roll(corners, -1, axis=1)
        grid[0:size:step, half::step] = top / 4 + wibble * rng.uniform(-wibble, wibble, top.shape)
        side = centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=0)
        grid[half::step, 0:size:step] = side / 4 + wibble * rng.uniform(-wibble, wibble, side.shape)
        step, wibble = half, wibble / decay
    grid -= grid.min()
    return grid / max(grid.max(), 1e-12)


def _motion(x: np.ndarray, radius: int, sigma: float, angle: float) -> np.ndarray:
    """Blur ``(H, W[, C])`` with a one-sided line kernel along ``angle`` (degrees).

    The kernel has ``2 * radius + 1`` taps, ``exp(-i²/2σ²)``-weighted, at ``i`` pixels along
    the line; edges are replicated, and taps that would leave the image are dropped without
    renormalising (as ``imagecorruptions`` does: images smaller than the blur darken).
    """
    height, width = x.shape[:2]
    length = 2 * radius + 1
    weights = np.exp(-(np.arange(length) ** 2) / (2 * sigma**2))
    weights /= weights.sum()
    sin, cos = math.sin(math.radians(angle)), math.cos(math.radians(angle))
    pad = ((length, length), (length, length)) + ((0, 0),) * (x.ndim - 2)
    padded = np.pad(x, pad, mode="edge")
    out = np.zeros_like(x)
    for i, w in enumerate(weights):
        dy, dx = -math.ceil(i * sin - 0.5), -math.ceil(i * cos - 0.5)
        if abs(dy) >= height or abs(dx) >= width:
            break
        top, left = length - dy, length - dx  # out(p) += w * x(p - d)
        out += w * padded[top : top + height, left : left + width]
    return out


def _grey(x: np.ndarray) -> np.ndarray:
    return x @ np.array([0.299, 0.587, 0.114], dtype=x.dtype)  # ITU-R 601 luma (OpenCV)


# -- the corruptions ----------------------------------------------------------------------


def gaussian_noise(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = (0.08, 0.12, 0.18, 0.26, 0.38)[severity - 1]
    x = _float(image)
    return _uint8(x + rng.normal(scale=c, size=x.shape))


def shot_noise(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = (60, 25, 12, 5, 3)[severity - 1]
    return _uint8(rng.poisson(_float(image) * c) / c)


def impulse_noise(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Salt and pepper on a fraction ``c`` of the values, half each (skimage ``s&p``)."""
    c = (0.03, 0.06, 0.09, 0.17, 0.27)[severity - 1]
    x = _float(image)
    hit, salt = rng.random(x.shape) < c, rng.random(x.shape) < 0.5
    x[hit & salt], x[hit & ~salt] = 1.0, 0.0
    return _uint8(x)


def defocus_blur(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Convolution with an anti-aliased disk of the given radius."""
    radius, alias = ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5))[severity - 1]
    span = np.arange(-8, 9) if radius <= 8 else np.arange(-radius, radius + 1)
    yy, xx = np.meshgrid(span, span, indexing="ij")
    disk = (yy**2 + xx**2 <= radius**2).astype(np.float64)
    disk /= disk.sum()
    taps = np.arange(-1, 2) if radius <= 8 else np.arange(-2, 3)  # OpenCV's 3x3 / 5x5 blur
    gauss = np.exp(-(taps**2) / (2 * alias**2))
    gauss /= gauss.sum()
    disk = ndimage.convolve1d(
        ndimage.convolve1d(disk, gauss, 0, mode="mirror"), gauss, 1, mode="mirror"
    )
    x = _float(image)
    out = np.stack([ndimage.correlate(x[..., c], disk, mode="mirror") for c in range(3)], -1)
    return _uint8(out)


def glass_blur(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Blur, swap each pixel with a random neighbour (sequentially, bottom-right first), blur."""
    sigma, delta, iterations = ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2))[
        severity - 1
    ]
    height, width = image.shape[:2]
    x = _uint8(_blur(_float(image), sigma))
    order = list(range(height * width))  # a permutation of the flat pixel indices
    rows, cols = range(height - delta, delta, -1), range(width - delta, delta, -1)
    for _ in range(iterations):
        offsets = rng.integers(-delta, delta, size=(len(rows) * len(cols), 2)).tolist()
        k = 0
        for h in rows:
            for w in cols:
                dx, dy = offsets[k]
                k += 1
                i, j = h * width + w, (h + dy) * width + (w + dx)
                order[i], order[j] = order[j], order[i]
    shuffled = x.reshape(height * width, -1)[order].reshape(x.shape)
    return _uint8(_blur(_float(shuffled), sigma))


def motion_blur(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    radius, sigma = ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15))[severity - 1]
    return _uint8(_motion(_float(image), radius, sigma, rng.uniform(-45, 45)))


def zoom_blur(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """The mean of the image and its centre zoomed by each factor of the severity."""
    stop, step = ((1.11, 0.01), (1.16, 0.01), (1.21, 0.02), (1.26, 0.02), (1.31, 0.03))[
        severity - 1
    ]
    factors = np.arange(1, stop, step)
    x = _float(image)
    out = x + sum(_clipped_zoom(x, f) for f in factors)
    return _uint8(out / (len(factors) + 1))


def snow(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    loc, scale, zoom, threshold, radius, sigma, keep = (
        (0.1, 0.3, 3, 0.5, 10, 4, 0.8),
        (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
        (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
        (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
        (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55),
    )[severity - 1]
    x = _float(image)
    flakes = rng.normal(loc, scale, size=x.shape[:2])
    flakes = _clipped_zoom(flakes[..., None], zoom)[..., 0]
    flakes = np.clip(np.where(flakes < threshold, 0.0, flakes), 0.0, 1.0)
    flakes = _motion(flakes, radius, sigma, rng.uniform(-135, -45))
    flakes = (np.round(np.clip(flakes, 0, 1) * 255) / 255.0)[..., None]
    x = keep * x + (1 - keep) * np.maximum(x, _grey(x)[..., None] * 1.5 + 0.5)
    return _uint8(x + flakes + np.rot90(flakes, k=2))


def frost_texture(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A procedural ``(H, W, 3)`` float frost texture in [0, 1]: fractal haze plus ice needles.

    Stands in for the frost photographs of ImageNet-C: needles grow from random seeds in
    several directions and branch once, over a whitish haze (the fog fractal, squared).
    """
    haze = _plasma(_power_of_two(max(height, width)), 2.0, rng)[:height, :width] ** 2
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    side = min(height, width)
    for _ in range(max(4, height * width // 300)):
        y0, x0 = rng.uniform(0, height), rng.uniform(0, width)
        for angle in rng.uniform(0, 2 * math.pi, size=int(rng.integers(3, 7))):
            length = side * rng.uniform(0.03, 0.15)
            y1, x1 = y0 + length * math.sin(angle), x0 + length * math.cos(angle)
            shade = int(rng.integers(120, 256))
            draw.line([(x0, y0), (x1, y1)], fill=shade, width=1)
            for sign in (-1, 1):  # one pair of side branches half way along
                ym, xm = (y0 + y1) / 2, (x0 + x1) / 2
                twig = angle + sign * math.pi / 4
                end = (xm + 0.4 * length * math.cos(twig), ym + 0.4 * length * math.sin(twig))
                draw.line([(xm, ym), end], fill=shade // 2, width=1)
    needles = _blur(np.asarray(canvas, dtype=np.float32) / 255.0, 0.6)
    ice = np.clip(0.3 + 0.35 * haze + 0.7 * needles, 0.0, 1.0)[..., None]
    return ice * np.array([0.82, 0.9, 1.0], dtype=np.float32)  # bluish white


def frost(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    keep, add = ((1.0, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75))[severity - 1]
    texture = frost_texture(*image.shape[:2], rng)
    return _uint8(keep * _float(image) + add * texture)


def fog(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    amount, decay = ((1.5, 2.0), (2.0, 2.0), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4))[severity - 1]
    height, width = image.shape[:2]
    x = _float(image)
    top = x.max()
    x = x + amount * _plasma(_power_of_two(max(height, width)), decay, rng)[:height, :width, None]
    return _uint8(x * top / (top + amount))


def brightness(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """HSV value ``V + c``: in RGB a per-pixel scaling by ``V' / V`` (grey where ``V = 0``)."""
    c = (0.1, 0.2, 0.3, 0.4, 0.5)[severity - 1]
    x = _float(image)
    value = x.max(axis=2, keepdims=True)
    lifted = np.clip(value + c, 0.0, 1.0)
    out = np.where(value > 0, x * lifted / np.maximum(value, 1e-12), lifted)
    return _uint8(out)


def contrast(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = (0.4, 0.3, 0.2, 0.1, 0.05)[severity - 1]
    x = _float(image)
    means = x.mean(axis=(0, 1), keepdims=True)
    return _uint8((x - means) * c + means)


def elastic_transform(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Smoothed random displacement fields, scaled to the image (``imagecorruptions``)."""
    alpha = 250 * (0.05, 0.065, 0.085, 0.1, 0.12)[severity - 1]
    height, width = image.shape[:2]
    sigma = (height * 0.01, width * 0.01)
    most = height * 0.005
    dx, dy = (
        ndimage.gaussian_filter(
            rng.uniform(-most, most, size=(height, width)), sigma, mode="reflect", truncate=3
        )
        * alpha
        for _ in range(2)
    )
    yy, xx = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    coords = np.stack([yy + dy, xx + dx])
    x = _float(image)
    out = np.stack(
        [ndimage.map_coordinates(x[..., c], coords, order=1, mode="reflect") for c in range(3)],
        -1,
    )
    return _uint8(out)


def pixelate(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = (0.6, 0.5, 0.4, 0.3, 0.25)[severity - 1]
    height, width = image.shape[:2]
    small = Image.fromarray(image).resize(
        (max(int(width * c), 1), max(int(height * c), 1)), Image.Resampling.BOX
    )
    return np.asarray(small.resize((width, height), Image.Resampling.NEAREST))


def jpeg_compression(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    quality = (25, 18, 15, 10, 7)[severity - 1]
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=quality)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"))


CORRUPTIONS: dict[str, Corruption] = {
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "impulse_noise": impulse_noise,
    "defocus_blur": defocus_blur,
    "glass_blur": glass_blur,
    "motion_blur": motion_blur,
    "zoom_blur": zoom_blur,
    "snow": snow,
    "frost": frost,
    "fog": fog,
    "brightness": brightness,
    "contrast": contrast,
    "elastic_transform": elastic_transform,
    "pixelate": pixelate,
    "jpeg_compression": jpeg_compression,
}


def check_corruptions(names: list[str], severities: list[int]) -> None:
    """Raise ``ConfigError`` naming the valid values for an unknown corruption or severity."""
    unknown = [n for n in names if n not in CORRUPTIONS]
    if unknown:
        raise ConfigError(f"unknown corruption(s) {unknown}; valid: {', '.join(CORRUPTIONS)}")
    bad = [s for s in severities if s not in SEVERITIES]
    if bad:
        raise ConfigError(f"severities must be in {list(SEVERITIES)}, got {bad}")


def corrupt(
    image: np.ndarray, name: str, severity: int, rng: np.random.Generator | int = 0
) -> np.ndarray:
    """Apply corruption ``name`` at ``severity`` (1..5) to an ``(H, W, 3)`` uint8 image.

    Args:
        image: the picture, RGB uint8.
        name: a key of ``CORRUPTIONS``.
        severity: 1 (mild) to 5 (strong).
        rng: a ``numpy`` generator, or a seed for one.

    Returns:
        A new ``(H, W, 3)`` uint8 image.
    """
    check_corruptions([name], [severity])
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.dtype} {image.shape}")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    out = CORRUPTIONS[name](np.ascontiguousarray(image), severity, rng)
    return np.array(out, dtype=np.uint8)  # a writable copy
