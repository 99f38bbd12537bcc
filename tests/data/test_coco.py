"""CocoDetection: mmdetection's annotation rules, the shapes round trip and loud errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from kdforge.data import build_coco_datasets
from kdforge.data.bad_samples import DataWarning
from kdforge.data.coco import CocoDetection
from kdforge.data.det_transforms import collate_detection
from kdforge.data.shapes import write_shapes_dataset
from kdforge.errors import DataError


def _coco(tmp_path: Path, annotations: list[dict[str, Any]], **extra: Any) -> tuple[Path, Path]:
    """Two 40x30 images (ids 1, 2) and categories 3 ("a"), 90 ("c"), 7 ("b")."""
    (tmp_path / "img").mkdir(exist_ok=True)
    images = [{"id": i, "file_name": f"{i}.png", "width": 40, "height": 30} for i in (1, 2)]
    for img in images:
        Image.new("RGB", (40, 30), (200, 100, 50)).save(tmp_path / "img" / img["file_name"])
    cats = [{"id": 3, "name": "a"}, {"id": 90, "name": "c"}, {"id": 7, "name": "b"}]
    data = {"images": images, "annotations": annotations, "categories": cats, **extra}
    ann_file = tmp_path / "instances.json"
    ann_file.write_text(json.dumps(data))
    return tmp_path / "img", ann_file


def _ann(i: int, bbox: list[float], cat: int = 3, image: int = 1, **kw: Any) -> dict[str, Any]:
    return {"id": i, "image_id": image, "category_id": cat, "bbox": bbox, **kw}


def test_labels_boxes_and_mmdet_filtering(tmp_path: Path) -> None:
    anns = [
        _ann(1, [1, 2, 10, 20], cat=7, area=200),
        _ann(2, [5, 5, 4, 4], cat=90, area=16),
        _ann(3, [0, 0, 30, 30], cat=3, iscrowd=1, area=900),  # -> ignore_boxes
        _ann(4, [3, 3, 0.5, 10], area=5),  # w < 1: dropped
        _ann(5, [3, 3, 10, 10], area=0),  # area 0: dropped
        _ann(6, [40, 5, 10, 10], area=100),  # outside the image: dropped
        _ann(7, [3, 3, 10, 10], area=100, ignore=True),  # ignore flag: dropped
        _ann(8, [30, 25, 20, 20], area=400),  # half outside: kept, not clipped
    ]
    root, ann_file = _coco(tmp_path, anns)
    with pytest.warns(DataWarning, match=r"instances\.json': dropped 3 of 7 boxes"):
        ds = CocoDetection(root, ann_file)
    assert ds.dropped_boxes == 3 and "dropped 3 of 7 boxes" in ds.notes[0]
    assert ds.cat_ids == [3, 7, 90] and ds.classes == ["a", "b", "c"] and ds.num_classes == 3
    assert ds.label2cat == {0: 3, 1: 7, 2: 90}
    assert len(ds) == 2  # the image without annotations is kept for evaluation
    image, target = ds[0]
    assert image.shape == (3, 30, 40) and image.min() >= 0.0 and image.max() <= 1.0
    torch.testing.assert_close(
        target["boxes"], torch.tensor([[1.0, 2, 11, 22], [5, 5, 9, 9], [30, 25, 50, 45]])
    )
    assert target["labels"].tolist() == [1, 2, 0] and target["labels"].dtype == torch.int64
    torch.testing.assert_close(target["ignore_boxes"], torch.tensor([[0.0, 0, 30, 30]]))
    assert target["image_id"] == 1 and target["orig_size"] == (30, 40)
    empty = ds[1][1]
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)
    assert empty["ignore_boxes"].shape == (0, 4)
    with pytest.warns(DataWarning):
        train = CocoDetection(root, ann_file, filter_empty_gt=True)
    assert [img["id"] for img in train.images] == [1]
    with pytest.raises(DataError, match=r"no image is left of 2: 1 have no annotation and 2 are"):
        CocoDetection(root, ann_file, min_size=32)


def test_shapes_round_trip_and_loader(tmp_path: Path) -> None:
    root = write_shapes_dataset(
        tmp_path, num_train=6, num_val=3, image_size=(40, 56), crowd_prob=1.0
    )
    data = json.loads((root / "annotations" / "instances_val.json").read_text())
    val = CocoDetection(root / "val", root / "annotations" / "instances_val.json")
    for index, img in enumerate(data["images"]):
        anns = [a for a in data["annotations"] if a["image_id"] == img["id"]]
        target = val[index][1]
        expected = [
            [x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns if not a["iscrowd"])
        ]
        assert target["boxes"].tolist() == expected
        assert target["labels"].tolist() == [a["category_id"] - 1 for a in anns if not a["iscrowd"]]
        assert len(target["ignore_boxes"]) == sum(a["iscrowd"] for a in anns) == 1
    train, val = build_coco_datasets(root, "train", "val", scale=(80, 60))
    images, targets = next(iter(DataLoader(train, batch_size=4, collate_fn=collate_detection)))
    assert images.shape == (4, 3, 64, 96)  # 40x56 * min(80/56, 60/40) -> 57x80, padded to 32s
    assert len(targets) == 4 and all(t["img_shape"] == (57, 80) for t in targets)
    assert abs(images[0, :, :57, :80].mean().item()) < 3 and images[:, :, 57:].abs().sum() == 0


def test_malformed_files_name_the_file_and_entry(tmp_path: Path) -> None:
    root, ann_file = _coco(tmp_path, [_ann(1, [1, 2, 3, 4]), _ann(5, [1, 2, 3, 4], cat=99)])
    with pytest.raises(
        DataError, match=r"instances\.json.*annotations\[1\] \(id 5\).*category_id 99"
    ):
        CocoDetection(root, ann_file)
    cases = {
        "annotations\\[0\\] \\(id 1\\).*image_id 3": [_ann(1, [1, 2, 3, 4], image=3)],
        "annotations\\[0\\] \\(id 1\\).*'bbox'": [_ann(1, [1, 2, 3])],
        "annotations\\[0\\] \\(id 1\\).*'category_id' must be an integer": [
            _ann(1, [1, 2, 3, 4], cat="x")
        ],
    }
    for pattern, anns in cases.items():
        root, ann_file = _coco(tmp_path, anns)
        with pytest.raises(DataError, match=pattern):
            CocoDetection(root, ann_file)
    ann_file.write_text('{"images": [], "annotations": [')
    with pytest.raises(DataError, match=r"instances\.json.*not valid JSON"):
        CocoDetection(root, ann_file)
    ann_file.write_text('{"images": [], "annotations": []}')
    with pytest.raises(
        DataError, match=r"top level: key\(s\) \['categories'\] missing or not lists"
    ):
        CocoDetection(root, ann_file)
    with pytest.raises(DataError, match="(?s)does not exist.*annotations/"):
        CocoDetection(root, tmp_path / "nope.json")


def test_duplicate_ids_missing_images_and_size_mismatch(tmp_path: Path) -> None:
    root, ann_file = _coco(tmp_path, [_ann(1, [1, 2, 3, 4])])
    data = json.loads(ann_file.read_text())
    data["images"][1]["id"] = 1
    ann_file.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"images\[1\] \(id 1\): duplicate image id"):
        CocoDetection(root, ann_file)
    root, ann_file = _coco(tmp_path, [_ann(1, [1, 2, 3, 4])])
    (root / "2.png").unlink()
    with pytest.raises(
        DataError, match=r"(?s)1 of 2 images listed in .*instances\.json.*image id 2 '2\.png'"
    ):
        CocoDetection(root, ann_file)
    with pytest.raises(DataError, match="image folder"):
        CocoDetection(tmp_path / "missing", ann_file)
    Image.new("RGB", (10, 10)).save(root / "2.png")
    with pytest.raises(DataError, match=r"2\.png' is 10x10 but .* says 40x30"):
        CocoDetection(root, ann_file)[1]
