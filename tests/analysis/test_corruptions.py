"""The 15 corruptions: deterministic per seed, they change the image and keep its format."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest

from kdforge.analysis.corruptions import CORRUPTIONS, SEVERITIES, corrupt, frost_texture

RANDOM = {
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "glass_blur",
    "motion_blur",
    "snow",
    "frost",
    "fog",
    "elastic_transform",
}


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """A 24x20 picture with edges and texture (a gradient, a block, noise)."""
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:24, 0:20]
    picture = np.stack([ys * 8, xs * 10, (ys + xs) * 5], -1).astype(np.float64)
    picture[6:16, 5:12] = (220, 40, 90)
    picture += rng.normal(0, 10, picture.shape)
    return np.clip(picture, 0, 255).astype(np.uint8)


def test_there_are_the_15_benchmark_corruptions():
    assert len(CORRUPTIONS) == 15 and SEVERITIES == (1, 2, 3, 4, 5)


@pytest.mark.parametrize("severity", [1, 3, 5])
@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_corruption_is_deterministic_changes_pixels_keeps_format(image, name, severity):
    before = image.copy()
    out = corrupt(image, name, severity, np.random.default_rng(7))
    assert np.array_equal(image, before)  # the input is left alone
    assert out.shape == image.shape and out.dtype == np.uint8  # uint8 holds the 0..255 range
    assert np.abs(out.astype(int) - image).mean() > 1.0
    assert np.array_equal(out, corrupt(image, name, severity, 7))
    if name in RANDOM:
        assert not np.array_equal(out, corrupt(image, name, severity, 8))


@pytest.mark.parametrize("name", ["gaussian_noise", "shot_noise", "contrast", "brightness"])
def test_higher_severity_changes_more(image, name):
    changes = [np.abs(corrupt(image, name, s, 0).astype(int) - image).mean() for s in SEVERITIES]
    assert changes == sorted(changes) and changes[-1] > changes[0]


def test_brightness_adds_to_the_hsv_value(image):
    out = corrupt(image, "brightness", 3, 0).astype(float) / 255
    for y, x in [(0, 0), (10, 8), (20, 15)]:
        h, s, v = colorsys.rgb_to_hsv(*(image[y, x] / 255.0))
        expected = colorsys.hsv_to_rgb(h, s, min(v + 0.3, 1.0))
        np.testing.assert_allclose(out[y, x], expected, atol=1 / 255 + 1e-9)


def test_blurs_keep_a_flat_image_flat():
    flat = np.full((64, 64, 3), 120, dtype=np.uint8)  # larger than the longest motion
    for name in ("defocus_blur", "motion_blur", "zoom_blur", "glass_blur"):
        assert np.abs(corrupt(flat, name, 5, 0).astype(int) - 120).max() <= 1, name


def test_frost_texture_is_a_light_bluish_image():
    texture = frost_texture(40, 30, np.random.default_rng(0))
    assert texture.shape == (40, 30, 3) and texture.min() >= 0 and texture.max() <= 1
    assert texture[..., 2].mean() > texture[..., 0].mean() > 0.2


def test_bad_names_and_inputs_are_refused(image):
    with pytest.raises(ValueError, match="gaussian_noise"):
        corrupt(image, "gaussian", 1)
    with pytest.raises(ValueError, match="severities"):
        corrupt(image, "fog", 6)
    with pytest.raises(ValueError, match="uint8"):
        corrupt(image.astype(np.float32), "fog", 1)
