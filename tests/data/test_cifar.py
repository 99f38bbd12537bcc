"""CIFAR reader round trips through write_fake_cifar, and loud errors on bad folders."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kdforge.data import CIFAR, build_datasets, write_fake_cifar
from kdforge.data.transforms import ToTensor
from kdforge.errors import DataError


def _raw(folder: Path, fname: str) -> dict:
    with (folder / fname).open("rb") as f:
        return pickle.load(f, encoding="bytes")


@pytest.mark.parametrize(
    ("name", "folder", "n_cls", "labels_key"),
    [
        ("cifar100", "cifar-100-python", 100, b"fine_labels"),
        ("cifar10", "cifar-10-batches-py", 10, b"labels"),
    ],
)
def test_round_trip(tmp_path: Path, name: str, folder: str, n_cls: int, labels_key: bytes) -> None:
    out = write_fake_cifar(tmp_path, name, num_train=230, num_test=120, seed=1)
    assert out == tmp_path / folder
    train_files = ["train"] if name == "cifar100" else [f"data_batch_{i}" for i in range(1, 6)]
    test_file = "test" if name == "cifar100" else "test_batch"
    raw_data = np.concatenate([_raw(out, f)[b"data"] for f in train_files])
    raw_labels = [y for f in train_files for y in _raw(out, f)[labels_key]]

    for root in (tmp_path, out, str(out)):  # parent folder or the inner folder
        train = CIFAR(root, name, train=True)
        assert len(train) == 230 and train.num_classes == len(train.classes) == n_cls
        assert train.targets == raw_labels == [i % n_cls for i in range(230)]
        assert train.data.shape == (230, 32, 32, 3) and train.data.dtype == np.uint8
        np.testing.assert_array_equal(train.data.transpose(0, 3, 1, 2).reshape(230, -1), raw_data)

    test = CIFAR(tmp_path, name, train=False)
    assert len(test) == 120
    raw_test = _raw(out, test_file)
    with (out / test_file).open("rb") as f:  # torchvision reads with latin1: str keys
        as_str = pickle.load(f, encoding="latin1")
    np.testing.assert_array_equal(as_str["data"], raw_test[b"data"])
    assert as_str[labels_key.decode()] == raw_test[labels_key]
    np.testing.assert_array_equal(
        test.data[7], raw_test[b"data"][7].reshape(3, 32, 32).transpose(1, 2, 0)
    )
    assert sorted(set(test.targets)) == list(range(n_cls))

    x, y = test[7]
    assert isinstance(y, int) and y == 7 % n_cls
    expected = torch.from_numpy(raw_test[b"data"][7].reshape(3, 32, 32)).float() / 255
    torch.testing.assert_close(x, expected)

    seen = []
    CIFAR(tmp_path, name, train=False, transform=lambda im: seen.append(im) or ToTensor()(im))[0]
    assert isinstance(seen[0], Image.Image) and seen[0].mode == "RGB" and seen[0].size == (32, 32)


def test_class_names_and_seed(tmp_path: Path) -> None:
    write_fake_cifar(tmp_path / "a", "cifar100", num_train=100, num_test=100, seed=0)
    write_fake_cifar(tmp_path / "b", "cifar100", num_train=100, num_test=100, seed=0)
    write_fake_cifar(tmp_path / "c", "cifar100", num_train=100, num_test=100, seed=1)
    a, b, c = (CIFAR(tmp_path / k) for k in "abc")
    np.testing.assert_array_equal(a.data, b.data)
    assert not np.array_equal(a.data, c.data)
    assert a.classes[:3] == ["apple", "aquarium_fish", "baby"] and len(set(a.classes)) == 100
    assert CIFAR(write_fake_cifar(tmp_path, "cifar10", 10, 10), "cifar10").classes[0] == "airplane"


def test_build_datasets_cifar(tmp_path: Path) -> None:
    write_fake_cifar(tmp_path, "cifar10", num_train=50, num_test=20)
    train, val = build_datasets("cifar10", str(tmp_path))
    assert (len(train), len(val)) == (50, 20)
    assert train.num_classes == val.num_classes == 10 and train.classes == val.classes
    x, _ = train[0]
    assert x.shape == (3, 32, 32) and x.min() < 0  # normalised


def test_missing_folder_shows_layout(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        CIFAR(tmp_path / "nope", "cifar100")
    msg = str(err.value)
    assert str(tmp_path / "nope") in msg and "does not exist" in msg
    assert "cifar-100-python/" in msg and "├── train" in msg and "meta" in msg

    (tmp_path / "cifar-10-batches-py").mkdir()
    with pytest.raises(DataError) as err:
        CIFAR(tmp_path, "cifar10")
    msg = str(err.value)
    assert str(tmp_path / "cifar-10-batches-py") in msg and "data_batch_1" in msg
    assert "batches.meta" in msg and "test_batch" in msg


def test_partial_folder_names_missing_files(tmp_path: Path) -> None:
    out = write_fake_cifar(tmp_path, "cifar10", num_train=10, num_test=10)
    (out / "data_batch_3").unlink()
    with pytest.raises(DataError, match="lacks data_batch_3"):
        CIFAR(tmp_path, "cifar10")


def test_malformed_files(tmp_path: Path) -> None:
    out = write_fake_cifar(tmp_path, "cifar100", num_train=10, num_test=10)
    (out / "train").write_bytes(b"not a pickle at all")
    with pytest.raises(DataError, match="not a CIFAR pickle") as err:
        CIFAR(tmp_path)
    assert str(out / "train") in str(err.value) and "cifar-100-python/" in str(err.value)

    with (out / "train").open("wb") as f:
        pickle.dump({b"data": np.zeros((3, 100), np.uint8), b"fine_labels": [0, 1, 2]}, f)
    with pytest.raises(DataError, match="3072"):
        CIFAR(tmp_path)

    with (out / "train").open("wb") as f:
        pickle.dump({b"data": np.zeros((3, 3072), np.uint8)}, f)
    with pytest.raises(DataError, match="fine_labels") as err:
        CIFAR(tmp_path)
    assert "├── train" in str(err.value)

    with (out / "train").open("wb") as f:
        pickle.dump({b"data": np.zeros((3, 3072), np.uint8), b"fine_labels": [0, 1]}, f)
    with pytest.raises(DataError, match="3 images but 2 labels"):
        CIFAR(tmp_path)


def test_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cifar10"):
        CIFAR(tmp_path, "cifar1000")
