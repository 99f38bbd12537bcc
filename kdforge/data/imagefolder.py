"""Images stored as ``root/<class>/<image>`` (the ImageNet layout), decoded with Pillow."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

from kdforge.data.bad_samples import SkipsBadSamples
from kdforge.data.decode import decode_image
from kdforge.data.transforms import ToTensor
from kdforge.errors import DataError

__all__ = ["IMAGE_EXTENSIONS", "ImageFolder"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

_LAYOUT = """  <root>/
    ├── <class_a>/
    │   ├── img_001.jpg
    │   └── ...
    └── <class_b>/
        └── ..."""


class ImageFolder(SkipsBadSamples, Dataset):
    """A classification data set with one sub-folder per class.

    Classes are the sorted names of the sub-folders of ``root`` (hidden ones, starting with
    ".", are skipped); images are found recursively inside each class folder and matched by
    extension, case-insensitively. Images are decoded lazily and converted to 8-bit RGB
    (:func:`~kdforge.data.decode.decode_image`: 16-bit grey is scaled, not clipped).

    Args:
        root: The folder holding the class folders.
        transform: Called on the RGB ``PIL.Image``. Without one, items are ``ToTensor()``
            outputs (CHW float in [0, 1]).
        extensions: File endings counted as images.
        on_bad_sample: ``"error"`` or ``"skip"`` an unreadable image (see
            :mod:`kdforge.data.bad_samples`).

    Raises:
        DataError: ``root`` is missing, has no class folders, or a class has no images.
    """

    def __init__(
        self,
        root: str | Path,
        transform: Callable[[Image.Image], Any] | None = None,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        on_bad_sample: str = "error",
    ) -> None:
        self.root = Path(root).expanduser()
        self.transform = transform
        self.extensions = tuple(e.lower() for e in extensions)
        if not self.root.is_dir():
            raise DataError(f"image folder {str(self.root)!r} does not exist. Expected:\n{_LAYOUT}")
        self.classes: list[str] = sorted(
            d.name for d in os.scandir(self.root) if d.is_dir() and not d.name.startswith(".")
        )
        if not self.classes:
            loose = [f for f in os.listdir(self.root) if f.lower().endswith(self.extensions)]
            found = (
                f" (it holds {len(loose)} images directly, e.g. {loose[0]!r}: move each into "
                "the folder of its class)"
                if loose
                else ""
            )
            raise DataError(
                f"image folder {str(self.root)!r} has no class sub-folders{found}. "
                f"Expected:\n{_LAYOUT}"
            )
        self.class_to_idx: dict[str, int] = {c: i for i, c in enumerate(self.classes)}
        self.samples: list[tuple[Path, int]] = []
        empty = []
        for idx, cls in enumerate(self.classes):
            files = self._find_images(self.root / cls)
            if not files:
                empty.append(cls)
            self.samples.extend((f, idx) for f in files)
        if empty:
            shown = ", ".join(empty[:10]) + (" ..." if len(empty) > 10 else "")
            raise DataError(
                f"image folder {str(self.root)!r}: {len(empty)} class folder(s) hold no images "
                f"with extensions {self.extensions}: {shown}. Expected:\n{_LAYOUT}"
            )
        self.targets: list[int] = [y for _, y in self.samples]
        self._to_tensor = ToTensor()
        self._init_policy(on_bad_sample)

    def _find_images(self, folder: Path) -> list[Path]:
        found = []
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            found.extend(
                Path(dirpath) / f
                for f in sorted(filenames)
                if f.lower().endswith(self.extensions) and not f.startswith(".")
            )
        return found

    @property
    def num_classes(self) -> int:
        """Number of class folders."""
        return len(self.classes)

    def load(self, index: int) -> Image.Image:
        """Decode image ``index`` as RGB; an unreadable file raises ``SampleError`` naming it."""
        return decode_image(self.samples[index][0])

    def sample_file(self, index: int) -> Path:
        """The image file of sample ``index``."""
        return self.samples[index][0]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        index, img = self._load_usable(index)  # under "skip", maybe another index
        out = self.transform(img) if self.transform is not None else self._to_tensor(img)
        return out, self.samples[index][1]

    def __repr__(self) -> str:
        return (
            f"ImageFolder(root={str(self.root)!r}, n={len(self)}, num_classes={self.num_classes})"
        )
