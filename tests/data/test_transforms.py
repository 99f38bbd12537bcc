"""Transforms: sizes, exact pixel behaviour, RNG use and sample_params/apply replay."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from kdforge.data.transforms import (
    CenterCrop,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    RandomResizedCrop,
    RandomTransform,
    Resize,
    ToTensor,
)


def _image(h: int, w: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    # values in [1, 255] so zero padding is distinguishable from content
    return Image.fromarray(rng.integers(1, 256, size=(h, w, 3), dtype=np.uint8))


def test_random_crop_size_and_zero_padding() -> None:
    img = _image(32, 32)
    t = RandomCrop(32, padding=4)
    for _ in range(20):
        assert t(img).size == (32, 32)
    # extreme crop: top-left corner of the padded image
    out = np.asarray(t.apply(img, (0, 0, 32, 32)))
    assert (out[:4] == 0).all() and (out[:, :4] == 0).all()
    np.testing.assert_array_equal(out[4:, 4:], np.asarray(img)[:28, :28])
    # bottom-right corner
    out = np.asarray(t.apply(img, (8, 8, 32, 32)))
    assert (out[-4:] == 0).all() and (out[:, -4:] == 0).all()
    np.testing.assert_array_equal(out[:28, :28], np.asarray(img)[4:, 4:])


def test_random_crop_params_in_range_and_tensor_input() -> None:
    t = RandomCrop((20, 24), padding=2)
    img = _image(30, 40)
    for _ in range(50):
        top, left, h, w = t.sample_params(img)
        assert (h, w) == (20, 24)
        assert 0 <= top <= 34 - 20 and 0 <= left <= 44 - 24
    x = torch.rand(3, 30, 40)
    params = t.sample_params(x)
    out = t.apply(x, params)
    assert out.shape == (3, 20, 24)
    # tensor and PIL paths agree
    pil = np.asarray(t.apply(img, params)).transpose(2, 0, 1)
    ref = ToTensor()(img)
    np.testing.assert_allclose(t.apply(ref, params).numpy(), pil / 255.0, atol=1e-6)
    with pytest.raises(ValueError, match="larger"):
        RandomCrop(64)(img)


def test_flip_is_exact_mirror() -> None:
    img = _image(5, 7)
    t = RandomHorizontalFlip(p=1.0)
    np.testing.assert_array_equal(np.asarray(t(img)), np.asarray(img)[:, ::-1])
    x = torch.arange(12.0).reshape(1, 3, 4)
    assert torch.equal(t(x), x.flip(-1))
    assert RandomHorizontalFlip(p=0.0)(img) is img
    assert t.apply(img, False) is img


def test_random_resized_crop_params_and_determinism() -> None:
    img = _image(60, 90)
    t = RandomResizedCrop(24, scale=(0.08, 1.0))
    torch.manual_seed(0)
    first = [t.sample_params(img) for _ in range(100)]
    torch.manual_seed(0)
    assert [t.sample_params(img) for _ in range(100)] == first
    for top, left, h, w in first:
        assert 0 < h <= 60 and 0 < w <= 90
        assert 0 <= top <= 60 - h and 0 <= left <= 90 - w
        assert 0.08 * 5400 * 0.8 <= h * w <= 5400
        assert 3 / 4 * 0.8 <= w / h <= 4 / 3 * 1.25  # rounding slack
    assert t(img).size == (24, 24)
    assert t(ToTensor()(img)).shape == (3, 24, 24)


def test_random_resized_crop_fallback_is_clamped_centre_crop() -> None:
    # scale > 1 can never fit, so all 10 attempts fail and the fallback is used
    t = RandomResizedCrop(8, scale=(2.0, 3.0))
    assert t.sample_params(_image(100, 10)) == (43, 0, 13, 10)  # too tall: h = 10 / (3/4)
    assert t.sample_params(_image(10, 100)) == (0, 43, 10, 13)  # too wide: w = 10 * 4/3
    assert t.sample_params(_image(40, 50)) == (0, 0, 40, 50)  # ratio in range: whole image


def test_randomness_uses_torch_rng_only() -> None:
    img = _image(40, 40)
    transforms = [RandomCrop(32, 4), RandomHorizontalFlip(), RandomResizedCrop(16)]
    for t in transforms:
        torch.manual_seed(3)
        random.seed(1)
        np.random.seed(1)
        a = [t.sample_params(img) for _ in range(10)]
        torch.manual_seed(3)
        random.seed(2)
        np.random.seed(2)
        assert [t.sample_params(img) for _ in range(10)] == a


@pytest.mark.parametrize(
    "t", [RandomCrop(32, 4), RandomHorizontalFlip(), RandomResizedCrop(20)], ids=repr
)
def test_apply_of_sampled_params_equals_call(t: RandomTransform) -> None:
    img = _image(36, 44)
    for seed in range(5):
        torch.manual_seed(seed)
        expected = np.asarray(t(img))
        torch.manual_seed(seed)
        params = t.sample_params(img)
        np.testing.assert_array_equal(np.asarray(t.apply(img, params)), expected)


def test_resize_and_center_crop_non_square() -> None:
    assert Resize(32)(_image(48, 64)).size == (int(32 * 64 / 48), 32)  # (w, h)
    assert Resize(32)(_image(100, 40)).size == (32, 80)
    assert Resize((10, 20))(_image(48, 64)).size == (20, 10)
    img = _image(32, 50)
    assert Resize(32)(img) is img
    assert Resize(16)(torch.rand(3, 32, 50)).shape == (3, 16, 25)

    out = CenterCrop((10, 20))(_image(31, 50))
    assert out.size == (20, 10)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(_image(31, 50))[10:20, 15:35])
    small = CenterCrop(6)(torch.ones(1, 3, 4))
    assert small.shape == (1, 6, 6)
    assert small.sum() == 12 and small[0, 1:4, 1:5].sum() == 12


def test_to_tensor_and_normalize() -> None:
    arr = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10
    x = ToTensor()(Image.fromarray(arr))
    assert x.shape == (3, 2, 3) and x.dtype == torch.float32
    torch.testing.assert_close(x, torch.from_numpy(arr).permute(2, 0, 1).float() / 255)
    torch.testing.assert_close(ToTensor()(arr), x)
    assert ToTensor()(np.zeros((4, 5), np.uint8)).shape == (1, 4, 5)

    norm = Normalize((0.5, 0.25, 0.0), (0.5, 0.25, 2.0))
    y = norm(x)
    expected = torch.stack([(x[0] - 0.5) / 0.5, (x[1] - 0.25) / 0.25, x[2] / 2.0])
    torch.testing.assert_close(y, expected)
    assert norm(x.unsqueeze(0)).shape == (1, 3, 2, 3)
    with pytest.raises(ValueError):
        Normalize((0.5,), (0.0,))
