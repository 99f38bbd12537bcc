"""OpenCV decoding (detection, segmentation): mmcv's ``cv2.imdecode(..., IMREAD_COLOR)`` turned
to RGB, EXIF orientation not applied, 16-bit scaled as OpenCV scales it, and every unreadable
file a SampleError naming it, as with Pillow."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from kdforge.data.bad_samples import SampleError
from kdforge.data.decode import decode_image, decode_image_cv


def _mmcv_color(path: Path) -> np.ndarray:
    """What mmcv's ``LoadImageFromFile`` (flag 'color', cv2) then ``bgr_to_rgb`` gives."""
    bgr = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _noise(height: int = 24, width: int = 40) -> np.ndarray:
    rng = np.random.default_rng(0)
    return cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), (5, 5), 2)


@pytest.mark.parametrize(
    ("mode", "suffix"),
    [
        ("RGB", ".png"),
        ("RGB", ".jpg"),
        ("L", ".png"),
        ("L", ".jpg"),
        ("RGBA", ".png"),
        ("LA", ".png"),
        ("P", ".png"),
        ("1", ".png"),
        ("CMYK", ".jpg"),
        ("RGB", ".bmp"),
        ("RGB", ".webp"),
    ],
)
def test_equals_mmcv_color_decoding(tmp_path: Path, mode: str, suffix: str) -> None:
    path = tmp_path / f"x{suffix}"
    Image.fromarray(_noise()).convert(mode).save(path)
    rgb = decode_image_cv(path)
    assert rgb.dtype == np.uint8 and rgb.shape == (24, 40, 3)
    assert np.array_equal(rgb, _mmcv_color(path))
    if mode != "CMYK":  # OpenCV and Pillow convert CMYK JPEGs 1 apart
        assert np.array_equal(rgb, np.asarray(decode_image(path)))  # lossless, same libjpeg


def test_channel_order_is_rgb(tmp_path: Path) -> None:
    Image.new("RGB", (3, 2), (200, 100, 7)).save(tmp_path / "x.png")
    assert decode_image_cv(tmp_path / "x.png")[0, 0].tolist() == [200, 100, 7]


def test_16_bit_images_are_scaled_as_opencv_does(tmp_path: Path) -> None:
    ramp = np.linspace(0, 65535, 32 * 32).round().astype(np.uint16).reshape(32, 32)
    cv2.imwrite(str(tmp_path / "grey.png"), ramp)
    cv2.imwrite(str(tmp_path / "colour.png"), np.stack([ramp, ramp // 2, ramp // 3], -1))
    for name in ("grey.png", "colour.png"):
        rgb = decode_image_cv(tmp_path / name)
        assert np.array_equal(rgb, _mmcv_color(tmp_path / name))  # not clipped at 255
    grey = decode_image_cv(tmp_path / "grey.png")[..., 0]
    assert np.array_equal(grey, ramp >> 8) and len(np.unique(grey)) == 256
    pillow = np.asarray(decode_image(tmp_path / "grey.png"))[..., 0]  # rounds v * 255 / 65535
    assert np.abs(grey.astype(int) - pillow).max() <= 1


def test_float_and_32_bit_images_are_refused(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "f.tiff"), np.full((2, 2, 3), 0.5, np.float32))
    with pytest.raises(SampleError, match=r"f\.tiff' holds floating-point pixels"):
        decode_image_cv(tmp_path / "f.tiff")
    cv2.imwrite(str(tmp_path / "i.tiff"), np.full((2, 2), 70000, np.int32))
    with pytest.raises(SampleError, match=r"i\.tiff' holds int32 pixels"):
        decode_image_cv(tmp_path / "i.tiff")


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"", "is empty"),
        (b"<html><body>404 Not Found</body></html>", "is not an image OpenCV can read"),
        (None, "does not exist"),
    ],
)
def test_unreadable_files_say_why(tmp_path: Path, content: bytes | None, words: str) -> None:
    path = tmp_path / "x.jpg"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(SampleError, match=rf"x\.jpg' {words}") as err:
        decode_image_cv(path)
    assert err.value.file == path


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_a_truncated_file_is_an_error(tmp_path: Path, suffix: str) -> None:
    Image.fromarray(_noise(64, 64)).save(tmp_path / f"ok{suffix}")
    data = (tmp_path / f"ok{suffix}").read_bytes()
    (tmp_path / f"cut{suffix}").write_bytes(data[: len(data) // 2])
    with pytest.raises(SampleError, match=r"cut\.(png|jpg)' is truncated or damaged"):
        decode_image_cv(tmp_path / f"cut{suffix}")


def test_exif_orientation_is_not_applied(tmp_path: Path) -> None:
    img = Image.fromarray(_noise(4, 6))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 clockwise: IMREAD_COLOR would return 6 x 4
    img.save(tmp_path / "phone.jpg", exif=exif)
    assert decode_image_cv(tmp_path / "phone.jpg").shape == (4, 6, 3)  # pixels as stored
