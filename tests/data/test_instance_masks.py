"""Instance masks: COCO polygons and RLEs decoded to the right pixels, refused when unreadable,
and kept aligned with their boxes by resize, flip and the batch padding."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from kdforge.data.bad_samples import DataProblems
from kdforge.data.build import build_coco_datasets
from kdforge.data.coco import CocoDetection
from kdforge.data.det_transforms import DetRandomFlip, DetResize, collate_detection
from kdforge.data.instance_masks import (
    decode_masks,
    decode_segmentation,
    segmentation_problem,
    usable_polygons,
)
from kdforge.data.shapes import write_shapes_dataset


def _extent(mask: torch.Tensor) -> list[int]:
    """``[x0, y0, x1, y1]`` of a mask's pixels as a box (exclusive right and bottom)."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def test_polygon_covers_the_pixels_inside_it() -> None:
    # the rectangle (1, 1)-(4, 3) holds the pixels x = 1..3, y = 1..2
    expected = np.zeros((5, 6), dtype=np.uint8)
    expected[1:3, 1:4] = 1
    mask = decode_segmentation([[1, 1, 4, 1, 4, 3, 1, 3]], 5, 6)
    assert mask.dtype == np.uint8 and np.array_equal(mask, expected)
    # two polygons of one instance are merged; the triangle (0, 4)-(2, 4)-(0, 6) holds only
    # the pixel centre (0.5, 4.5) (the others lie on or beyond its hypotenuse)
    two = decode_segmentation([[1, 1, 4, 1, 4, 3, 1, 3], [0, 4, 2, 4, 0, 6]], 6, 6)
    expected = np.pad(expected, ((0, 1), (0, 0)))
    expected[4, 0] = 1
    assert np.array_equal(two, expected)


def test_rles_compressed_and_uncompressed_decode_to_the_same_pixels() -> None:
    expected = np.zeros((4, 5), dtype=np.uint8)
    expected[1:3, 2:4] = 1
    rle = mask_utils.encode(np.asfortranarray(expected))
    compressed = {"size": [4, 5], "counts": rle["counts"].decode("ascii")}
    # column-major runs: 9 zeros (columns 0, 1 and the top of 2), 2 ones, 2 zeros, 2 ones, 5 zeros
    uncompressed = {"size": [4, 5], "counts": [9, 2, 2, 2, 5]}
    for segmentation in (compressed, uncompressed):
        assert np.array_equal(decode_segmentation(segmentation, 4, 5), expected)
    masks = decode_masks([compressed, [[0, 0, 1, 0, 1, 1, 0, 1]]], 4, 5)
    assert masks.shape == (2, 4, 5) and masks.dtype == torch.uint8
    assert decode_masks([], 4, 5).shape == (0, 4, 5)


def test_degenerate_polygons_are_dropped_and_bad_segmentations_named() -> None:
    good = [0, 0, 2, 0, 2, 2]
    assert usable_polygons([good, [0, 0, 1, 1], [0, 0, 1, 1, 2]]) == [good]
    assert usable_polygons({"size": [2, 2], "counts": "04"}) == {"size": [2, 2], "counts": "04"}
    assert segmentation_problem([good], 4, 4) is None
    assert "polygons must be lists" in segmentation_problem([good, ["x"]], 4, 4)
    assert "[4, 4]" in segmentation_problem({"size": [3, 4], "counts": "3"}, 4, 4)
    assert "counts" in segmentation_problem({"size": [4, 4], "counts": 3}, 4, 4)
    assert "polygons or an RLE" in segmentation_problem(None, 4, 4)


def _tiny_coco(tmp_path: Path, annotations: list[dict]) -> tuple[Path, Path]:
    images = tmp_path / "img"
    images.mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (8, 6)).save(images / "a.png")
    ann_file = tmp_path / "a.json"
    data = {
        "images": [{"id": 1, "file_name": "a.png", "width": 8, "height": 6}],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "thing"}],
    }
    ann_file.write_text(json.dumps(data))
    return images, ann_file


def test_coco_masks_follow_the_kept_boxes_and_bad_ones_are_refused(tmp_path: Path) -> None:
    square = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 3, 2]}
    line = {"id": 2, "image_id": 1, "category_id": 1, "bbox": [5, 2, 2, 2]}
    images, ann_file = _tiny_coco(
        tmp_path,
        [
            dict(square, segmentation=[[1, 1, 4, 1, 4, 3, 1, 3]]),
            dict(line, segmentation=[[5, 2, 7, 2]]),  # no usable polygon: ignored, as mmdet
        ],
    )
    _, target = CocoDetection(images, ann_file, with_masks=True)[0]
    assert target["boxes"].tolist() == [[1.0, 1.0, 4.0, 3.0]]
    assert target["ignore_boxes"].tolist() == [[5.0, 2.0, 7.0, 4.0]]
    assert target["masks"].shape == (1, 6, 8) and target["masks"].dtype == torch.uint8
    assert _extent(target["masks"][0]) == [1, 1, 4, 3]
    assert "masks" not in CocoDetection(images, ann_file)[0][1]  # opt-in
    assert len(CocoDetection(images, ann_file)[0][1]["boxes"]) == 2  # boxes-only keeps both

    images, ann_file = _tiny_coco(tmp_path / "bad", [square])  # no segmentation at all
    with pytest.raises(DataProblems, match=r"annotation id 1 \(image id 1\): 'segmentation'"):
        CocoDetection(images, ann_file, with_masks=True)


def test_shapes_masks_match_their_boxes_after_the_training_pipeline(tmp_path: Path) -> None:
    root = write_shapes_dataset(tmp_path, num_train=3, num_val=1, image_size=(40, 56), seed=1)
    train, val = build_coco_datasets(
        root,
        "train",
        "val",
        scale=(112, 80),
        with_masks=True,  # x2: exact pixel doubling
    )
    torch.manual_seed(0)
    for index in range(len(train)):
        _, target = train[index]
        masks, boxes = target["masks"], target["boxes"]
        assert masks.shape == (len(boxes), 80, 112) and masks.dtype == torch.uint8
        for mask, box in zip(masks, boxes, strict=True):  # shapes' boxes are the masks' extents
            assert _extent(mask) == box.round().int().tolist()
    assert "masks" not in val[0][1]  # mask AP reads the JSON


def _hand_sample() -> tuple[np.ndarray, dict]:
    """An 8 x 6 image with one instance on the pixels x = 2..4, y = 1..2 (box [2, 1, 5, 3])."""
    masks = torch.zeros(1, 6, 8, dtype=torch.uint8)
    masks[0, 1:3, 2:5] = 1
    target = {
        "boxes": torch.tensor([[2.0, 1.0, 5.0, 3.0]]),
        "labels": torch.tensor([0]),
        "ignore_boxes": torch.zeros(0, 4),
        "masks": masks,
        "image_id": 1,
        "orig_size": (6, 8),
        "img_shape": (6, 8),
        "scale_factor": (1.0, 1.0),
        "flip": False,
    }
    return np.zeros((6, 8, 3), dtype=np.uint8), target


def test_flip_resize_and_padding_keep_masks_on_their_boxes() -> None:
    image, target = _hand_sample()
    flipped, t = DetRandomFlip(p=1.0)(image, target)
    assert t["boxes"].tolist() == [[3.0, 1.0, 6.0, 3.0]]  # 8 - 5, 8 - 2
    assert _extent(t["masks"][0]) == [3, 1, 6, 3]
    assert target["masks"][0, 1, 2] == 1  # the input is not changed
    resized, t = DetResize((16, 12))(flipped, t)  # x2
    assert resized.shape[:2] == (12, 16) and t["masks"].shape == (1, 12, 16)
    assert t["boxes"].tolist() == [[6.0, 2.0, 12.0, 6.0]]
    assert _extent(t["masks"][0]) == [6, 2, 12, 6]
    assert int(t["masks"].sum()) == 4 * 3 * 2  # nearest: each pixel became 2 x 2
    tensor = torch.from_numpy(resized).permute(2, 0, 1).float()
    other = torch.zeros(3, 20, 10)
    other_target = dict(target, masks=torch.zeros(0, 20, 10, dtype=torch.uint8))
    batch, targets = collate_detection([(tensor, t), (other, other_target)], size_divisor=32)
    assert batch.shape == (2, 3, 32, 32)
    assert targets[0]["masks"].shape == (1, 32, 32) and targets[1]["masks"].shape == (0, 32, 32)
    assert _extent(targets[0]["masks"][0]) == [6, 2, 12, 6]  # padded with 0 on the far sides
    assert t["masks"].shape == (1, 12, 16)  # the item's target is not changed
