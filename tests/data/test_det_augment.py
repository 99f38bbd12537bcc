"""DetRandomCrop, DetRandomChoice and the DETR training augmentation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kdforge.data.build import build_coco_datasets
from kdforge.data.det_augment import (
    DETR_SCALES,
    DetRandomChoice,
    DetRandomCrop,
    detr_train_augment,
)
from kdforge.data.shapes import write_shapes_dataset
from kdforge.errors import ConfigError


def _target(boxes, labels, height: int, width: int) -> dict:
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.long),
        "ignore_boxes": torch.tensor([[0.0, 0.0, 2.0, 2.0]]),
        "img_shape": (height, width),
        "scale_factor": (1.0, 1.0),
        "flip": False,
    }


def test_crop_by_hand() -> None:
    image = (np.arange(10)[:, None] * 100 + np.arange(20)[None]).astype(np.uint8)[..., None]
    image = np.repeat(image, 3, axis=2)  # (10, 20, 3), pixel (y, x) = 100 y + x
    boxes = [[2, 2, 8, 8], [15, 1, 19, 9], [0, 0, 3, 3], [8, 3, 8, 5]]
    target = _target(boxes, [0, 1, 2, 3], 10, 20)
    target["masks"] = torch.zeros(4, 10, 20, dtype=torch.uint8)
    target["masks"][0, 5, 6] = 1
    # crop rows 1..6, columns 4..13
    out_image, out = DetRandomCrop((4, 12)).apply(image, target, (1, 4, 6, 10))
    np.testing.assert_array_equal(out_image, image[1:7, 4:14])
    assert out["img_shape"] == (6, 10)
    # box 0 -> (-2, 1, 4, 7) clipped to (0, 1, 4, 6); box 1 -> (11, 0, 15, 8) clipped to
    # (10, 0, 10, 6): x1 = w, outside; box 2 -> (-4, -1, -1, 2) -> x2 = 0, outside; the
    # zero-width box 3 -> (4, 2, 4, 4) is inside by mmdetection's test and kept
    assert out["boxes"].tolist() == [[0.0, 1.0, 4.0, 6.0], [4.0, 2.0, 4.0, 4.0]]
    assert out["labels"].tolist() == [0, 3]
    assert out["ignore_boxes"].shape == (0, 4)  # (0, 0, 2, 2) -> x2 = -2 -> outside
    assert out["masks"].shape == (2, 6, 10) and out["masks"][0, 4, 2] == 1
    assert target["boxes"].shape == (4, 4)  # the input target is left alone


def test_crop_sizes_and_offsets_stay_in_range() -> None:
    torch.manual_seed(0)
    crop = DetRandomCrop((384, 600))
    image = np.zeros((300, 1000, 3), dtype=np.uint8)
    draws = [crop.sample_params(image) for _ in range(300)]
    heights = {h for _, _, h, _ in draws}
    widths = [w for _, _, _, w in draws]
    assert heights == {300}  # the height never exceeds the image's
    assert min(widths) >= 384 and max(widths) <= 600 and max(widths) - min(widths) > 150
    assert all(0 <= x <= 1000 - w and y == 0 for y, x, _, w in draws)
    tall = [crop.sample_params(np.zeros((700, 500, 3), dtype=np.uint8)) for _ in range(100)]
    assert all(384 <= h <= 600 and 0 <= y <= 700 - h and 0 <= x <= 500 - w for y, x, h, w in tall)
    assert max(y for y, *_ in tall) > 50  # the offset is drawn, not fixed
    with pytest.raises(ValueError, match="crop_size"):
        DetRandomCrop((600, 384))


def test_random_choice_picks_each_sequence() -> None:
    torch.manual_seed(0)

    def tag(name):
        return lambda image, target: (image, {**target, "path": target["path"] + [name]})

    choice = DetRandomChoice([[tag("a")], [tag("b"), tag("c")]])
    runs = [choice(None, {"path": []})[1]["path"] for _ in range(200)]
    assert {tuple(r) for r in runs} == {("a",), ("b", "c")}
    assert 70 < sum(r == ["a"] for r in runs) < 130


def test_detr_augment_output_sizes() -> None:
    assert [
        (s, 1333) for s in (480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800)
    ] == DETR_SCALES
    torch.manual_seed(3)
    augment = detr_train_augment()
    image = np.zeros((200, 300, 3), dtype=np.uint8)
    cropped = 0
    for _ in range(12):
        target = _target([[10, 20, 110, 180]], [1], 200, 300)
        out_image, out = augment(image, target)
        height, width = out_image.shape[:2]
        assert out["img_shape"] == (height, width)
        assert min(height, width) in {s for s, _ in DETR_SCALES} and max(height, width) <= 1333
        assert (out["boxes"][:, 2] <= width).all() and (out["boxes"][:, 3] <= height).all()
        cropped += abs(height / width - 200 / 300) > 0.02  # only the crop changes the ratio
    assert 0 < cropped < 12


def test_coco_builder_detr_augment_and_empty_images(tmp_path) -> None:
    root = write_shapes_dataset(tmp_path, num_train=3, num_val=1, image_size=(64, 96), seed=1)
    ann_file = root / "annotations/instances_train.json"
    data = json.loads(ann_file.read_text())
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != 1]
    ann_file.write_text(json.dumps(data))
    train, _ = build_coco_datasets(root, "train", "val", augment="detr", filter_empty_gt=False)
    assert len(train) == 3 and "DetRandomChoice" in repr(train.transform)
    torch.manual_seed(0)
    image, target = train[0]
    assert target["boxes"].shape == (0, 4)
    assert min(image.shape[-2:]) in {s for s, _ in DETR_SCALES}
    default, _ = build_coco_datasets(root, "train", "val")
    assert len(default) == 2 and "DetRandomChoice" not in repr(default.transform)
    with pytest.raises(ConfigError, match="augment must be"):
        build_coco_datasets(root, "train", "val", augment="mosaic")
