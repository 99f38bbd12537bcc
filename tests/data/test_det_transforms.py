"""Detection transforms: mmdetection's resize and flip box math, normalisation, padding.

The pixels of OpenCV's resizing are checked against mmcv's formulas in test_geometric.py."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from kdforge.data.det_transforms import (
    DETECTION_MEAN,
    DETECTION_STD,
    DetNormalize,
    DetRandomFlip,
    DetRandomResize,
    DetResize,
    collate_detection,
    rescale_size,
)


def _sample(width: int, height: int, boxes: list[list[float]]) -> tuple[np.ndarray, dict[str, Any]]:
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    size = (height, width)
    target = {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.zeros(len(boxes), dtype=torch.int64),
        "ignore_boxes": torch.tensor([[0.0, 0.0, 4.0, 4.0]]),
        "image_id": 1,
        "orig_size": size,
        "img_shape": size,
        "scale_factor": (1.0, 1.0),
        "flip": False,
    }
    return pixels, target


def test_rescale_size_follows_mmcv() -> None:
    assert rescale_size(640, 480, (1333, 800)) == (1067, 800)  # factor 800/480; 1066.67 -> 1067
    assert rescale_size(1000, 200, (1333, 800)) == (1333, 267)  # factor 1.333; 266.6 -> 267
    assert rescale_size(480, 640, (800, 1333)) == (800, 1067)  # the scale's order is irrelevant
    assert rescale_size(2000, 1500, (1333, 800)) == (1067, 800)  # shrinking too


def test_resize_scales_and_clips_boxes() -> None:
    image, target = _sample(640, 480, [[10, 20, 110, 220], [600, 400, 650, 490]])
    out, t = DetResize((1333, 800))(image, target)
    assert out.shape == (800, 1067, 3) and out.dtype == np.uint8 and t["img_shape"] == (800, 1067)
    w_scale, h_scale = 1067 / 640, 800 / 480
    assert t["scale_factor"] == pytest.approx((w_scale, h_scale))
    expected = [
        [10 * w_scale, 20 * h_scale, 110 * w_scale, 220 * h_scale],
        [600 * w_scale, 400 * h_scale, 1067, 800],  # 650 * w_scale, 490 * h_scale clipped
    ]
    torch.testing.assert_close(t["boxes"], torch.tensor(expected))
    torch.testing.assert_close(t["ignore_boxes"], torch.tensor([[0, 0, 4 * w_scale, 4 * h_scale]]))
    assert target["boxes"][0, 0] == 10  # the input target is not modified
    out2, t2 = DetResize((534, 400))(out, t)  # a second resize composes the scale factors
    assert out2.shape == (400, 534, 3)
    assert t2["scale_factor"] == pytest.approx((534 / 640, 400 / 480))
    from_pil, t3 = DetResize((1333, 800))(Image.fromarray(image), target)  # PIL is accepted
    assert np.array_equal(from_pil, out) and t3["img_shape"] == (800, 1067)


def test_flip_mirrors_boxes_and_pixels() -> None:
    image, target = _sample(100, 50, [[10, 20, 30, 40]])
    out, t = DetRandomFlip(p=1.0)(image, target)
    assert t["boxes"].tolist() == [[70.0, 20.0, 90.0, 40.0]] and t["flip"]
    assert t["ignore_boxes"].tolist() == [[96.0, 0.0, 100.0, 4.0]]
    np.testing.assert_array_equal(out, image[:, ::-1])
    back, t_back = DetRandomFlip(p=1.0)(out, t)
    np.testing.assert_array_equal(back, image)
    assert t_back["boxes"].tolist() == [[10.0, 20.0, 30.0, 40.0]] and not t_back["flip"]
    assert DetRandomFlip(p=0.0)(image, target)[1] is target


def test_random_resize_draws_from_torch_rng() -> None:
    ranged = DetRandomResize([(1333, 640), (1333, 800)], mode="range")
    torch.manual_seed(0)
    draws = [ranged.sample_params() for _ in range(50)]
    assert all(long == 1333 and 640 <= short <= 800 for long, short in draws)
    assert len({s for _, s in draws}) > 10
    torch.manual_seed(0)
    assert [ranged.sample_params() for _ in range(50)] == draws
    choice = DetRandomResize([(1333, 640), (1333, 672), (1333, 800)], mode="value")
    assert {choice.sample_params() for _ in range(50)} == {(1333, 640), (1333, 672), (1333, 800)}
    image, target = _sample(64, 48, [[1, 2, 3, 4]])
    out, t = ranged.apply(image, target, (1333, 720))
    assert out.shape == (720, 960, 3) and t["img_shape"] == (720, 960)
    with pytest.raises(ValueError, match="mode"):
        DetRandomResize([(1333, 800)], mode="range")


def test_normalize_uses_0_255_imagenet_statistics() -> None:
    mean = tuple(round(m) for m in DETECTION_MEAN)
    image = np.full((4, 5, 3), mean, np.uint8)
    tensor, _ = DetNormalize()(image, {})
    assert tensor.shape == (3, 4, 5) and tensor.dtype == torch.float32
    expected = [(m - mu) / s for m, mu, s in zip(mean, DETECTION_MEAN, DETECTION_STD, strict=True)]
    torch.testing.assert_close(tensor[:, 0, 0], torch.tensor(expected))
    white, _ = DetNormalize()(Image.new("RGB", (2, 2), (255, 255, 255)), {})  # PIL too
    assert white[0, 0, 0].item() == pytest.approx((255 - 123.675) / 58.395)
    grey, _ = DetNormalize()(np.full((2, 2), 255, np.uint8), {})  # grey: replicated
    torch.testing.assert_close(grey, white)


def test_collate_pads_to_a_multiple_of_32() -> None:
    a, b = torch.ones(3, 50, 70), torch.full((3, 64, 33), 2.0)
    images, targets = collate_detection([(a, {"i": 0}), (b, {"i": 1})])
    assert images.shape == (2, 3, 64, 96) and [t["i"] for t in targets] == [0, 1]
    assert images[0, :, :50, :70].eq(1).all() and images[0, :, 50:].eq(0).all()
    assert images[0, :, :, 70:].eq(0).all() and images[1, :, :, :33].eq(2).all()
    assert collate_detection([(torch.zeros(3, 32, 64), {})])[0].shape == (1, 3, 32, 64)
