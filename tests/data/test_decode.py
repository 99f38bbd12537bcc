"""Decoding: every image mode becomes 8-bit RGB, 16-bit grey is scaled (not clipped), masks
keep their class ids, and every unreadable file is a SampleError naming it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kdforge.data import ImageFolder
from kdforge.data.bad_samples import SampleError
from kdforge.data.decode import decode_image, decode_mask, exif_rotation, read_header


def _sixteen_bit_png(path: Path, values: np.ndarray) -> Path:
    Image.fromarray(values.astype(np.uint16)).save(path)
    with Image.open(path) as img:
        assert img.mode.startswith("I")  # Pillow reads it back as 16-bit grey
    return path


def test_a_16_bit_png_is_scaled_to_8_bits_not_clipped(tmp_path: Path) -> None:
    ramp = np.linspace(0, 65535, 64 * 64).round().reshape(64, 64)  # (64, 64) over 16 bits
    path = _sixteen_bit_png(tmp_path / "ramp.png", ramp)
    rgb = decode_image(path)
    assert rgb.mode == "RGB" and rgb.size == (64, 64)
    pixels = np.asarray(rgb)
    assert np.array_equal(pixels[..., 0], pixels[..., 2])  # grey
    expected = np.round(ramp * 255 / 65535)
    assert np.abs(pixels[..., 0] - expected).max() <= 1
    assert (pixels == 255).mean() < 0.01  # Pillow's convert("RGB") makes 99.6 % of it 255
    assert len(np.unique(pixels)) == 256


def test_an_image_folder_reads_16_bit_pngs(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    _sixteen_bit_png(tmp_path / "a" / "x.png", np.full((4, 4), 32896))  # 32896 / 257 = 128
    image, label = ImageFolder(tmp_path)[0]
    assert label == 0 and np.allclose(image.numpy(), 128 / 255)


@pytest.mark.parametrize(
    ("mode", "color", "rgb"),
    [
        ("L", 100, (100, 100, 100)),
        ("LA", (100, 7), (100, 100, 100)),
        ("RGBA", (10, 20, 30, 0), (10, 20, 30)),
        ("CMYK", (0, 0, 0, 0), (255, 255, 255)),
        ("1", 1, (255, 255, 255)),
        ("I", 257 * 200, (200, 200, 200)),  # older Pillow opens 16-bit PNGs as "I"
    ],
)
def test_every_mode_becomes_rgb(tmp_path: Path, mode: str, color, rgb) -> None:
    img = Image.new(mode, (3, 2), color)
    path = tmp_path / ("x.jpg" if mode == "CMYK" else "x.tiff" if mode == "I" else "x.png")
    img.save(path)
    out = decode_image(path)
    assert out.mode == "RGB" and out.size == (3, 2)
    assert np.abs(np.asarray(out)[0, 0].astype(int) - rgb).max() <= 2


def test_palette_images_with_transparency(tmp_path: Path) -> None:
    img = Image.new("P", (4, 4), 1)
    img.putpalette([0, 0, 0, 250, 10, 20] + [0] * 762)
    img.save(tmp_path / "p.png", transparency=0)
    assert np.asarray(decode_image(tmp_path / "p.png"))[0, 0].tolist() == [250, 10, 20]


def test_float_and_32_bit_images_are_refused(tmp_path: Path) -> None:
    Image.new("F", (2, 2), 0.5).save(tmp_path / "f.tiff")
    with pytest.raises(SampleError, match=r"f\.tiff.*floating-point"):
        decode_image(tmp_path / "f.tiff")
    Image.new("I", (2, 2), 70000).save(tmp_path / "i.tiff")
    with pytest.raises(SampleError, match=r"i\.tiff.*32-bit integers"):
        decode_image(tmp_path / "i.tiff")


def test_masks_keep_their_ids(tmp_path: Path) -> None:
    ids = np.array([[0, 1, 2], [255, 4, 0]])
    Image.fromarray(ids.astype(np.uint8), "L").save(tmp_path / "l.png")
    assert np.array_equal(np.asarray(decode_mask(tmp_path / "l.png", 5)), ids)
    _sixteen_bit_png(tmp_path / "16.png", ids)  # 16-bit ids that fit 8 bits: kept, not scaled
    mask = decode_mask(tmp_path / "16.png", 5)
    assert mask.mode == "L" and np.array_equal(np.asarray(mask), ids)
    many = np.array([[0, 300], [599, 65535]])  # 600 classes, 65535 the ignore index
    _sixteen_bit_png(tmp_path / "many.png", many)
    mask = decode_mask(tmp_path / "many.png", 600, ignore_index=65535)
    assert mask.mode == "I" and np.array_equal(np.asarray(mask), many)
    with pytest.raises(SampleError, match=r"many\.png' holds class ids 300, 599, 65535, outside"):
        decode_mask(tmp_path / "many.png", 19)
    Image.new("1", (2, 2), 1).save(tmp_path / "binary.png")
    assert np.asarray(decode_mask(tmp_path / "binary.png", 2)).tolist() == [[1, 1], [1, 1]]


def test_mask_ids_outside_the_classes_and_colour_masks_are_refused(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 33], [26, 255]], dtype=np.uint8)).save(tmp_path / "ids.png")
    with pytest.raises(SampleError, match=r"ids\.png' holds class ids 26, 33, outside 0\.\.18"):
        decode_mask(tmp_path / "ids.png", 19)
    assert decode_mask(tmp_path / "ids.png", 34).size == (2, 2)
    Image.new("RGB", (2, 2)).save(tmp_path / "colour.png")
    with pytest.raises(SampleError, match=r"colour\.png' has mode RGB.*labelTrainIds"):
        decode_mask(tmp_path / "colour.png", 19)


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"", "is empty"),
        (b"<html><body>404 Not Found</body></html>", "is not an image"),
        (None, "does not exist"),
    ],
)
def test_unreadable_files_say_why(tmp_path: Path, content: bytes | None, words: str) -> None:
    path = tmp_path / "x.jpg"
    if content is not None:
        path.write_bytes(content)
    for read in (decode_image, read_header):
        with pytest.raises(SampleError, match=rf"x\.jpg' {words}") as err:
            read(path)
        assert err.value.file == path


def test_a_truncated_file_passes_the_header_and_fails_decoding(tmp_path: Path) -> None:
    Image.effect_noise((64, 64), 50).convert("RGB").save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    assert read_header(tmp_path / "cut.png") == ((64, 64), "RGB")
    with pytest.raises(SampleError, match=r"cut\.png' is truncated or damaged"):
        decode_image(tmp_path / "cut.png")


def test_exif_rotation_is_reported_not_applied(tmp_path: Path) -> None:
    img = Image.new("RGB", (6, 4), (1, 2, 3))
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(tmp_path / "phone.jpg", exif=exif)
    img.save(tmp_path / "plain.jpg")
    assert exif_rotation(tmp_path / "phone.jpg") == "rotate 90 clockwise"
    assert exif_rotation(tmp_path / "plain.jpg") is None
    assert decode_image(tmp_path / "phone.jpg").size == (6, 4)  # pixels as stored
