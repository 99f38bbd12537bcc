"""Objects365 v2 detection data, read as mmdetection 3.x's ``Objects365V2Dataset`` reads it.

The layout (mmdetection ``configs/_base_/datasets/objects365v2_detection.py``, data root
``data/Objects365/Obj365_v2/``) is :data:`OBJECTS365V2_LAYOUT`. The annotation files are COCO
format; their ``file_name`` entries (``images/v1/patch8/objects365_v1_00420917.jpg``) are cut
to the last folder and the file (``patch8/objects365_v1_00420917.jpg``) and read below
``train/`` or ``val/``, as mmdetection does. Three images that the files list but the
download lacks (:data:`OBJECTS365V2_IGNORED`) are left out, as mmdetection leaves them out.
Unlike mmdetection, which fails when it reaches one, any other listed image that is missing
is left out too, with one warning that counts them (Objects365 downloads often miss a few).
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

from kdforge.data import presets
from kdforge.data._objects365_classes import OBJECTS365V2_CLASSES
from kdforge.data.bad_samples import DataWarning
from kdforge.data.coco import CocoDetection, Target
from kdforge.data.det_transforms import Scale
from kdforge.data.shapes import write_shapes_dataset
from kdforge.errors import DataError

__all__ = [
    "OBJECTS365V2_CLASSES",
    "OBJECTS365V2_IGNORED",
    "OBJECTS365V2_LAYOUT",
    "Objects365V2",
    "build_objects365v2_datasets",
    "patch_file_name",
    "write_objects365v2_dataset",
]

OBJECTS365V2_LAYOUT = """  <root>/                      (mmdetection: data/Objects365/Obj365_v2/)
    ├── annotations/
    │   ├── zhiyuan_objv2_train.json
    │   └── zhiyuan_objv2_val.json
    ├── train/
    │   ├── patch0/
    │   │   ├── objects365_v1_00000000.jpg
    │   │   └── ...
    │   └── ... (patch1/ to the last patch)
    └── val/
        └── patch0/ ..."""

# mmdetection's objv2_ignore_list: listed in zhiyuan_objv2_train.json, absent from the download
OBJECTS365V2_IGNORED = frozenset(
    {
        "patch16/objects365_v2_00908726.jpg",
        "patch6/objects365_v1_00320532.jpg",
        "patch6/objects365_v1_00320534.jpg",
    }
)
_MAX_NAMED = 3  # class-name mismatches or missing files named in one message


def patch_file_name(file_name: str) -> str:
    """``images/v2/patch16/x.jpg`` -> ``patch16/x.jpg``: the last folder and the file, as
    mmdetection's ``Objects365V2Dataset`` joins them (a bare ``x.jpg`` stays as it is)."""
    path = PurePosixPath(file_name)
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


class _Listing:
    """Which files exist below ``root``: one ``os.listdir`` per folder, not a stat per image."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._folders: dict[str, set[str]] = {}

    def __contains__(self, name: str) -> bool:
        folder, _, file = name.rpartition("/")
        if folder not in self._folders:
            path = self.root / folder
            self._folders[folder] = set(os.listdir(path)) if path.is_dir() else set()
        return file in self._folders[folder]


class Objects365V2(CocoDetection):
    """Objects365 v2 (365 classes); items as :class:`~kdforge.data.coco.CocoDetection`'s.

    Labels follow the category ids (1..365 -> 0..364); the file's category names must be
    :data:`OBJECTS365V2_CLASSES` in that order, as mmdetection's class list (a file with other
    names fails naming the first differences). Images in :data:`OBJECTS365V2_IGNORED` and images
    missing from ``root`` are left out with their boxes; the missing ones are counted in
    ``missing_images`` and warned about once (a :class:`~kdforge.data.bad_samples.DataWarning`
    naming how many and a few of them), and listed in ``notes`` for ``kdforge check-data``.
    Present but unreadable images follow ``on_bad_sample``.

    Args:
        root: The image folder of a split (``Obj365_v2/train``), holding ``patch*/``.
        ann_file: Its annotation file (``Obj365_v2/annotations/zhiyuan_objv2_train.json``).
        transform, filter_empty_gt, min_size, on_bad_sample: As ``CocoDetection``'s.

    Attributes:
        ignored_images: Images of :data:`OBJECTS365V2_IGNORED` the file listed.
        missing_images: The other listed images absent from ``root`` (``patchN/name.jpg``).

    Raises:
        DataError: the class names differ from mmdetection's, ``root`` does not exist or
            holds none of the listed images, or anything ``CocoDetection`` refuses.
    """

    def __init__(
        self,
        root: str | Path,
        ann_file: str | Path,
        transform: Callable[[np.ndarray, Target], tuple[Any, Target]] | None = None,
        filter_empty_gt: bool = False,
        min_size: int = 0,
        on_bad_sample: str = "error",
    ) -> None:
        self.ignored_images = 0
        self.missing_images: list[str] = []
        super().__init__(root, ann_file, transform, filter_empty_gt, min_size, on_bad_sample)
        if self.missing_images:
            shown = ", ".join(self.missing_images[:_MAX_NAMED])
            more = " ..." if len(self.missing_images) > _MAX_NAMED else ""
            self.notes.append(
                f"{len(self.missing_images)} image(s) listed in {str(self.ann_file)!r} are "
                f"missing from {str(self.root)!r} and were left out with their boxes: "
                f"{shown}{more}"
            )
            warnings.warn(self.notes[-1], DataWarning, stacklevel=2)

    def _read_annotations(self) -> dict[str, Any]:
        data = super()._read_annotations()
        self._check_classes(data["categories"])
        if not self.root.is_dir():
            raise DataError(
                f"image folder {str(self.root)!r} does not exist. Expected Objects365 v2 as "
                f"mmdetection lays it out:\n{OBJECTS365V2_LAYOUT}"
            )
        listing, kept = _Listing(self.root), []
        for img in data["images"]:
            img["file_name"] = patch_file_name(img["file_name"])
            if img["file_name"] in OBJECTS365V2_IGNORED:
                self.ignored_images += 1
            elif img["file_name"] in listing:
                kept.append(img)
            else:
                self.missing_images.append(img["file_name"])
        if data["images"] and not kept:
            raise DataError(
                f"none of the {len(data['images'])} images listed in {str(self.ann_file)!r} is "
                f"in {str(self.root)!r} (looked for e.g. {data['images'][0]['file_name']!r}). "
                f"Expected:\n{OBJECTS365V2_LAYOUT}"
            )
        if len(kept) < len(data["images"]):
            ids = {img["id"] for img in kept}
            data["images"] = kept
            data["annotations"] = [a for a in data["annotations"] if a["image_id"] in ids]
        return data

    def _check_classes(self, categories: list[dict[str, Any]]) -> None:
        names = [str(c.get("name")) for c in sorted(categories, key=lambda c: c["id"])]
        if tuple(names) == OBJECTS365V2_CLASSES:
            return
        wrong = [
            f"label {i}: {got!r} where mmdetection has {want!r}"
            for i, (got, want) in enumerate(zip(names, OBJECTS365V2_CLASSES, strict=False))
            if got != want
        ][:_MAX_NAMED]
        raise DataError(
            f"{str(self.ann_file)!r} is not an Objects365 v2 annotation file: its "
            f"{len(names)} categories (by id) are not the 365 of mmdetection's "
            f"Objects365V2Dataset{': ' + '; '.join(wrong) if wrong else ''}. Use the "
            "official zhiyuan_objv2_{train,val}.json, or data.name=coco for other COCO files"
        )

    def __repr__(self) -> str:
        return f"Objects365V2(root={str(self.root)!r}, n={len(self)})"


def build_objects365v2_datasets(
    root: str | Path,
    train_split: str = "train",
    val_split: str = "val",
    scale: Scale = (1333, 800),
    train_scales: Sequence[Scale] | None = None,
    multiscale_mode: str = "range",
    normalize: str = "pytorch",
    on_bad_sample: str = "error",
) -> tuple[Objects365V2, Objects365V2]:
    """``(train, val)`` from ``root/annotations/zhiyuan_objv2_<split>.json`` and ``root/<split>/``.

    As mmdetection's Objects365 v2 loaders: training drops images without boxes or under 32
    px; the pipelines and options are :func:`~kdforge.data.build.build_coco_datasets`'s.
    """
    root = Path(root).expanduser()
    ann = root / "annotations"
    train = Objects365V2(
        root / train_split,
        ann / f"zhiyuan_objv2_{train_split}.json",
        presets.detection_train(scale, train_scales, multiscale_mode, normalize),
        filter_empty_gt=True,
        min_size=32,
        on_bad_sample=on_bad_sample,
    )
    val_ann = ann / f"zhiyuan_objv2_{val_split}.json"
    val_tf = presets.detection_eval(scale, normalize)
    return train, Objects365V2(root / val_split, val_ann, val_tf, on_bad_sample=on_bad_sample)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def write_objects365v2_dataset(
    root: str | Path,
    num_train: int = 4,
    num_val: int = 2,
    image_size: tuple[int, int] | Sequence[tuple[int, int]] = (96, 96),
    seed: int = 0,
) -> Path:
    """Write a tiny Objects365 v2 look-alike (for tests) in :data:`OBJECTS365V2_LAYOUT`.

    The images and boxes are :func:`~kdforge.data.shapes.write_shapes_dataset`'s (same
    arguments), saved as JPEG in turn under ``patch0/`` and ``patch1/`` as
    ``objects365_v2_<8-digit id>.jpg`` and listed as ``images/v2/patchN/...`` as the official
    files list them; the four shape classes are categories 1, 101, 201 and 365 of all 365.
    The training file also lists the three :data:`OBJECTS365V2_IGNORED` images (one box each),
    which are not written, as in the official download. Returns ``root`` as a ``Path``.
    """
    root = Path(root).expanduser()
    shape_ids = (1, 101, 201, 365)
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(OBJECTS365V2_CLASSES)]
    with tempfile.TemporaryDirectory() as tmp:
        shapes = write_shapes_dataset(tmp, num_train, num_val, image_size, seed)
        for split in ("train", "val"):
            data = json.loads((shapes / "annotations" / f"instances_{split}.json").read_text())
            for img in data["images"]:
                patch = f"patch{(img['id'] - 1) % 2}"
                name = f"objects365_v2_{img['id']:08d}.jpg"
                (root / split / patch).mkdir(parents=True, exist_ok=True)
                rgb = Image.open(shapes / split / img["file_name"]).convert("RGB")
                rgb.save(root / split / patch / name, quality=95)
                img["file_name"] = f"images/v2/{patch}/{name}"
            annotations = [
                {k: v for k, v in a.items() if k != "segmentation"} for a in data["annotations"]
            ]
            for a in annotations:
                a["category_id"] = shape_ids[a["category_id"] - 1]
            if split == "train":
                for k, ignored in enumerate(sorted(OBJECTS365V2_IGNORED)):
                    image_id = len(data["images"]) + 1
                    folder = "v1" if "_v1_" in ignored else "v2"
                    entry = {"id": image_id, "file_name": f"images/{folder}/{ignored}"}
                    data["images"].append({**entry, "width": 64, "height": 48})
                    box = {"bbox": [4, 4, 20 + k, 20], "area": 20 * (20 + k), "iscrowd": 0}
                    ann = {"id": len(annotations) + 1, "image_id": image_id, "category_id": 1}
                    annotations.append({**ann, **box})
            (root / "annotations").mkdir(parents=True, exist_ok=True)
            _write_json(
                root / "annotations" / f"zhiyuan_objv2_{split}.json",
                {"images": data["images"], "annotations": annotations, "categories": categories},
            )
    return root
