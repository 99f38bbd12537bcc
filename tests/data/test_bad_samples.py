"""on_bad_sample: "error" names the file and the way out; "skip" replaces a bad sample by the
next good one, warns once per file and counts the replacements, DataLoader workers included."""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Subset

from kdforge.data import ImageFolder, build_datasets
from kdforge.data.bad_samples import DataWarning, SampleError, skipped_samples
from kdforge.data.cityscapes import SegmentationFolder
from kdforge.data.coco import CocoDetection
from kdforge.errors import ConfigError, DataError


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Class 0: a.png (value 10), b.png (damaged), c.png (30); class 1: d.png (40), e.png
    (not an image)."""
    for cls, name, value in (("c0", "a", 10), ("c0", "c", 30), ("c1", "d", 40)):
        (tmp_path / cls).mkdir(exist_ok=True)
        Image.new("L", (4, 4), value).save(tmp_path / cls / f"{name}.png")
    (tmp_path / "c0" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n damaged")
    (tmp_path / "c1" / "e.png").write_text("not an image")
    return tmp_path


def _value(item) -> int:
    return round(float(item[0][0, 0, 0]) * 255)


def test_error_names_the_file_and_the_way_out(folder: Path) -> None:
    ds = ImageFolder(folder)
    assert ds.on_bad_sample == "error" and skipped_samples(ds) == 0
    with pytest.raises(SampleError, match=r"b\.png' is truncated or damaged") as err:
        ds[1]
    message = str(err.value)
    assert "data.on_bad_sample=skip" in message and "kdforge check-data RECIPE" in message
    assert err.value.file == folder / "c0" / "b.png"


def test_skip_replaces_by_the_next_good_sample_and_warns_once(folder: Path) -> None:
    ds = ImageFolder(folder, on_bad_sample="skip")
    with pytest.warns(DataWarning, match=r"b\.png") as caught:
        item = ds[1]
    assert len(caught) == 1
    assert (_value(item), item[1]) == (30, 0)  # c.png, with its own label
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second time: silent
        assert _value(ds[1]) == 30
    with pytest.warns(DataWarning, match=r"e\.png"):
        assert (_value(ds[4]), ds[4][1]) == (10, 0)  # wraps around to a.png
    assert ds.skipped == skipped_samples(ds) == 4
    assert skipped_samples(Subset(ds, [0, 1])) == 4  # through wrappers
    assert _value(ds[0]) == 10 and ds.skipped == 4  # a good sample counts nothing


def test_skip_counts_reach_the_main_process_from_workers(folder: Path) -> None:
    ds = ImageFolder(folder, on_bad_sample="skip")
    loader = DataLoader(ds, batch_size=5, num_workers=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        for _ in range(2):  # two epochs, fresh workers each
            (images, labels) = next(iter(loader))
            assert images.shape == (5, 3, 4, 4)  # the batch keeps its size
            assert labels.tolist() == [0, 0, 0, 1, 0]
    assert skipped_samples(ds) == 4


def test_a_copy_keeps_the_record_but_not_the_memory(folder: Path) -> None:
    ds = ImageFolder(folder, on_bad_sample="skip")
    with pytest.warns(DataWarning):
        ds[1]
    twin = copy.deepcopy(ds)
    assert twin.skipped == 1 and twin._skip_log.bad_indices() == [1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        twin[1]  # known bad: no second warning
    assert (twin.skipped, ds.skipped) == (2, 1)


def test_nothing_left_and_a_bad_policy(tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "x.png").write_bytes(b"")
    ds = ImageFolder(tmp_path, on_bad_sample="skip")
    with pytest.warns(DataWarning), pytest.raises(DataError, match="no usable sample is left"):
        ds[0]
    with pytest.raises(ConfigError, match=r"data\.on_bad_sample must be one of 'error', 'skip'"):
        ImageFolder(tmp_path, on_bad_sample="ignore")
    with pytest.raises(ConfigError, match=r"data\.on_bad_sample.*'drop'"):
        build_datasets("cifar10", tmp_path, on_bad_sample="drop")


def _pairs(root: Path, sizes: list[tuple[int, int]]) -> None:
    for split in ("images", "masks"):
        (root / split).mkdir(parents=True)
    for i, mask_size in enumerate(sizes):
        Image.new("RGB", (6, 4), (i, 0, 0)).save(root / "images" / f"{i}.png")
        Image.new("L", mask_size, 1).save(root / "masks" / f"{i}.png")


def test_segmentation_pairs_bad_from_their_headers_are_skipped_from_the_start(
    tmp_path: Path,
) -> None:
    _pairs(tmp_path, [(6, 4), (5, 4), (6, 4)])
    with pytest.raises(DataError, match=r"1 of 3 image/mask pairs cannot be used"):
        SegmentationFolder(tmp_path / "images", tmp_path / "masks")
    with pytest.warns(DataWarning, match=r"skipping 1 of 3 samples.*1\.png' is 6x4 but mask"):
        ds = SegmentationFolder(tmp_path / "images", tmp_path / "masks", on_bad_sample="skip")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned at construction already
        image, mask = ds[1]
    assert image[0, 0, 0] == 2 and mask.shape == (4, 6) and ds.skipped == 1


def test_coco_images_missing_from_the_folder_are_skipped(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    images = [{"id": i, "file_name": f"{i}.png", "width": 8, "height": 6} for i in (1, 2, 3)]
    for img in images[::2]:
        Image.new("RGB", (8, 6)).save(tmp_path / "img" / img["file_name"])
    anns = [{"id": 1, "image_id": 2, "category_id": 1, "bbox": [1, 1, 3, 3]}]
    data = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "a"}]}
    (tmp_path / "a.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"(?s)1 of 3 images .* missing .*image id 2 '2\.png'"):
        CocoDetection(tmp_path / "img", tmp_path / "a.json")
    with pytest.warns(DataWarning, match="skipping 1 of 3"):
        ds = CocoDetection(tmp_path / "img", tmp_path / "a.json", on_bad_sample="skip")
    assert ds[1][1]["image_id"] == 3 and ds.skipped == 1


def test_the_recipe_key_reaches_every_file_backed_data_set(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from kdforge.data.shapes import write_shapes_dataset
    from kdforge.engine.tasks import get_task

    root = write_shapes_dataset(tmp_path, num_train=2, num_val=1, image_size=(32, 32))
    cases = {
        "detection": {"name": "coco", "options": {"train_split": "train", "val_split": "val"}},
        "segmentation": {
            "name": "segfolder",
            "options": {"classes": 5, "image_dir": "{split}", "mask_dir": "masks/{split}"},
        },
    }
    for task, data in cases.items():
        cfg = OmegaConf.create({"root": str(root), "on_bad_sample": "skip", **data})
        for ds in get_task(task).build_datasets(cfg):
            assert ds.on_bad_sample == "skip", (task, ds)
    Image.new("L", (4, 4)).save(root / "train" / "x.png")
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (root / "folder" / split / cls).mkdir(parents=True)
            Image.new("L", (4, 4)).save(root / "folder" / split / cls / "x.png")
    cfg = OmegaConf.create(
        {
            "name": "imagefolder",
            "root": str(root / "folder"),
            "on_bad_sample": "skip",
            "options": {"image_size": 4},
        }
    )
    train, val = get_task("classification").build_datasets(cfg)
    assert train.on_bad_sample == val.on_bad_sample == "skip"
    assert np.allclose(train[0][0].shape, (3, 4, 4)) and torch.is_tensor(val[0][0])
