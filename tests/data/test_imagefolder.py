"""ImageFolder on a few Pillow-made files: classes, labels, decoding and loud errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kdforge.data import ImageFolder, build_datasets
from kdforge.errors import ConfigError, DataError


def _write(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (12, 9)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    _write(tmp_path / "dog" / "b.png", (0, 255, 0))
    _write(tmp_path / "dog" / "a.PNG", (0, 0, 255))
    _write(tmp_path / "cat" / "x.png", (255, 0, 0))
    _write(tmp_path / "cat" / "nested" / "y.jpg", (10, 20, 30))
    Image.new("L", (9, 12), 128).save(tmp_path / "cat" / "grey.bmp")
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "README").write_text("a file, not a class")
    return tmp_path


def test_classes_samples_and_items(folder: Path) -> None:
    ds = ImageFolder(folder)
    assert ds.classes == ["cat", "dog"] and ds.num_classes == 2
    assert ds.class_to_idx == {"cat": 0, "dog": 1}
    names = [p.relative_to(folder).as_posix() for p, _ in ds.samples]
    assert names == ["cat/grey.bmp", "cat/x.png", "cat/nested/y.jpg", "dog/a.PNG", "dog/b.png"]
    assert ds.targets == [0, 0, 0, 1, 1] and len(ds) == 5

    x, y = ds[1]
    assert y == 0 and x.shape == (3, 9, 12) and x.dtype == torch.float32
    torch.testing.assert_close(x[:, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    grey, _ = ds[0]  # "L" image converted to RGB
    assert grey.shape == (3, 12, 9)
    torch.testing.assert_close(grey, torch.full((3, 12, 9), 128 / 255))

    seen = []
    ImageFolder(folder, transform=lambda im: seen.append(im) or 0)[3]
    assert isinstance(seen[0], Image.Image) and seen[0].mode == "RGB"
    assert np.asarray(seen[0])[0, 0].tolist() == [0, 0, 255]

    only_png = ImageFolder(folder, extensions=(".png",))
    assert len(only_png) == 3


def test_corrupt_image_names_the_file(folder: Path) -> None:
    bad = folder / "dog" / "c_corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    ds = ImageFolder(folder)
    index = [p for p, _ in ds.samples].index(bad)
    with pytest.raises(DataError, match=r"c_corrupt\.png"):
        ds[index]


def test_truncated_image_names_the_file(tmp_path: Path) -> None:
    good = tmp_path / "a" / "ok.jpg"
    _write(good, (1, 2, 3), size=(64, 64))
    data = good.read_bytes()
    (tmp_path / "a" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    ds = ImageFolder(tmp_path)
    with pytest.raises(DataError, match=r"truncated\.jpg"):
        ds[1]


def test_errors_show_layout(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist") as err:
        ImageFolder(tmp_path / "missing")
    assert str(tmp_path / "missing") in str(err.value) and "<class_a>/" in str(err.value)

    with pytest.raises(DataError, match="no class sub-folders") as err:
        ImageFolder(tmp_path)
    assert "<class_a>/" in str(err.value)

    _write(tmp_path / "full" / "a.png", (0, 0, 0))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "x.txt").write_text("")
    with pytest.raises(DataError, match="hold no images") as err:
        ImageFolder(tmp_path)
    assert "empty" in str(err.value) and "<class_a>/" in str(err.value)


def test_build_datasets_imagefolder(tmp_path: Path) -> None:
    for split in ("train", "val"):
        for i, cls in enumerate(["n01", "n02", "n03"]):
            _write(tmp_path / split / cls / "img.png", (i * 80, 0, 0), size=(50, 40))
    train, val = build_datasets("imagefolder", tmp_path, image_size=32)
    assert train.num_classes == val.num_classes == 3 and train.classes == val.classes
    assert train[0][0].shape == val[2][0].shape == (3, 32, 32)

    _write(tmp_path / "val" / "n04" / "img.png", (0, 0, 0))
    with pytest.raises(DataError, match="n04"):
        build_datasets("imagefolder", tmp_path)
    with pytest.raises(ConfigError, match="image_size"):
        build_datasets("imagefolder", tmp_path, size=3)
    with pytest.raises(ConfigError, match="cifar100, cifar10, imagefolder, digits"):
        build_datasets("imagenet", tmp_path)
    with pytest.raises(ConfigError, match="root"):
        build_datasets("imagefolder", None)
