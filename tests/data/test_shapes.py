"""The shapes generator: determinism, COCO consistency and the semantic masks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from kdforge.data.shapes import IGNORE_INDEX, SEMANTIC_CLASSES, SHAPE_CLASSES, write_shapes_dataset


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_shapes_dataset(
        tmp_path_factory.mktemp("shapes"),
        num_train=12,
        num_val=4,
        image_size=(48, 64),
        crowd_prob=0.5,
    )


def test_layout_and_categories(shapes: Path) -> None:
    for split, count in (("train", 12), ("val", 4)):
        data = json.loads((shapes / "annotations" / f"instances_{split}.json").read_text())
        assert [c["name"] for c in data["categories"]] == list(SHAPE_CLASSES)
        assert [c["id"] for c in data["categories"]] == [1, 2, 3, 4]
        assert len(data["images"]) == count
        for img in data["images"]:
            assert Image.open(shapes / split / img["file_name"]).size == (64, 48)
            mask = Image.open(shapes / "masks" / split / img["file_name"])
            assert mask.mode == "L" and mask.size == (64, 48)
    assert SEMANTIC_CLASSES[0] == "background" and len(SEMANTIC_CLASSES) == 5


def test_same_seed_same_files_and_images_independent_of_count(tmp_path: Path) -> None:
    a = write_shapes_dataset(tmp_path / "a", num_train=3, num_val=2, image_size=(32, 32), seed=7)
    b = write_shapes_dataset(tmp_path / "b", num_train=3, num_val=2, image_size=(32, 32), seed=7)
    c = write_shapes_dataset(tmp_path / "c", num_train=5, num_val=0, image_size=(32, 32), seed=7)
    d = write_shapes_dataset(tmp_path / "d", num_train=3, num_val=2, image_size=(32, 32), seed=8)
    for split in ("train", "val"):
        name = f"annotations/instances_{split}.json"
        assert (a / name).read_bytes() == (b / name).read_bytes()
        assert (a / name).read_bytes() != (d / name).read_bytes()
    for folder in ("train", "masks/train"):
        for i in (1, 2, 3):
            pixels = [np.asarray(Image.open(r / folder / f"{i:06d}.png")) for r in (a, b, c)]
            np.testing.assert_array_equal(pixels[0], pixels[1])
            np.testing.assert_array_equal(pixels[0], pixels[2])


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools
def test_boxes_masks_and_semantic_labels_agree(shapes: Path) -> None:
    data = json.loads((shapes / "annotations" / "instances_train.json").read_text())
    assert len({a["id"] for a in data["annotations"]}) == len(data["annotations"])
    assert any(a["iscrowd"] for a in data["annotations"])
    for img in data["images"]:
        semantic = np.asarray(Image.open(shapes / "masks" / "train" / img["file_name"]))
        anns = [a for a in data["annotations"] if a["image_id"] == img["id"]]
        covered = np.zeros(semantic.shape, dtype=bool)
        for ann in anns:
            rle = {"size": ann["segmentation"]["size"], "counts": ann["segmentation"]["counts"]}
            mask = mask_utils.decode(rle).astype(bool)
            x, y, w, h = ann["bbox"]
            ys, xs = np.nonzero(mask)
            # The box is the tightest one holding the mask.
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x, y, x + w, y + h)
            assert ann["area"] == mask.sum() > 0
            assert (semantic[mask] == ann["category_id"]).all()
            assert not (covered & mask).any(), "visible instance masks must not overlap"
            covered |= mask
        # Every labelled shape pixel belongs to an instance; the rest is background or ignore.
        assert (semantic[~covered] != 0).sum() == (semantic[~covered] == IGNORE_INDEX).sum()
        assert np.isin(semantic, [0, 1, 2, 3, 4, IGNORE_INDEX]).all()


def test_bad_arguments_raise(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="image_size"):
        write_shapes_dataset(tmp_path, 1, 1, image_size=(8, 8))
    with pytest.raises(ValueError, match="max_objects"):
        write_shapes_dataset(tmp_path, 1, 1, max_objects=0)


def test_mixed_sizes_are_taken_in_turn(tmp_path: Path) -> None:
    sizes = [(48, 64), (64, 48), (32, 32)]  # (height, width): landscape, portrait, square
    root = write_shapes_dataset(tmp_path, num_train=5, num_val=2, image_size=sizes)
    data = json.loads((root / "annotations" / "instances_train.json").read_text())
    got = [(img["height"], img["width"]) for img in data["images"]]
    assert got == [sizes[0], sizes[1], sizes[2], sizes[0], sizes[1]]
    for img in data["images"]:
        assert Image.open(root / "train" / img["file_name"]).size == (img["width"], img["height"])
    with pytest.raises(ValueError, match="image_size"):
        write_shapes_dataset(tmp_path, 1, 1, image_size=[(64, 64), (8, 64)])
