"""Semantic segmentation data: Cityscapes and generic image-folder + mask-folder layouts.

Cordts et al., "The Cityscapes Dataset for Semantic Urban Scene Understanding", CVPR 2016.
The official layout, as mmsegmentation reads it::

    <root>/leftImg8bit/{train,val}/<city>/<name>_leftImg8bit.png
    <root>/gtFine/{train,val}/<city>/<name>_gtFine_labelTrainIds.png   0..18, 255 ignore

The download holds ``*_gtFine_labelIds.png`` (34 classes); :func:`make_train_ids` writes the
``labelTrainIds`` files next to them with cityscapesScripts' 34 -> 19 mapping. A generic
layout pairs ``<images>/<rel>/<stem>.<ext>`` with ``<masks>/<rel>/<stem>.png`` (the shapes
generator writes ``<root>/{split}/`` and ``<root>/masks/{split}/``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from kdforge.data.bad_samples import DataProblems, SampleError, SkipsBadSamples
from kdforge.data.decode import (
    MASK_MODES,
    decode_image_cv,
    decode_mask,
    mask_mode_problem,
    read_header,
)
from kdforge.data.imagefolder import IMAGE_EXTENSIONS
from kdforge.errors import DataError

__all__ = [
    "CITYSCAPES_CLASSES",
    "LABEL_ID_TO_TRAIN_ID",
    "Cityscapes",
    "SegmentationFolder",
    "label_ids_to_train_ids",
    "make_train_ids",
]

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)  # fmt: skip

# cityscapesScripts labels.py: label id -> train id; every other id maps to 255 (ignored).
_TRAIN_ID_OF = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
    25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
LABEL_ID_TO_TRAIN_ID = np.full(256, 255, dtype=np.uint8)  # a lookup table over uint8 ids
LABEL_ID_TO_TRAIN_ID[list(_TRAIN_ID_OF)] = list(_TRAIN_ID_OF.values())

_IMG_SUFFIX = "_leftImg8bit.png"
_TRAIN_IDS, _LABEL_IDS = "_gtFine_labelTrainIds.png", "_gtFine_labelIds.png"
_LAYOUT = """  <root>/leftImg8bit/<split>/<city>/<name>_leftImg8bit.png
  <root>/gtFine/<split>/<city>/<name>_gtFine_labelTrainIds.png"""


def label_ids_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Map a uint8 ``labelIds`` array to train ids (0..18, 255 for every other label)."""
    return LABEL_ID_TO_TRAIN_ID[np.asarray(label_ids, dtype=np.uint8)]


def make_train_ids(root: str | Path, overwrite: bool = False) -> int:
    """Write ``*_gtFine_labelTrainIds.png`` next to every ``*_gtFine_labelIds.png`` under ``root``.

    Args:
        root: the Cityscapes folder (holding ``gtFine/``) or any folder below it.
        overwrite: rewrite existing train-id files.

    Returns:
        the number of files written.
    """
    root = Path(root).expanduser()
    sources = sorted(root.rglob(f"*{_LABEL_IDS}"))
    if not sources:
        raise DataError(f"no *{_LABEL_IDS} files under {str(root)!r}")
    written = 0
    for src in sources:
        dst = src.with_name(src.name.removesuffix(_LABEL_IDS) + _TRAIN_IDS)
        if dst.exists() and not overwrite:
            continue
        with Image.open(src) as img:
            train_ids = label_ids_to_train_ids(np.asarray(img))
        Image.fromarray(train_ids).save(dst)
        written += 1
    return written


def _size_problem(
    image: Path, size: tuple[int, int], mask: Path, mask_size: tuple[int, int]
) -> str:
    return (
        f"image {str(image)!r} is {size[0]}x{size[1]} but mask {str(mask)!r} is "
        f"{mask_size[0]}x{mask_size[1]} (width x height); a mask must cover its image pixel "
        "for pixel"
    )


def _find(folder: Path, suffixes: Sequence[str]) -> list[tuple[Path, str]]:
    """``(path, stem)`` of files under ``folder`` ending with one of ``suffixes`` (any case)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            suffix = next((s for s in suffixes if name.lower().endswith(s.lower())), None)
            if suffix is not None and not name.startswith("."):
                found.append((Path(dirpath) / name, name[: -len(suffix)]))
    return found


class SegmentationFolder(SkipsBadSamples, Dataset):
    """Images and label masks in two parallel folder trees, paired by relative path and stem.

    ``<image_dir>/<rel>/<stem><image suffix>`` goes with ``<mask_dir>/<rel>/<stem><mask_suffix>``.
    Masks hold class indices ``0..K-1`` and ``ignore_index`` (255), 8-bit (grey or palette)
    or 16-bit grey (ids kept, see :func:`~kdforge.data.decode.decode_mask`).

    At construction the file headers are read (not the pixels): a file that is no image, a
    colour mask or an image and mask of different sizes is reported then, every such pair
    at once. Decoding checks the rest (truncated files, ids that are not classes).

    Args:
        image_dir: the image tree.
        mask_dir: the mask tree.
        transform: ``t(image, mask) -> (image, mask)`` on numpy arrays (``seg_transforms``):
            an ``(H, W, 3)`` uint8 RGB image decoded with OpenCV as mmcv does, and an
            ``(H, W)`` mask of class ids read with Pillow as mmsegmentation does. Without
            one, items are ``(uint8 (3, H, W), int64 (H, W))`` tensors.
        classes: class names (index order); ``num_classes`` is their number.
        image_suffixes: file endings counted as images (case-insensitive).
        mask_suffix: the mask file ending.
        ignore_index: the mask value of unlabelled pixels.
        on_bad_sample: ``"error"`` or ``"skip"`` an unusable pair (see
            :mod:`kdforge.data.bad_samples`).

    Raises:
        DataError: a folder is missing, holds no images, an image has no mask, or (under
            ``on_bad_sample="error"``) a pair's headers show it cannot be used.
    """

    def __init__(
        self,
        image_dir: str | Path,
        mask_dir: str | Path,
        transform: Callable[[np.ndarray, np.ndarray], Any] | None = None,
        classes: Sequence[str] = CITYSCAPES_CLASSES,
        image_suffixes: Sequence[str] = IMAGE_EXTENSIONS,
        mask_suffix: str = ".png",
        ignore_index: int = 255,
        on_bad_sample: str = "error",
    ) -> None:
        self.image_dir, self.mask_dir = Path(image_dir).expanduser(), Path(mask_dir).expanduser()
        self.transform, self.classes = transform, tuple(classes)
        self.ignore_index = ignore_index
        for folder in (self.image_dir, self.mask_dir):
            if not folder.is_dir():
                raise DataError(f"{self._what()}: folder {str(folder)!r} does not exist")
        images = _find(self.image_dir, tuple(image_suffixes))
        if not images:
            raise DataError(
                f"{self._what()}: no images ending in {tuple(image_suffixes)} under "
                f"{str(self.image_dir)!r}"
            )
        self.samples: list[tuple[Path, Path]] = []
        lost = []
        for path, stem in images:
            rel = path.parent.relative_to(self.image_dir)
            mask = self.mask_dir / rel / f"{stem}{mask_suffix}"
            (self.samples if mask.is_file() else lost).append((path, mask))
        if lost:
            raise DataError(self._missing_masks(lost))
        self._init_policy(on_bad_sample)
        self._check_headers()

    def _header_problem(self, index: int) -> str | None:
        image_path, mask_path = self.samples[index]
        try:
            size, _ = read_header(image_path, "image")
            mask_size, mode = read_header(mask_path, "mask")
        except SampleError as err:
            return str(err)
        if mode not in MASK_MODES:
            return mask_mode_problem(mask_path, mode)
        return None if size == mask_size else _size_problem(image_path, size, mask_path, mask_size)

    def _check_headers(self) -> None:
        """Every pair's sizes and mask mode from the file headers (threads: I/O bound)."""
        with ThreadPoolExecutor(max_workers=min(8, len(self))) as pool:
            found = pool.map(self._header_problem, range(len(self)))
            bad = {i: problem for i, problem in enumerate(found) if problem}
        if not bad:
            return
        if self.on_bad_sample == "skip":
            self._skip_at_start(bad, self._what())
            return
        raise DataProblems(
            f"{self._what()}: {len(bad)} of {len(self)} image/mask pairs cannot be used:",
            list(bad.values()),
            "Fix or remove them, or skip them with on_bad_sample='skip' (--set "
            "data.on_bad_sample=skip); `kdforge check-data RECIPE` also decodes every pair.",
        )

    def _what(self) -> str:
        return type(self).__name__

    def _missing_masks(self, lost: list[tuple[Path, Path]]) -> str:
        shown = "\n".join(f"  {img} -> {mask}" for img, mask in lost[:5])
        return (
            f"{self._what()}: {len(lost)} of {len(lost) + len(self.samples)} images have no "
            f"mask; expected, e.g.:\n{shown}"
        )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Decode pair ``index`` as ``((H, W, 3) uint8 RGB image, (H, W) class ids)``; an
        unreadable file, a size mismatch or an id outside the classes raises a SampleError
        naming the file."""
        image_path, mask_path = self.samples[index]
        image = decode_image_cv(image_path)
        mask = np.asarray(decode_mask(mask_path, self.num_classes, self.ignore_index))
        if image.shape[:2] != mask.shape:
            size, mask_size = image.shape[1::-1], mask.shape[::-1]  # (w, h)
            raise SampleError(_size_problem(image_path, size, mask_path, mask_size), image_path)
        return image, mask

    def sample_file(self, index: int) -> Path:
        """The image file of sample ``index``."""
        return self.samples[index][0]

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        _, (image, mask) = self._load_usable(index)  # under "skip", maybe another pair
        if self.transform is not None:
            return self.transform(image, mask)
        tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))  # (3, H, W)
        return tensor, torch.from_numpy(mask.astype(np.int64))

    def __repr__(self) -> str:
        return (
            f"{self._what()}(image_dir={str(self.image_dir)!r}, n={len(self)}, "
            f"num_classes={self.num_classes})"
        )


class Cityscapes(SegmentationFolder):
    """Cityscapes ``split`` (``train``/``val``/``test``) with 19 train-id classes.

    Raises:
        DataError: the layout is wrong, or only ``*_labelIds.png`` exist (the
            message says how to write train ids: ``kdforge cityscapes-trainids ROOT``).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: Callable[[np.ndarray, np.ndarray], Any] | None = None,
        ignore_index: int = 255,
        on_bad_sample: str = "error",
    ) -> None:
        self.root, self.split = Path(root).expanduser(), split
        images, masks = self.root / "leftImg8bit" / split, self.root / "gtFine" / split
        if not images.is_dir() or not masks.is_dir():
            raise DataError(
                f"Cityscapes {split!r}: {str(images)!r} or {str(masks)!r} does not exist. "
                f"Expected:\n{_LAYOUT}"
            )
        super().__init__(
            images,
            masks,
            transform,
            CITYSCAPES_CLASSES,
            (_IMG_SUFFIX,),
            _TRAIN_IDS,
            ignore_index=ignore_index,
            on_bad_sample=on_bad_sample,
        )

    def _what(self) -> str:
        return f"Cityscapes {self.split!r}"

    def _missing_masks(self, lost: list[tuple[Path, Path]]) -> str:
        label_ids = lost[0][1].with_name(lost[0][1].name.removesuffix(_TRAIN_IDS) + _LABEL_IDS)
        if not label_ids.is_file():
            return f"{super()._missing_masks(lost)}\nExpected:\n{_LAYOUT}"
        return (
            f"{super()._missing_masks(lost)}\nOnly *{_LABEL_IDS} (34 label ids) exist; training "
            f"and evaluation use the 19 train ids. Write them once with\n"
            f"  kdforge cityscapes-trainids {self.root}\n"
            f"or in Python: kdforge.data.cityscapes.make_train_ids({str(self.root)!r})"
        )
