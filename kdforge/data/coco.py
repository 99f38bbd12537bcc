"""COCO-format detection data: ``annotations/instances_<split>.json`` + ``<split>/`` images.

Annotations are parsed as mmdetection's ``CocoDataset`` does: a box is dropped when it does
not overlap the image, has ``area <= 0``, ``w < 1`` or ``h < 1``, or is marked ``ignore``;
``iscrowd=1`` boxes go to ``ignore_boxes``; category ids, sorted, map to labels ``0..K-1``.
Every problem in the file (bad JSON, a missing key, an unknown category or image id, a missing
image file) fails at construction naming the file and the entry.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from kdforge.data.transforms import ToTensor
from kdforge.errors import DataError

__all__ = ["COCO_LAYOUT", "CocoDetection", "read_coco_json"]

COCO_LAYOUT = """  <root>/
    ├── annotations/
    │   ├── instances_train2017.json
    │   └── instances_val2017.json
    ├── train2017/
    │   ├── 000000000009.jpg
    │   └── ...
    └── val2017/
        └── ..."""

Target = dict[str, Any]


def _fail(path: Path, where: str, problem: str) -> DataError:
    return DataError(f"{str(path)!r}: {where}: {problem}. Expected COCO format:\n{COCO_LAYOUT}")


def _int_field(path: Path, where: str, entry: Any, key: str) -> int:
    if not isinstance(entry, dict):
        raise _fail(path, where, f"expected an object, got {type(entry).__name__}")
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(path, where, f"{key!r} must be an integer, got {value!r}")
    return value


def read_coco_json(path: str | Path) -> dict[str, Any]:
    """Load and check a COCO instances file; fills a missing ``area`` (w*h) and ``iscrowd`` (0).

    Raises:
        DataError: ``path`` does not exist, or holds invalid JSON, a missing top-level key or
            a malformed, duplicate or dangling entry; the message names the file and the
            entry (``annotations[3] (id 17)``).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"annotation file {str(path)!r} does not exist. Expected:\n{COCO_LAYOUT}")
    try:
        with path.open("rb") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _fail(path, "not valid JSON", str(exc)) from exc
    keys = ("images", "annotations", "categories")
    bad = [k for k in keys if not isinstance(data, dict) or not isinstance(data.get(k), list)]
    if bad:
        raise _fail(path, "top level", f"key(s) {bad} missing or not lists")
    cat_ids: set[int] = set()
    for i, cat in enumerate(data["categories"]):
        cat_id = _int_field(path, f"categories[{i}]", cat, "id")
        if cat_id in cat_ids:
            raise _fail(path, f"categories[{i}]", f"duplicate category id {cat_id}")
        cat_ids.add(cat_id)
    image_ids: set[int] = set()
    for i, img in enumerate(data["images"]):
        where = f"images[{i}]"
        image_id = _int_field(path, where, img, "id")
        where = f"images[{i}] (id {image_id})"
        if image_id in image_ids:
            raise _fail(path, where, "duplicate image id")
        if not isinstance(img.get("file_name"), str):
            raise _fail(path, where, f"'file_name' must be a string, got {img.get('file_name')!r}")
        if min(_int_field(path, where, img, "width"), _int_field(path, where, img, "height")) < 1:
            raise _fail(path, where, "'width' and 'height' must be positive")
        image_ids.add(image_id)
    for i, ann in enumerate(data["annotations"]):
        where = f"annotations[{i}] (id {ann.get('id') if isinstance(ann, dict) else '?'})"
        if _int_field(path, where, ann, "image_id") not in image_ids:
            raise _fail(path, where, f"image_id {ann['image_id']} is not among the images")
        if _int_field(path, where, ann, "category_id") not in cat_ids:
            raise _fail(
                path,
                where,
                f"category_id {ann['category_id']} is not among the categories {sorted(cat_ids)}",
            )
        box = ann.get("bbox")
        if not (
            isinstance(box, list)
            and len(box) == 4
            and all(isinstance(v, int | float) and math.isfinite(v) for v in box)
        ):
            raise _fail(path, where, f"'bbox' must be 4 finite numbers [x, y, w, h], got {box!r}")
        ann.setdefault("area", box[2] * box[3])
        ann.setdefault("iscrowd", 0)
        if not isinstance(ann["area"], int | float):
            raise _fail(path, where, f"'area' must be a number, got {ann['area']!r}")
    return data


def _parse_boxes(anns: list[dict], width: int, height: int, cat2label: dict[int, int]) -> Target:
    """mmdetection's ``_parse_ann_info``: xyxy boxes, labels and crowd (ignored) boxes."""
    boxes, labels, ignore = [], [], []
    for ann in anns:
        if ann.get("ignore", False):
            continue
        x, y, w, h = ann["bbox"]
        inter_w = max(0, min(x + w, width) - max(x, 0))
        inter_h = max(0, min(y + h, height) - max(y, 0))
        if inter_w * inter_h == 0 or ann["area"] <= 0 or w < 1 or h < 1:
            continue
        if ann["iscrowd"]:
            ignore.append([x, y, x + w, y + h])
        else:
            boxes.append([x, y, x + w, y + h])
            labels.append(cat2label[ann["category_id"]])
    return {
        "boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        "labels": np.asarray(labels, dtype=np.int64),
        "ignore_boxes": np.asarray(ignore, dtype=np.float32).reshape(-1, 4),
    }


class CocoDetection(Dataset):
    """A COCO-format detection data set; items are ``(image, target)``.

    ``target`` holds ``boxes`` (``(M, 4)`` float xyxy pixels), ``labels`` (``(M,)`` long,
    contiguous), ``ignore_boxes`` (``(K, 4)``, the crowd boxes), ``image_id``, ``orig_size``
    ``(h, w)``, ``img_shape`` ``(h, w)`` after transforms, ``scale_factor`` ``(w_scale,
    h_scale)`` and ``flip``.

    Args:
        root: The image folder (``coco/val2017``).
        ann_file: The instances JSON (``coco/annotations/instances_val2017.json``).
        transform: ``transform(pil_image, target) -> (image, target)``, e.g. from
            ``kdforge.data.presets``. Without one the image is ``ToTensor()``'s CHW in [0, 1].
        filter_empty_gt: Drop images without annotations (mmdetection does so for training).
        min_size: Drop images whose shorter side is below this (mmdetection trains with 32).

    Attributes:
        cat_ids: Sorted COCO category ids; ``label2cat[label]`` is ``cat_ids[label]``.
        classes: Category names in label order.
    """

    def __init__(
        self,
        root: str | Path,
        ann_file: str | Path,
        transform: Callable[[Image.Image, Target], tuple[Any, Target]] | None = None,
        filter_empty_gt: bool = False,
        min_size: int = 0,
    ) -> None:
        self.root = Path(root).expanduser()
        self.ann_file = Path(ann_file).expanduser()
        self.transform = transform
        data = read_coco_json(self.ann_file)
        if not self.root.is_dir():
            raise DataError(
                f"image folder {str(self.root)!r} does not exist. Expected:\n{COCO_LAYOUT}"
            )
        cats = sorted(data["categories"], key=lambda c: c["id"])
        self.cat_ids: list[int] = [c["id"] for c in cats]
        self.classes: list[str] = [str(c.get("name", c["id"])) for c in cats]
        self.cat2label = {cat_id: i for i, cat_id in enumerate(self.cat_ids)}
        self.label2cat = dict(enumerate(self.cat_ids))
        by_image: dict[int, list[dict]] = {img["id"]: [] for img in data["images"]}
        for ann in data["annotations"]:
            by_image[ann["image_id"]].append(ann)
        self.images: list[dict[str, Any]] = [
            img
            for img in data["images"]
            if (by_image[img["id"]] or not filter_empty_gt)
            and min(img["width"], img["height"]) >= min_size
        ]
        self._check_files()
        self._targets = [
            _parse_boxes(by_image[img["id"]], img["width"], img["height"], self.cat2label)
            for img in self.images
        ]
        self._to_tensor = ToTensor()

    def _check_files(self) -> None:
        present = set(os.listdir(self.root))
        missing = [
            (i, img)
            for i, img in enumerate(self.images)
            if img["file_name"] not in present and not (self.root / img["file_name"]).is_file()
        ]
        if missing:
            shown = ", ".join(
                f"image id {img['id']} {img['file_name']!r}" for _, img in missing[:5]
            )
            raise DataError(
                f"{len(missing)} of {len(self.images)} images listed in {str(self.ann_file)!r} are "
                f"missing from {str(self.root)!r}: {shown}{' ...' if len(missing) > 5 else ''}. "
                f"Expected:\n{COCO_LAYOUT}"
            )

    @property
    def num_classes(self) -> int:
        """Number of categories."""
        return len(self.cat_ids)

    def load(self, index: int) -> Image.Image:
        """Decode image ``index`` as RGB; a bad file or a size unlike the JSON's raises."""
        info = self.images[index]
        path = self.root / info["file_name"]
        try:
            with Image.open(path) as img:
                rgb = img.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise DataError(f"cannot decode image {str(path)!r}: {exc}") from exc
        if rgb.size != (info["width"], info["height"]):
            raise DataError(
                f"image {str(path)!r} is {rgb.width}x{rgb.height} but {str(self.ann_file)!r} "
                f"says {info['width']}x{info['height']} (image id {info['id']})"
            )
        return rgb

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Any, Target]:
        img = self.load(index)
        info, parsed = self.images[index], self._targets[index]
        target: Target = {k: torch.from_numpy(v.copy()) for k, v in parsed.items()}
        size = (info["height"], info["width"])
        target.update(
            image_id=info["id"], orig_size=size, img_shape=size, scale_factor=(1.0, 1.0), flip=False
        )
        if self.transform is not None:
            return self.transform(img, target)
        return self._to_tensor(img), target

    def __repr__(self) -> str:
        return (
            f"CocoDetection(root={str(self.root)!r}, n={len(self)}, num_classes={self.num_classes})"
        )
