"""CIFAR-10/100 from the standard python-pickle folders, plus a fake-data writer for tests."""

from __future__ import annotations

import pickle
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from kdforge.data.transforms import ToTensor
from kdforge.errors import DataError

__all__ = ["CIFAR", "write_fake_cifar"]

_SPECS: dict[str, dict[str, Any]] = {
    "cifar100": {
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "meta": "meta",
        "labels_key": "fine_labels",
        "names_key": "fine_label_names",
        "num_classes": 100,
    },
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "meta": "batches.meta",
        "labels_key": "labels",
        "names_key": "label_names",
        "num_classes": 10,
    },
}

_CIFAR10_NAMES = "airplane automobile bird cat deer dog frog horse ship truck".split()  # noqa: SIM905
_CIFAR100_NAMES = """apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy
bridge bus butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach
couch crab crocodile cup dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo
keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle mountain mouse
mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy
porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail
snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger
tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm""".split()  # noqa: SIM905


def _spec(name: str) -> dict[str, Any]:
    if name not in _SPECS:
        raise ValueError(f"unknown CIFAR variant {name!r}; expected one of {sorted(_SPECS)}")
    return _SPECS[name]


def _layout(name: str) -> str:
    spec = _spec(name)
    files = [*spec["train"], *spec["test"], spec["meta"]]
    lines = [f"    {'└' if i == len(files) - 1 else '├'}── {f}" for i, f in enumerate(files)]
    return "\n".join([f"  <root>/{spec['folder']}/", *lines])


def _resolve(root: Path, name: str) -> Path:
    """The folder holding the pickles: ``root/<folder>`` if it exists, else ``root`` itself."""
    spec = _spec(name)
    folder = root / spec["folder"] if (root / spec["folder"]).is_dir() else root
    expected = [*spec["train"], *spec["test"], spec["meta"]]
    missing = [f for f in expected if not (folder / f).is_file()]
    if missing:
        where = "does not exist" if not folder.is_dir() else f"lacks {', '.join(missing)}"
        raise DataError(
            f"{name} not found: {str(folder)!r} {where}. Expected the python-pickle layout "
            f"(root may be the parent folder or the {spec['folder']} folder itself):\n"
            f"{_layout(name)}"
        )
    return folder


def _unpickle(path: Path, name: str) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"{name}: missing file {str(path)!r}. Expected:\n{_layout(name)}")
    try:
        with path.open("rb") as f:
            obj = pickle.load(f, encoding="bytes")
    except Exception as exc:  # pickle raises many kinds on garbage input
        raise DataError(
            f"{name}: {str(path)!r} is not a CIFAR pickle ({exc}). Expected:\n{_layout(name)}"
        ) from exc
    if not isinstance(obj, dict):
        raise DataError(f"{name}: {str(path)!r} holds a {type(obj).__name__}, expected a dict")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _field(batch: dict[str, Any], key: str, path: Path, name: str) -> Any:
    if key not in batch:
        raise DataError(
            f"{name}: {str(path)!r} has no key b{key!r} (found {sorted(batch)}). "
            f"Expected:\n{_layout(name)}"
        )
    return batch[key]


class CIFAR(Dataset):
    """CIFAR-10 or CIFAR-100 read from the official python-pickle files.

    Args:
        root: The parent of ``cifar-100-python``/``cifar-10-batches-py``, or that folder.
        name: ``"cifar100"`` or ``"cifar10"``.
        train: Training split if true, else the test split.
        transform: Called on a ``PIL.Image`` (RGB, 32x32). Without one, items are
            ``ToTensor()`` outputs (CHW float in [0, 1]).

    Attributes:
        data: ``(N, 32, 32, 3)`` uint8 array. targets: labels. classes: class names.

    Raises:
        DataError: The folder or a file is missing, or a file is not a CIFAR pickle or has
            inconsistent contents.
    """

    def __init__(
        self,
        root: str | Path,
        name: str = "cifar100",
        train: bool = True,
        transform: Callable[[Image.Image], Any] | None = None,
    ) -> None:
        spec = _spec(name)
        self.name = name
        self.train = train
        self.transform = transform
        self.folder = _resolve(Path(root).expanduser(), name)

        meta_path = self.folder / spec["meta"]
        names = _field(_unpickle(meta_path, name), spec["names_key"], meta_path, name)
        self.classes: list[str] = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
        if len(self.classes) != spec["num_classes"]:
            raise DataError(
                f"{name}: {str(meta_path)!r} lists {len(self.classes)} classes, "
                f"expected {spec['num_classes']}"
            )

        chunks, targets = [], []
        for fname in spec["train" if train else "test"]:
            path = self.folder / fname
            batch = _unpickle(path, name)
            data = np.asarray(_field(batch, "data", path, name))
            labels = [int(y) for y in _field(batch, spec["labels_key"], path, name)]
            if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
                raise DataError(
                    f"{name}: {str(path)!r} b'data' must be an (N, 3072) uint8 array, "
                    f"got {data.dtype} {data.shape}"
                )
            if len(labels) != len(data):
                raise DataError(
                    f"{name}: {str(path)!r} has {len(data)} images but {len(labels)} labels"
                )
            if labels and not 0 <= min(labels) <= max(labels) < len(self.classes):
                raise DataError(
                    f"{name}: {str(path)!r} has labels outside [0, {len(self.classes)})"
                )
            chunks.append(data)
            targets.extend(labels)
        self.data: np.ndarray = np.ascontiguousarray(
            np.concatenate(chunks).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        )
        self.targets: list[int] = targets
        self._to_tensor = ToTensor()

    @property
    def num_classes(self) -> int:
        """Number of classes (10 or 100)."""
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        img = Image.fromarray(self.data[index])
        out = self.transform(img) if self.transform is not None else self._to_tensor(img)
        return out, self.targets[index]

    def __repr__(self) -> str:
        split = "train" if self.train else "test"
        return (
            f"CIFAR(name={self.name!r}, split={split}, n={len(self)}, folder={str(self.folder)!r})"
        )


class _Py2StrPickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes ``bytes`` with Python 2 ``str`` opcodes, as in the official CIFAR files.

    Readers then get bytes keys with ``encoding="bytes"`` and str keys with
    ``encoding="latin1"`` (torchvision's choice), exactly as with the real data.
    """

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def write_fake_cifar(
    root: str | Path,
    name: str = "cifar100",
    num_train: int = 1000,
    num_test: int = 200,
    seed: int = 0,
) -> Path:
    """Write a small CIFAR in the official pickle format; returns the dataset folder.

    Images are random uint8 (from ``numpy.random.default_rng(seed)``); labels cycle over all
    classes (``i % num_classes``). CIFAR-10 training images are split over five batch files.
    """
    spec = _spec(name)
    folder = Path(root).expanduser() / spec["folder"]
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    class_names = _CIFAR100_NAMES if name == "cifar100" else _CIFAR10_NAMES
    n_cls = spec["num_classes"]

    def dump(obj: dict[bytes, Any], fname: str) -> None:
        with (folder / fname).open("wb") as f:
            _Py2StrPickler(f, protocol=2).dump(obj)

    for split, total in (("train", num_train), ("test", num_test)):
        data = rng.integers(0, 256, size=(total, 3 * 32 * 32), dtype=np.uint8)
        labels = [i % n_cls for i in range(total)]
        files = spec[split]
        bounds = np.linspace(0, total, len(files) + 1).astype(int)
        for k, fname in enumerate(files):
            lo, hi = int(bounds[k]), int(bounds[k + 1])
            batch: dict[bytes, Any] = {
                b"batch_label": f"fake {split} batch {k + 1} of {len(files)}".encode(),
                b"filenames": [f"fake_{i:06d}.png".encode() for i in range(lo, hi)],
                b"data": data[lo:hi],
                spec["labels_key"].encode(): labels[lo:hi],
            }
            if name == "cifar100":
                batch[b"coarse_labels"] = [y % 20 for y in labels[lo:hi]]
            dump(batch, fname)

    meta: dict[bytes, Any] = {spec["names_key"].encode(): [n.encode() for n in class_names]}
    if name == "cifar100":
        meta[b"coarse_label_names"] = [f"coarse_{i:02d}".encode() for i in range(20)]
    else:
        meta[b"num_cases_per_batch"] = int(np.ceil(num_train / 5))
        meta[b"num_vis"] = 3 * 32 * 32
    dump(meta, spec["meta"])
    return folder
