"""Segmentation transforms: resize, category-max-ratio crop, flip, photometric maths, pad.

The pixels of OpenCV's resizing are checked against mmcv's formulas in test_geometric.py."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from kdforge.data._photometric import DistortionParams, hsv_to_rgb_u8, rgb_to_hsv_u8
from kdforge.data.seg_transforms import (
    SEG_MEAN,
    SEG_STD,
    PhotoMetricDistortion,
    SegNormalize,
    SegPad,
    SegRandomCrop,
    SegRandomFlip,
    SegRandomResize,
    collate_segmentation,
)


def _coords(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """An image whose R, G channels are x, y and a mask of ``(x + 2y) % 5``."""
    ys, xs = np.mgrid[0:height, 0:width]
    rgb = np.stack([xs, ys, np.zeros_like(xs)], -1).astype(np.uint8)
    return rgb, ((xs + 2 * ys) % 5).astype(np.uint8)


def _size(array: np.ndarray) -> tuple[int, int]:
    """``(width, height)``."""
    return array.shape[1], array.shape[0]


def _consistent(image: np.ndarray, mask: np.ndarray) -> bool:
    rgb, labels = image.astype(int), mask.astype(int)
    return bool(np.array_equal((rgb[..., 0] + 2 * rgb[..., 1]) % 5, labels))


def test_random_resize_keeps_ratio_and_label_values() -> None:
    t = SegRandomResize(scale=(64, 32), ratio_range=(0.5, 2.0))
    image, mask = _coords(32, 64)
    for ratio, size in ((0.5, (32, 16)), (2.0, (128, 64)), (1.0, (64, 32))):
        out_image, out_mask = t.apply(image, mask, ratio)
        assert _size(out_image) == _size(out_mask) == size
        assert out_image.dtype == out_mask.dtype == np.uint8
        assert set(np.unique(out_mask)) <= set(range(5))
    square, square_mask = _coords(40, 40)
    assert _size(t.apply(square, square_mask, 1.0)[0]) == (32, 32)  # fits 64 x 32
    pil_image, pil_mask = t.apply(Image.fromarray(image), Image.fromarray(mask), 0.5)  # accepted
    assert np.array_equal(pil_image, t.apply(image, mask, 0.5)[0]) and pil_mask.shape == (16, 32)
    wide_ids = mask.astype(np.int32) * 100  # masks with ids over 255 (mode I) resize too
    assert set(np.unique(t.apply(image, wide_ids, 0.5)[1])) <= {0, 100, 200, 300, 400}
    torch.manual_seed(0)
    assert all(0.5 <= t.sample_params() < 2.0 for _ in range(100))


def test_crop_keeps_image_and_mask_aligned_and_sized() -> None:
    torch.manual_seed(0)
    t = SegRandomCrop(crop_size=(8, 12), cat_max_ratio=1.0)
    image, mask = _coords(20, 30)
    for _ in range(20):
        out_image, out_mask = t(image, mask)
        assert _size(out_image) == _size(out_mask) == (12, 8)
        assert _consistent(out_image, out_mask)
    small_image, small_mask = t(*_coords(5, 6))  # smaller than the crop: the whole image
    assert _size(small_image) == _size(small_mask) == (6, 5)


def _tiled(tile: list[int]) -> np.ndarray:
    """A 64x64 mask repeating a 4x4 tile, so every 8x8 crop has the same histogram."""
    return np.tile(np.array(tile, np.uint8).reshape(4, 4), (16, 16))


def _draws(count: int) -> tuple[tuple[int, int], float]:
    """The ``count``-th (top, left) drawn by an 8x8 crop of 64x64, and the next ``rand``."""
    for _ in range(count):
        top, left = int(torch.randint(57, (1,)).item()), int(torch.randint(57, (1,)).item())
    return (top, left), torch.rand(1).item()


@pytest.mark.parametrize(
    ("tile", "draws"),
    [
        ([0] * 8 + [1] * 8, 1),  # 50% / 50%: accepted at once
        ([0] * 12 + [1] * 4, 11),  # 75% is not < 0.75: all 10 retries, the last kept
        ([0] * 16, 11),  # one class only: rejected
        ([0] * 12 + [255] * 4, 11),  # one labelled class: rejected
        ([0] * 10 + [1] * 3 + [255] * 3, 11),  # 10/13 of the labelled pixels: rejected
        ([0] * 9 + [1] * 4 + [255] * 3, 1),  # 9/13 < 0.75: accepted
    ],
)
def test_cat_max_ratio_retries(tile: list[int], draws: int) -> None:
    image, mask = np.zeros((64, 64, 3), np.uint8), _tiled(tile)
    t = SegRandomCrop(crop_size=(8, 8), cat_max_ratio=0.75)
    torch.manual_seed(3)
    params, after = t.sample_params(image, mask), torch.rand(1).item()
    torch.manual_seed(3)
    assert (params, after) == _draws(draws)
    torch.manual_seed(3)
    first = _draws(1)
    torch.manual_seed(3)
    assert first != _draws(11)  # this seed tells the two cases apart


def test_flip_mirrors_image_and_mask_together() -> None:
    image, mask = _coords(6, 9)
    flipped_image, flipped_mask = SegRandomFlip(1.0)(image, mask)
    assert np.array_equal(flipped_image, image[:, ::-1])
    assert np.array_equal(flipped_mask, mask[:, ::-1])
    assert SegRandomFlip(0.0)(image, mask) == (image, mask)
    torch.manual_seed(0)
    flips = [SegRandomFlip(0.5).sample_params() for _ in range(400)]
    assert 0.4 < sum(flips) / 400 < 0.6


def test_photometric_draws_follow_mmseg_ranges() -> None:
    t = PhotoMetricDistortion()
    torch.manual_seed(0)
    draws = [t.sample_params() for _ in range(600)]
    for field, (low, high) in {
        "brightness": (-32, 32),
        "contrast": (0.5, 1.5),
        "saturation": (0.5, 1.5),
        "hue": (-18, 17),
    }.items():
        values = [getattr(p, field) for p in draws if getattr(p, field) is not None]
        assert 0.4 < len(values) / 600 < 0.6, field
        assert low <= min(values) and max(values) <= high, field
    assert {p.hue for p in draws if p.hue is not None} == set(range(-18, 18))


def test_photometric_operations() -> None:
    t = PhotoMetricDistortion()
    pixels = np.array([[[0, 100, 250], [255, 0, 0], [30, 60, 90]]], np.uint8)
    image, mask = pixels, np.full((1, 3), 7, np.uint8)

    def run(**kw) -> np.ndarray:
        params = dict(
            brightness=None, contrast_first=True, contrast=None, saturation=None, hue=None
        )
        out, same_mask = t.apply(image, mask, DistortionParams(**(params | kw)))
        assert same_mask is mask and out.dtype == np.uint8 and out.shape == (1, 3, 3)
        return out.astype(int)

    # brightness adds, clips, then truncates to uint8 as mmseg's ``convert``
    assert run(brightness=10.7)[0].tolist() == [[10, 110, 255], [255, 10, 10], [40, 70, 100]]
    assert run(contrast=0.5)[0].tolist() == [[0, 50, 125], [127, 0, 0], [15, 30, 45]]
    grey = run(saturation=0.0)[0]  # no saturation: every channel equals V = max
    assert grey.tolist() == [[250] * 3, [255] * 3, [90] * 3]
    assert run(hue=60)[0, 1].tolist() == [0, 255, 0]  # +120 degrees: red -> green
    assert run(hue=-60)[0, 1].tolist() == [0, 0, 255]
    # the coin puts contrast before or after the HSV steps
    bright = np.clip(pixels.astype(np.float32) + 30.0, 0, 255).astype(np.uint8)

    def saturate(x: np.ndarray) -> np.ndarray:
        hsv = rgb_to_hsv_u8(x)
        hsv[..., 1] = np.clip(hsv[..., 1] * np.float32(1.2), 0, 255).astype(np.uint8)
        return hsv_to_rgb_u8(hsv)

    def contrast(x: np.ndarray) -> np.ndarray:
        return np.clip(x.astype(np.float32) * 1.5, 0, 255).astype(np.uint8)

    late = run(brightness=30.0, contrast=1.5, contrast_first=False, saturation=1.2)
    early = run(brightness=30.0, contrast=1.5, contrast_first=True, saturation=1.2)
    assert late.tolist() == contrast(saturate(bright)).tolist()
    assert early.tolist() == saturate(contrast(bright)).tolist() != late.tolist()


def test_hsv_matches_opencv_conventions() -> None:
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [10, 10, 10]]], np.uint8)
    assert rgb_to_hsv_u8(rgb)[0].tolist() == [
        [0, 255, 255],
        [60, 255, 255],
        [120, 255, 255],
        [30, 255, 255],
        [0, 0, 10],
    ]
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    back = hsv_to_rgb_u8(rgb_to_hsv_u8(noise)).astype(int)
    assert np.abs(back - noise).max() <= 4  # hue is kept in 2-degree steps, as in OpenCV
    bgr = noise[..., ::-1]  # mmcv's bgr2hsv / hsv2bgr on mmseg's BGR images: the same values
    hsv = cv2.cvtColor(np.ascontiguousarray(bgr), cv2.COLOR_BGR2HSV)
    assert np.array_equal(rgb_to_hsv_u8(noise), hsv)
    assert np.array_equal(hsv_to_rgb_u8(hsv), cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[..., ::-1])


def test_normalize_and_pad_values() -> None:
    image = np.full((3, 5, 3), [round(m) for m in SEG_MEAN], np.uint8)
    tensor, labels = SegNormalize()(image, np.full((3, 5), 4, np.uint8))
    from_pil = SegNormalize()(Image.fromarray(image), Image.new("L", (5, 3), 4))  # PIL too
    assert torch.equal(from_pil[0], tensor) and torch.equal(from_pil[1], labels)
    expected = (torch.tensor([round(m) for m in SEG_MEAN]) - torch.tensor(SEG_MEAN)) / torch.tensor(
        SEG_STD
    )
    torch.testing.assert_close(tensor[:, 0, 0], expected)
    assert labels.dtype == torch.int64 and labels.shape == (3, 5)
    padded, padded_labels = SegPad((4, 8))(tensor, labels)
    assert padded.shape == (3, 4, 8) and padded_labels.shape == (4, 8)
    assert torch.equal(padded[:, :3, :5], tensor) and torch.equal(padded_labels[:3, :5], labels)
    assert (padded[:, 3:] == 0).all() and (padded[:, :, 5:] == 0).all()
    assert (padded_labels[3:] == 255).all() and (padded_labels[:, 5:] == 255).all()


def test_collate_pads_images_with_zero_and_masks_with_ignore() -> None:
    images, masks = collate_segmentation(
        [(torch.ones(3, 4, 6), torch.ones(4, 6, dtype=torch.int64)), SegNormalize()(*_coords(5, 3))]
    )
    assert images.shape == (2, 3, 5, 6) and masks.shape == (2, 5, 6)
    assert (masks[0, 4:] == 255).all() and (images[0, :, 4:] == 0).all()
    assert (masks[1, :, 3:] == 255).all()
