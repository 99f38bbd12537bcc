"""COCO instance segmentations -> per-instance bitmaps, as mmdetection's
``LoadAnnotations(with_mask=True, poly2mask=True)`` makes them.

A ``segmentation`` is polygons (``[[x1, y1, x2, y2, ...], ...]``, merged into one mask), an
uncompressed RLE (``{"size": [h, w], "counts": [run, ...]}``) or a compressed one (``counts``
a string); :mod:`pycocotools.mask` rasterises all three. As in mmdetection, a polygon with an
odd number of coordinates or under three points is dropped, and an instance left without
any polygon is not trained on (its box is ignored).

Memory: the bitmaps are ``uint8`` at the image's size, ``G x H x W`` bytes (20 instances at
1333 x 800 are about 21 MB per image). They are decoded per item, never kept, so only the
loader's batches in flight hold them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils

from kdforge.data.bad_samples import DataProblems

__all__ = [
    "check_segmentations",
    "decode_masks",
    "decode_segmentation",
    "segmentation_problem",
    "usable_polygons",
]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def segmentation_problem(segmentation: Any, height: int, width: int) -> str | None:
    """What makes ``segmentation`` unreadable for an ``height x width`` image, or None."""
    if isinstance(segmentation, list):
        if all(isinstance(p, list) and all(map(_is_number, p)) for p in segmentation):
            return None
        return "'segmentation' polygons must be lists of numbers [x1, y1, x2, y2, ...]"
    if isinstance(segmentation, dict):
        size = segmentation.get("size")
        if size != [height, width]:
            return f"RLE 'size' {size!r} is not the image's [height, width] [{height}, {width}]"
        if isinstance(segmentation.get("counts"), str | list):
            return None
        return "RLE 'counts' must be a string (compressed) or a list of run lengths"
    shown = repr(segmentation)[:60]
    return f"'segmentation' must be polygons or an RLE {{'size', 'counts'}}, got {shown}"


def check_segmentations(
    images: Sequence[dict[str, Any]], by_image: dict[int, list[dict]], ann_file: Path
) -> None:
    """Raise :class:`~kdforge.data.bad_samples.DataProblems` naming every annotation of
    ``images`` (not marked ``ignore``) whose ``segmentation`` is missing or unreadable."""
    problems = [
        f"{str(ann_file)!r}: annotation id {ann.get('id', '?')} (image id {img['id']}): {p}"
        for img in images
        for ann in by_image[img["id"]]
        if not ann.get("ignore", False)
        and (p := segmentation_problem(ann.get("segmentation"), img["height"], img["width"]))
    ]
    if problems:
        raise DataProblems(
            f"{str(ann_file)!r}: {len(problems)} instance mask(s) cannot be read:",
            problems,
            "Fix them, or train without masks (data.options.with_masks=false).",
        )


def usable_polygons(segmentation: list | dict) -> list | dict:
    """``segmentation`` less the polygons mmdetection drops (odd length, under 3 points);
    an RLE is returned as it is. An empty list means no usable polygon is left."""
    if isinstance(segmentation, dict):
        return segmentation
    return [p for p in segmentation if len(p) % 2 == 0 and len(p) >= 6]


def _rle(segmentation: list | dict, height: int, width: int) -> dict:
    """A compressed RLE of one instance (polygons merged, as mmdetection's ``_poly2mask``)."""
    if isinstance(segmentation, list):
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation["counts"], list):
        return mask_utils.frPyObjects(segmentation, height, width)
    return segmentation


def decode_segmentation(segmentation: list | dict, height: int, width: int) -> np.ndarray:
    """One instance's ``(H, W)`` uint8 0/1 bitmap."""
    return mask_utils.decode(_rle(segmentation, height, width))


def decode_masks(segmentations: Sequence[list | dict], height: int, width: int) -> torch.Tensor:
    """``(G, H, W)`` uint8 bitmaps of ``G`` instances (``(0, H, W)`` when there are none)."""
    if not segmentations:
        return torch.zeros(0, height, width, dtype=torch.uint8)
    masks = mask_utils.decode([_rle(s, height, width) for s in segmentations])  # (H, W, G)
    return torch.from_numpy(np.ascontiguousarray(masks.transpose(2, 0, 1)))
