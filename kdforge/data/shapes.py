"""A seeded synthetic detection and segmentation data set: coloured shapes in COCO format.

``write_shapes_dataset(root)`` draws rectangles, ellipses, triangles and stars on textured
backgrounds (gradients plus coarse and fine noise), several per image and allowed to occlude
one another, and writes::

    <root>/
      ├── annotations/instances_train.json   COCO: boxes, RLE instance masks, area, iscrowd
      ├── annotations/instances_val.json
      ├── train/000001.png ...                RGB images
      ├── val/000001.png ...
      └── masks/{train,val}/000001.png        semantic labels: 0 background, 1..4 the shape
                                              classes (SEMANTIC_CLASSES), 255 ignore

Instance masks are the *visible* parts. A shape covered so much that less than 30% of it
stays visible is not annotated and its visible pixels are 255 in the semantic mask. Some images
hold a crowd (a cluster of small shapes of one class) annotated as one ``iscrowd=1`` region.
Every image draws from its own generator seeded by ``(seed, split, index)``, so an image does
not depend on how many others are written, and the JSON files are byte-identical per seed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

__all__ = ["IGNORE_INDEX", "SEMANTIC_CLASSES", "SHAPE_CLASSES", "write_shapes_dataset"]

SHAPE_CLASSES = ("rectangle", "ellipse", "triangle", "star")
SEMANTIC_CLASSES = ("background", *SHAPE_CLASSES)
IGNORE_INDEX = 255

_MIN_VISIBLE = 0.3  # fraction of a shape that must stay visible for it to be annotated
_SPLITS = ("train", "val")


def _polygon(
    kind: int, cx: float, cy: float, size: float, aspect: float, angle: float
) -> list[tuple[float, float]]:
    """Vertices of a shape of class ``kind`` centred at ``(cx, cy)`` with radius ``size``."""
    if kind == 0:  # rectangle
        a, b = size * aspect, size / aspect
        pts = [(-a, -b), (a, -b), (a, b), (-a, b)]
    elif kind == 1:  # ellipse
        t = np.linspace(0.0, 2 * math.pi, 48, endpoint=False)
        pts = list(zip(size * aspect * np.cos(t), size / aspect * np.sin(t), strict=True))
    elif kind == 2:  # triangle
        pts = [
            (size * math.cos(a), size * math.sin(a))
            for a in (0.0, 2 * math.pi / 3, 4 * math.pi / 3)
        ]
    else:  # five-pointed star
        radii = [size if i % 2 == 0 else 0.45 * size for i in range(10)]
        pts = [
            (r * math.cos(i * math.pi / 5), r * math.sin(i * math.pi / 5))
            for i, r in enumerate(radii)
        ]
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]


def _raster(points: list[tuple[float, float]], height: int, width: int) -> np.ndarray:
    canvas = Image.new("L", (width, height), 0)
    ImageDraw.Draw(canvas).polygon(points, fill=1)
    return np.asarray(canvas, dtype=bool)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """``(H, W, 3)`` float32: a two-colour linear gradient plus smooth coarse noise."""
    c0, c1 = rng.uniform(0.0, 255.0, size=(2, 3))
    theta = rng.uniform(0.0, 2 * math.pi)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    t = xs * math.cos(theta) + ys * math.sin(theta)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    coarse = rng.integers(0, 256, size=(height // 16 + 2, width // 16 + 2, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR))
    return (c0 + (c1 - c0) * t[..., None] + 0.35 * (smooth.astype(np.float32) - 128.0)).astype(
        np.float32
    )


def _colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """The one of four random colours farthest from ``under`` (fixed draws, so seeds stay put)."""
    candidates = rng.uniform(0.0, 255.0, size=(4, 3))
    return candidates[np.abs(candidates - under).sum(1).argmax()]


def _render(
    rng: np.random.Generator, height: int, width: int, max_objects: int, crowd_prob: float
) -> tuple[np.ndarray, list[tuple[int, np.ndarray, bool]], np.ndarray]:
    """One image: ``(rgb (H, W, 3) uint8, [(label, visible mask, iscrowd)], semantic (H, W))``."""
    image = _background(rng, height, width)
    side = min(height, width)
    layers: list[tuple[int, np.ndarray, bool]] = []  # (label, full mask, iscrowd), bottom first
    if rng.random() < crowd_prob:
        label, count = int(rng.integers(len(SHAPE_CLASSES))), int(rng.integers(4, 8))
        centre = rng.uniform(0.2, 0.8, size=2) * (width, height)
        union = np.zeros((height, width), dtype=bool)
        for _ in range(count):
            cx, cy = centre + rng.uniform(-0.12, 0.12, size=2) * side
            size = rng.uniform(0.025, 0.045) * side
            union |= _raster(_polygon(label, cx, cy, size, 1.0, rng.uniform(0, 6.3)), height, width)
        image[union] = _colour(rng, image[union].mean(0) if union.any() else image.mean((0, 1)))
        layers.append((label, union, True))
    for _ in range(int(rng.integers(1, max_objects + 1))):
        label = int(rng.integers(len(SHAPE_CLASSES)))
        cx, cy = rng.uniform(0.05, 0.95, size=2) * (width, height)
        size = rng.uniform(0.08, 0.22) * side
        aspect, angle = math.sqrt(rng.uniform(0.5, 2.0)), rng.uniform(0.0, 2 * math.pi)
        mask = _raster(_polygon(label, cx, cy, size, aspect, angle), height, width)
        image[mask] = _colour(rng, image[mask].mean(0) if mask.any() else image.mean((0, 1)))
        layers.append((label, mask, False))
    image += rng.normal(0.0, 6.0, size=image.shape).astype(np.float32)
    owner = np.full((height, width), -1, dtype=np.int64)
    for i, (_, mask, _) in enumerate(layers):
        owner[mask] = i
    semantic = np.zeros((height, width), dtype=np.uint8)
    instances = []
    for i, (label, mask, crowd) in enumerate(layers):
        visible = owner == i
        area = int(visible.sum())
        if area > 0 and (crowd or area >= _MIN_VISIBLE * mask.sum()):
            semantic[visible] = label + 1
            instances.append((label, visible, crowd))
        else:
            semantic[visible] = IGNORE_INDEX
    return np.clip(image, 0.0, 255.0).round().astype(np.uint8), instances, semantic


def _annotation(ann_id: int, image_id: int, label: int, mask: np.ndarray, crowd: bool) -> dict:
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": label + 1,
        "bbox": [x0, y0, int(xs.max()) + 1 - x0, int(ys.max()) + 1 - y0],
        "area": int(mask.sum()),
        "iscrowd": int(crowd),
        "segmentation": {"size": list(mask.shape), "counts": rle["counts"].decode("ascii")},
    }


def write_shapes_dataset(
    root: str | Path,
    num_train: int = 200,
    num_val: int = 50,
    image_size: tuple[int, int] | Sequence[tuple[int, int]] = (128, 128),
    seed: int = 0,
    max_objects: int = 6,
    crowd_prob: float = 0.1,
) -> Path:
    """Write the shapes data set under ``root`` (see the module docstring for the layout).

    Args:
        root: Output folder; created if missing, existing files of the same names replaced.
        num_train: Training images.
        num_val: Validation images.
        image_size: ``(height, width)`` of every image, or a list of them that the images
            take in turn (image ``i`` of a split gets ``image_size[i % len(image_size)]``):
            portrait and landscape sizes make a set of mixed orientations, as COCO's.
        seed: Seed of everything drawn; the same seed writes the same files.
        max_objects: Each image gets between 1 and this many shapes (before occlusion).
        crowd_prob: Probability that an image also holds one ``iscrowd=1`` cluster.

    Returns:
        ``root`` as a ``Path``; read it with ``kdforge.data.coco.build_coco_datasets(root,
        "train", "val")`` or ``CocoDetection``.
    """
    sizes = [image_size] if isinstance(image_size[0], int) else list(image_size)
    sizes = [(int(h), int(w)) for h, w in sizes]
    if not sizes or min(map(min, sizes)) < 16 or max_objects < 1 or min(num_train, num_val) < 0:
        raise ValueError(
            f"need image_size >= 16 px per side, max_objects >= 1 and non-negative counts; "
            f"got image_size={image_size}, max_objects={max_objects}, "
            f"num_train={num_train}, num_val={num_val}"
        )
    root = Path(root).expanduser()
    categories = [
        {"id": i + 1, "name": name, "supercategory": "shape"}
        for i, name in enumerate(SHAPE_CLASSES)
    ]
    for split_index, (split, count) in enumerate(zip(_SPLITS, (num_train, num_val), strict=True)):
        for folder in (root / split, root / "masks" / split, root / "annotations"):
            folder.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for index in range(count):
            rng = np.random.default_rng([seed, split_index, index])
            height, width = sizes[index % len(sizes)]
            rgb, instances, semantic = _render(rng, height, width, max_objects, crowd_prob)
            image_id, name = index + 1, f"{index + 1:06d}.png"
            Image.fromarray(rgb).save(root / split / name, compress_level=1)
            Image.fromarray(semantic).save(root / "masks" / split / name, compress_level=1)
            images.append({"id": image_id, "file_name": name, "width": width, "height": height})
            for label, mask, crowd in instances:
                annotations.append(_annotation(len(annotations) + 1, image_id, label, mask, crowd))
        data = {
            "info": {"description": "kdforge shapes", "seed": seed, "split": split},
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": categories,
        }
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return root
