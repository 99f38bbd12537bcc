"""COCO-format detection data: ``annotations/instances_<split>.json`` + ``<split>/`` images.

Annotations are parsed as mmdetection's ``CocoDataset`` does: a box is dropped when it does
not overlap the image, has ``area <= 0``, ``w < 1`` or ``h < 1``, or is marked ``ignore``;
``iscrowd=1`` boxes go to ``ignore_boxes``; category ids, sorted, map to labels ``0..K-1``.
With ``with_masks=True`` each box also gets its instance mask (:mod:`~kdforge.data.instance_masks`).
Every problem in the file (bad JSON, a missing key, an unknown category or image id, a missing
image file) fails at construction naming the file and the entry.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from kdforge.data.bad_samples import DataProblems, DataWarning, SampleError, SkipsBadSamples
from kdforge.data.decode import decode_image_cv
from kdforge.data.instance_masks import check_segmentations, decode_masks, usable_polygons
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


def _where(path: Path, where: str, problem: str) -> str:
    return f"{str(path)!r}: {where}: {problem}"


def _fail(path: Path, where: str, problem: str) -> DataError:
    return DataError(f"{_where(path, where, problem)}. Expected COCO format:\n{COCO_LAYOUT}")


def _int_field(entry: dict[str, Any], key: str) -> str | None:
    """What is wrong with ``entry[key]`` as an integer, or None."""
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        return f"{key!r} must be an integer, got {value!r}"
    return None


def _entries(data: dict[str, Any], key: str, problems: list[str], path: Path) -> list[dict]:
    """The object entries of ``data[key]``; any other entry is a problem."""
    good = []
    for i, entry in enumerate(data[key]):
        if isinstance(entry, dict):
            good.append(entry)
        else:
            problems.append(
                _where(path, f"{key}[{i}]", f"expected an object, got {type(entry).__name__}")
            )
    return good


def _check_categories(data: dict[str, Any], path: Path, problems: list[str]) -> set[int]:
    cat_ids: set[int] = set()
    for i, cat in enumerate(_entries(data, "categories", problems, path)):
        problem = _int_field(cat, "id")
        if problem is None and cat["id"] in cat_ids:
            problem = f"duplicate category id {cat['id']}"
        if problem:
            problems.append(_where(path, f"categories[{i}]", problem))
        else:
            cat_ids.add(cat["id"])
    if not data["categories"]:
        problems.append(_where(path, "categories", "the list is empty: no classes to learn"))
    return cat_ids


def _check_images(data: dict[str, Any], path: Path, problems: list[str]) -> set[int]:
    image_ids: set[int] = set()
    for i, img in enumerate(_entries(data, "images", problems, path)):
        problem = _int_field(img, "id")
        if problem:
            problems.append(_where(path, f"images[{i}]", problem))
            continue
        where = f"images[{i}] (id {img['id']})"
        found = [p for p in (_int_field(img, "width"), _int_field(img, "height")) if p]
        if img["id"] in image_ids:
            found.append("duplicate image id")
        if not isinstance(img.get("file_name"), str):
            found.append(f"'file_name' must be a string, got {img.get('file_name')!r}")
        if not found and min(img["width"], img["height"]) < 1:
            found.append("'width' and 'height' must be positive")
        problems.extend(_where(path, where, p) for p in found)
        image_ids.add(img["id"])
    return image_ids


def _check_annotations(
    data: dict[str, Any], path: Path, problems: list[str], image_ids: set[int], cat_ids: set[int]
) -> None:
    for i, ann in enumerate(_entries(data, "annotations", problems, path)):
        where = f"annotations[{i}] (id {ann.get('id', '?')})"
        found = [p for p in (_int_field(ann, "image_id"), _int_field(ann, "category_id")) if p]
        if not found and ann["image_id"] not in image_ids:
            found.append(f"image_id {ann['image_id']} is not among the images")
        if not found and ann["category_id"] not in cat_ids:
            found.append(
                f"category_id {ann['category_id']} is not among the categories {sorted(cat_ids)}"
            )
        box = ann.get("bbox")
        if not (
            isinstance(box, list)
            and len(box) == 4
            and all(isinstance(v, int | float) and math.isfinite(v) for v in box)
        ):
            found.append(f"'bbox' must be 4 finite numbers [x, y, w, h], got {box!r}")
        else:
            ann.setdefault("area", box[2] * box[3])
        ann.setdefault("iscrowd", 0)
        if "area" in ann and not isinstance(ann["area"], int | float):
            found.append(f"'area' must be a number, got {ann['area']!r}")
        problems.extend(_where(path, where, p) for p in found)


def read_coco_json(path: str | Path) -> dict[str, Any]:
    """Load and check a COCO instances file; fills a missing ``area`` (w*h) and ``iscrowd`` (0).

    Raises:
        DataError: ``path`` does not exist or holds invalid JSON or a missing top-level key;
            :class:`~kdforge.data.bad_samples.DataProblems` (a DataError) lists every
            malformed, duplicate or dangling entry, each naming the file and the entry
            (``annotations[3] (id 17)``).
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
    problems: list[str] = []
    cat_ids = _check_categories(data, path, problems)
    image_ids = _check_images(data, path, problems)
    _check_annotations(data, path, problems, image_ids, cat_ids)
    if problems:
        raise DataProblems(
            f"{str(path)!r}: {len(problems)} problem(s):",
            problems,
            f"Expected COCO format:\n{COCO_LAYOUT}",
        )
    return data


def _parse_boxes(
    anns: list[dict], width: int, height: int, cat2label: dict[int, int], with_masks: bool = False
) -> tuple[Target, list, int]:
    """mmdetection's ``_parse_ann_info``: xyxy boxes, labels and crowd (ignored) boxes, the
    segmentation of each box (``with_masks``; a box without a usable polygon is ignored, as
    mmdetection's ``ignore_flag``), and the number of boxes dropped as invalid (outside the
    image, ``area <= 0``, ``w, h < 1``)."""
    boxes, labels, ignore, segms = [], [], [], []
    dropped = 0
    for ann in anns:
        if ann.get("ignore", False):
            continue
        x, y, w, h = ann["bbox"]
        inter_w = max(0, min(x + w, width) - max(x, 0))
        inter_h = max(0, min(y + h, height) - max(y, 0))
        if inter_w * inter_h == 0 or ann["area"] <= 0 or w < 1 or h < 1:
            dropped += 1
            continue
        segm = usable_polygons(ann["segmentation"]) if with_masks and not ann["iscrowd"] else None
        if ann["iscrowd"] or (with_masks and not segm):
            ignore.append([x, y, x + w, y + h])
        else:
            boxes.append([x, y, x + w, y + h])
            labels.append(cat2label[ann["category_id"]])
            segms.append(segm)
    target = {
        "boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        "labels": np.asarray(labels, dtype=np.int64),
        "ignore_boxes": np.asarray(ignore, dtype=np.float32).reshape(-1, 4),
    }
    return target, segms, dropped


class CocoDetection(SkipsBadSamples, Dataset):
    """A COCO-format detection data set; items are ``(image, target)``.

    ``target`` holds ``boxes`` (``(M, 4)`` float xyxy pixels), ``labels`` (``(M,)`` long,
    contiguous), ``ignore_boxes`` (``(K, 4)``, the crowd boxes), ``image_id``, ``orig_size``
    ``(h, w)``, ``img_shape`` ``(h, w)`` after transforms, ``scale_factor`` ``(w_scale,
    h_scale)``, ``flip`` and, with ``with_masks``, ``masks`` (``(M, H, W)`` uint8, one per
    box, moved by the transforms as the boxes are).

    Args:
        root: The image folder (``coco/val2017``).
        ann_file: The instances JSON (``coco/annotations/instances_val2017.json``).
        transform: ``transform(image, target) -> (image, target)`` on an ``(H, W, 3)`` uint8
            RGB array decoded with OpenCV as mmcv does, e.g. from ``kdforge.data.presets``.
            Without one the image is ``ToTensor()``'s CHW in [0, 1].
        filter_empty_gt: Drop images without annotations (mmdetection does so for training).
        min_size: Drop images whose shorter side is below this (mmdetection trains with 32).
        on_bad_sample: ``"error"`` or ``"skip"`` a missing, unreadable or wrongly sized image
            (see :mod:`kdforge.data.bad_samples`).
        with_masks: Decode each box's ``segmentation`` (polygons or RLE) into ``masks`` when
            an item is loaded (for Mask R-CNN training; ``uint8``, G x H x W bytes an item).

    Attributes:
        cat_ids: Sorted COCO category ids; ``label2cat[label]`` is ``cat_ids[label]``.
        classes: Category names in label order.
        dropped_boxes: Boxes dropped as invalid (one warning at construction says how many).
        notes: Remarks on the data that are no error (for ``kdforge check-data``).

    Raises:
        DataError: the file is malformed (every problem listed), holds no annotations, or no
            image is left; a listed image file is missing (under ``on_bad_sample="error"``).
    """

    def __init__(
        self,
        root: str | Path,
        ann_file: str | Path,
        transform: Callable[[np.ndarray, Target], tuple[Any, Target]] | None = None,
        filter_empty_gt: bool = False,
        min_size: int = 0,
        on_bad_sample: str = "error",
        with_masks: bool = False,
    ) -> None:
        self.root = Path(root).expanduser()
        self.ann_file = Path(ann_file).expanduser()
        self.transform = transform
        data = self._read_annotations()
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
        self._check_not_empty(data, filter_empty_gt, min_size)
        self._init_policy(on_bad_sample)
        self._check_files()
        if with_masks:
            check_segmentations(self.images, by_image, self.ann_file)
        parsed = [
            _parse_boxes(
                by_image[img["id"]], img["width"], img["height"], self.cat2label, with_masks
            )
            for img in self.images
        ]
        self._targets = [target for target, _, _ in parsed]
        self._segms = [segms for _, segms, _ in parsed] if with_masks else None
        self.dropped_boxes = sum(dropped for _, _, dropped in parsed)
        self.notes: list[str] = []
        if self.dropped_boxes:
            kept = sum(len(t["boxes"]) + len(t["ignore_boxes"]) for t in self._targets)
            self.notes.append(
                f"{str(self.ann_file)!r}: dropped {self.dropped_boxes} of "
                f"{self.dropped_boxes + kept} boxes of these images as invalid (outside the "
                "image, area <= 0, or width or height < 1 pixel), as mmdetection does"
            )
            warnings.warn(self.notes[-1], DataWarning, stacklevel=2)
        self._to_tensor = ToTensor()

    def _read_annotations(self) -> dict[str, Any]:
        """The checked annotation file (a subclass adapts file names or leaves images out)."""
        return read_coco_json(self.ann_file)

    def _check_not_empty(self, data: dict[str, Any], filter_empty_gt: bool, min_size: int) -> None:
        """A clear DataError for a file or a filtered data set with nothing in it."""
        where = f"{str(self.ann_file)!r}"
        if not data["images"]:
            raise DataError(f"{where}: 'images' is empty: there is nothing to load")
        if not data["annotations"]:
            raise DataError(
                f"{where}: 'annotations' is empty: there are no boxes to train or evaluate "
                "on (an image-info file such as image_info_test2017.json has no labels)"
            )
        if not self.images:
            annotated = {ann["image_id"] for ann in data["annotations"]}
            small = sum(min(img["width"], img["height"]) < min_size for img in data["images"])
            raise DataError(
                f"{where}: no image is left of {len(data['images'])}: "
                f"{len(data['images']) - len(annotated)} have no annotation"
                f"{' (dropped for training)' if filter_empty_gt else ''} and {small} are under "
                f"{min_size} pixels on their shorter side"
            )

    def _check_files(self) -> None:
        present = set(os.listdir(self.root))
        missing = {
            i: f"image id {img['id']} {img['file_name']!r}"
            for i, img in enumerate(self.images)
            if img["file_name"] not in present and not (self.root / img["file_name"]).is_file()
        }
        if not missing:
            return
        what = f"{len(missing)} of {len(self.images)} images listed in {str(self.ann_file)!r}"
        if self.on_bad_sample == "skip":
            where = f"{str(self.ann_file)!r}: images missing from {str(self.root)!r}"
            self._skip_at_start(missing, where)
            return
        raise DataProblems(
            f"{what} are missing from {str(self.root)!r}:",
            list(missing.values()),
            f"Skip them with on_bad_sample='skip' (--set data.on_bad_sample=skip). "
            f"Expected:\n{COCO_LAYOUT}",
        )

    @property
    def num_classes(self) -> int:
        """Number of categories."""
        return len(self.cat_ids)

    def image_size(self, index: int) -> tuple[int, int]:
        """``(width, height)`` of image ``index`` from the annotation file (no decoding)."""
        info = self.images[index]
        return info["width"], info["height"]

    def load(self, index: int) -> np.ndarray:
        """Decode image ``index`` as an ``(H, W, 3)`` uint8 RGB array with OpenCV
        (:func:`~kdforge.data.decode.decode_image_cv`); a bad file or a size unlike the
        JSON's raises :class:`~kdforge.data.bad_samples.SampleError` naming the file."""
        info = self.images[index]
        path = self.root / info["file_name"]
        rgb = decode_image_cv(path)
        height, width = rgb.shape[:2]
        if (width, height) != (info["width"], info["height"]):
            raise SampleError(
                f"image {str(path)!r} is {width}x{height} but {str(self.ann_file)!r} "
                f"says {info['width']}x{info['height']} (image id {info['id']}); fix the "
                "entry's width and height, or the image",
                path,
            )
        return rgb

    def sample_file(self, index: int) -> Path:
        """The image file of sample ``index``."""
        return self.root / self.images[index]["file_name"]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Any, Target]:
        index, img = self._load_usable(index)  # under "skip", maybe another index
        info, parsed = self.images[index], self._targets[index]
        target: Target = {k: torch.from_numpy(v.copy()) for k, v in parsed.items()}
        size = (info["height"], info["width"])
        target.update(
            image_id=info["id"], orig_size=size, img_shape=size, scale_factor=(1.0, 1.0), flip=False
        )
        if self._segms is not None:
            target["masks"] = decode_masks(self._segms[index], *size)  # (M, H, W) uint8
        if self.transform is not None:
            return self.transform(img, target)
        return self._to_tensor(img), target

    def __repr__(self) -> str:
        return (
            f"CocoDetection(root={str(self.root)!r}, n={len(self)}, num_classes={self.num_classes})"
        )
