"""Resizing as mmcv does: ``rescale_size``'s rounding, OpenCV bilinear with half-pixel
centres and no antialiasing, OpenCV nearest with its ``floor(x · in / out)`` rule, and the
detection and segmentation transforms built on them."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from kdforge.data.det_transforms import DetResize
from kdforge.data.geometric import as_array, hflip, imrescale, imresize, rescale_size
from kdforge.data.seg_transforms import SegRandomResize


def _mmcv_rescale_size(width: int, height: int, scale: tuple[int, int]) -> tuple[int, int]:
    """mmcv.rescale_size as its source reads: factor, then ``_scale_size``'s ``+ 0.5``."""
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(width * float(factor) + 0.5), int(height * float(factor) + 0.5)


@pytest.mark.parametrize(
    ("size", "scale", "expected"),
    [
        ((640, 427), (1333, 800), (1199, 800)),  # the short side binds: 800 / 427
        ((427, 640), (1333, 800), (800, 1199)),  # portrait: the same factor
        ((1000, 200), (1333, 800), (1333, 267)),  # the long side binds; 266.6 -> 267
        ((2048, 1024), (2805, 1402), (2804, 1402)),  # Cityscapes at ratio 1.37: min factor
        ((2048, 1024), (1228, 614), (1228, 614)),  # ratio 0.6: shrinking
        ((500, 375), (1333, 800), (1067, 800)),  # 1066.67 -> 1067
    ],
)
def test_rescale_size_rounds_as_mmcv(size, scale, expected) -> None:
    assert rescale_size(*size, scale) == expected == _mmcv_rescale_size(*size, scale)


def test_rescale_size_on_random_sizes() -> None:
    rng = np.random.default_rng(0)
    for _ in range(2000):
        width, height = (int(v) for v in rng.integers(16, 4000, 2))
        scale = (int(rng.integers(300, 2000)), int(rng.integers(200, 1400)))
        new_w, new_h = rescale_size(width, height, scale)
        assert (new_w, new_h) == _mmcv_rescale_size(width, height, scale)
        assert max(new_w, new_h) <= max(scale) and min(new_w, new_h) <= min(scale)
        assert max(new_w, new_h) >= max(scale) - 1 or min(new_w, new_h) >= min(scale) - 1


def _bilinear(src: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Half-pixel-centre bilinear by hand: ``s = (x + 0.5) · in / out - 0.5``, clamped."""

    def taps(out: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        s = np.clip((np.arange(out) + 0.5) * size / out - 0.5, 0, size - 1)
        lo = np.floor(s).astype(int)
        return lo, np.minimum(lo + 1, size - 1), s - lo

    y0, y1, fy = taps(out_h, src.shape[0])
    x0, x1, fx = taps(out_w, src.shape[1])
    fy, fx = fy[:, None, None], fx[None, :, None]
    top = src[y0][:, x0] * (1 - fx) + src[y0][:, x1] * fx
    bottom = src[y1][:, x0] * (1 - fx) + src[y1][:, x1] * fx
    return top * (1 - fy) + bottom * fy


@pytest.mark.parametrize("out", [(7, 11), (30, 45), (24, 13), (12, 40)])
def test_bilinear_is_opencv_half_pixel_without_antialiasing(out: tuple[int, int]) -> None:
    src = np.random.default_rng(1).integers(0, 256, (24, 36, 3), dtype=np.uint8)
    got = imresize(src, (out[1], out[0]), "bilinear")
    assert np.array_equal(got, cv2.resize(src, (out[1], out[0]), interpolation=cv2.INTER_LINEAR))
    by_hand = _bilinear(src.astype(np.float64), *out)
    assert np.abs(got - by_hand).max() <= 1  # OpenCV's 8-bit path: 11-bit fixed-point weights
    floats = imresize(src.astype(np.float32), (out[1], out[0]), "bilinear")
    np.testing.assert_allclose(floats, by_hand, atol=1e-3)


def test_a_few_bilinear_pixels_by_hand() -> None:
    src = np.array([[0, 100, 200], [60, 160, 250]], dtype=np.float32)[:, :, None]
    out = imresize(src, (5, 3), "bilinear")  # 3 x 2 -> 5 x 3
    # x: s = (x + 0.5) * 3/5 - 0.5 = -0.2, 0.4, 1.0, 1.6, 2.2 -> clamped 0, 0.4, 1, 1.6, 2
    # y: s = (y + 0.5) * 2/3 - 0.5 = -1/6, 0.5, 7/6 -> clamped 0, 0.5, 1
    assert out[0].tolist() == pytest.approx([0, 40, 100, 160, 200], abs=1e-4)
    assert out[1, 1] == pytest.approx(0.5 * 40 + 0.5 * (60 + 0.4 * 100), abs=1e-4)
    assert out[2].tolist() == pytest.approx([60, 100, 160, 214, 250], abs=1e-4)


def test_shrinking_does_not_antialias() -> None:
    src = np.random.default_rng(2).integers(0, 256, (30, 45, 3), dtype=np.uint8)
    small = imresize(src, (15, 10), "bilinear")  # by 3: the centre pixel of each 3 x 3 block
    assert np.array_equal(small, src[1::3, 1::3])
    pillow = np.asarray(Image.fromarray(src).resize((15, 10), Image.Resampling.BILINEAR))
    assert np.abs(pillow.astype(int) - small).mean() > 10  # Pillow averages the block


def test_nearest_is_opencv_floor_rule_on_masks() -> None:
    rng = np.random.default_rng(3)
    for dtype in (np.uint8, np.int32):
        for _ in range(200):
            in_h, in_w = (int(v) for v in rng.integers(1, 50, 2))
            out_h, out_w = (int(v) for v in rng.integers(1, 80, 2))
            mask = rng.integers(0, 19, (in_h, in_w)).astype(dtype)
            got = imresize(mask, (out_w, out_h), "nearest")
            direct = cv2.resize(mask, (out_w, out_h), interpolation=cv2.INTER_NEAREST)
            assert got.dtype == dtype and np.array_equal(got, direct)
            # OpenCV: source pixel floor(x · ifx), ifx = 1 / (out / in), clipped to the last
            ys = np.minimum(np.floor(np.arange(out_h) * (1 / (out_h / in_h))), in_h - 1)
            xs = np.minimum(np.floor(np.arange(out_w) * (1 / (out_w / in_w))), in_w - 1)
            ys, xs = ys.astype(int), xs.astype(int)
            assert np.array_equal(got, mask[np.ix_(ys, xs)])
    ids = np.arange(10, dtype=np.uint8)[None].repeat(2, 0)
    assert imresize(ids, (5, 2), "nearest")[0].tolist() == [0, 2, 4, 6, 8]
    pillow = Image.fromarray(ids).resize((5, 2), Image.Resampling.NEAREST)
    assert np.asarray(pillow)[0].tolist() == [1, 3, 5, 7, 9]  # Pillow: pixel centres


def test_imrescale_and_helpers() -> None:
    src = np.zeros((427, 640, 3), np.uint8)
    assert imrescale(src, (1333, 800)).shape == (800, 1199, 3)
    with pytest.raises(ValueError, match="interpolation"):
        imresize(src, (2, 2), "bicubic")
    flipped = hflip(np.arange(6).reshape(2, 3))
    assert flipped.tolist() == [[2, 1, 0], [5, 4, 3]] and flipped.flags.c_contiguous
    assert as_array(Image.new("RGBA", (3, 2))).shape == (2, 3, 3)
    assert as_array(Image.new("L", (3, 2), 7)).tolist() == [[7] * 3] * 2
    assert as_array(Image.new("1", (2, 1), 1)).tolist() == [[1, 1]]


def test_transforms_resize_with_opencv() -> None:
    rng = np.random.default_rng(4)
    image = rng.integers(0, 256, (427, 640, 3), dtype=np.uint8)
    target = {
        "boxes": torch.zeros(0, 4),
        "ignore_boxes": torch.zeros(0, 4),
        "scale_factor": (1.0, 1.0),
    }
    for scale in ((1333, 800), (333, 200)):  # enlarging and shrinking
        out, t = DetResize(scale)(image, target)
        size = rescale_size(640, 427, scale)
        assert np.array_equal(out, cv2.resize(image, size, interpolation=cv2.INTER_LINEAR))
        assert t["scale_factor"] == (size[0] / 640, size[1] / 427)
    frame = rng.integers(0, 256, (64, 128, 3), dtype=np.uint8)
    mask = rng.integers(0, 19, (64, 128), dtype=np.uint8)
    resize = SegRandomResize(scale=(128, 64), ratio_range=(0.5, 2.0))
    for ratio in (0.37, 0.5, 1.0, 1.61):
        out_image, out_mask = resize.apply(frame, mask, ratio)
        size = rescale_size(128, 64, (int(128 * ratio), int(64 * ratio)))
        expected = cv2.resize(frame, size, interpolation=cv2.INTER_LINEAR)
        assert np.array_equal(out_image, expected)
        assert np.array_equal(out_mask, cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST))
