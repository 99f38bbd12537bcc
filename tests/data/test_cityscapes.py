"""Cityscapes and folder layouts on tiny generated trees; labelIds -> trainIds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kdforge.data import build_segmentation_datasets
from kdforge.data.cityscapes import (
    CITYSCAPES_CLASSES,
    LABEL_ID_TO_TRAIN_ID,
    Cityscapes,
    SegmentationFolder,
    label_ids_to_train_ids,
    make_train_ids,
)
from kdforge.data.seg_transforms import SegNormalize
from kdforge.data.shapes import SEMANTIC_CLASSES, write_shapes_dataset
from kdforge.errors import ConfigError, DataError

# cityscapesScripts labels.py (id, trainId) of the 19 evaluated classes, in train-id order.
EVALUATED = [(7, 0), (8, 1), (11, 2), (12, 3), (13, 4), (17, 5), (19, 6), (20, 7), (21, 8)]
EVALUATED += [(22, 9), (23, 10), (24, 11), (25, 12), (26, 13), (27, 14), (28, 15), (31, 16)]
EVALUATED += [(32, 17), (33, 18)]


def _write_cityscapes(root: Path, kind: str = "labelTrainIds", size=(8, 6)) -> None:
    """Two cities in train, one in val; masks of ``kind`` (values 0..18, or label ids)."""
    rng = np.random.default_rng(0)
    for split, cities in (("train", ("aachen", "bochum")), ("val", ("frankfurt",))):
        for city in cities:
            for i in range(2):
                stem = f"{city}_{i:06d}_000019"
                img_dir = root / "leftImg8bit" / split / city
                gt_dir = root / "gtFine" / split / city
                img_dir.mkdir(parents=True, exist_ok=True)
                gt_dir.mkdir(parents=True, exist_ok=True)
                rgb = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(rgb).save(img_dir / f"{stem}_leftImg8bit.png")
                labels = rng.integers(0, 34 if kind == "labelIds" else 19, (size[1], size[0]))
                mask = Image.fromarray(labels.astype(np.uint8))
                mask.save(gt_dir / f"{stem}_gtFine_{kind}.png")


def test_train_id_mapping_is_cityscapes_scripts() -> None:
    ids = np.arange(256, dtype=np.uint8)
    mapped = label_ids_to_train_ids(ids)
    assert [(i, int(mapped[i])) for i, _ in EVALUATED] == EVALUATED
    others = sorted(set(range(256)) - {i for i, _ in EVALUATED})
    assert (mapped[others] == 255).all() and LABEL_ID_TO_TRAIN_ID.dtype == np.uint8
    assert len(CITYSCAPES_CLASSES) == 19 and CITYSCAPES_CLASSES[13] == "car"


def test_reads_the_official_layout(tmp_path: Path) -> None:
    _write_cityscapes(tmp_path)
    train, val = Cityscapes(tmp_path, "train"), Cityscapes(tmp_path, "val", SegNormalize())
    assert (len(train), len(val), train.num_classes) == (4, 2, 19)
    assert [p.parent.name for p, _ in train.samples] == ["aachen", "aachen", "bochum", "bochum"]
    image, mask = train[0]
    assert image.shape == (3, 6, 8) and image.dtype == torch.uint8
    assert mask.shape == (6, 8) and mask.dtype == torch.int64 and mask.max() < 19
    tensor, labels = val[1]
    assert tensor.dtype == torch.float32 and labels.shape == (6, 8)
    datasets = build_segmentation_datasets(tmp_path, crop_size=(4, 4), scale=(8, 6))
    assert [len(d) for d in datasets] == [4, 2] and datasets[0][0][0].shape == (3, 4, 4)


def test_only_label_ids_explains_and_make_train_ids_fixes_it(tmp_path: Path) -> None:
    _write_cityscapes(tmp_path, kind="labelIds")
    with pytest.raises(DataError) as err:
        Cityscapes(tmp_path, "train")
    assert f"kdforge cityscapes-trainids {tmp_path}" in str(err.value)
    assert "make_train_ids" in str(err.value) and "4 of 4 images have no mask" in str(err.value)
    assert make_train_ids(tmp_path) == 6
    assert make_train_ids(tmp_path) == 0  # existing files are kept
    assert make_train_ids(tmp_path, overwrite=True) == 6
    train = Cityscapes(tmp_path, "train")
    src = next((tmp_path / "gtFine" / "train").rglob("*_labelIds.png"))
    label_ids = np.asarray(Image.open(src))
    written = np.asarray(Image.open(str(src).replace("_labelIds", "_labelTrainIds")))
    assert np.array_equal(written, LABEL_ID_TO_TRAIN_ID[label_ids]) and len(train) == 4
    with pytest.raises(DataError, match="no \\*_gtFine_labelIds.png"):
        make_train_ids(tmp_path / "leftImg8bit")


def test_layout_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="leftImg8bit/<split>/<city>"):
        Cityscapes(tmp_path, "train")
    _write_cityscapes(tmp_path)
    next((tmp_path / "gtFine" / "val").rglob("*.png")).unlink()
    with pytest.raises(DataError, match="1 of 2 images have no mask") as err:
        Cityscapes(tmp_path, "val")
    assert "_gtFine_labelTrainIds.png" in str(err.value)
    with pytest.raises(ConfigError, match="layout must be"):
        build_segmentation_datasets(tmp_path, layout="voc")
    with pytest.raises(ConfigError, match="needs classes: set data.options.classes"):
        build_segmentation_datasets(tmp_path, layout="folder")


def test_generic_folder_layout_matches_by_stem(tmp_path: Path) -> None:
    for split in ("train", "val"):
        (tmp_path / "images" / split).mkdir(parents=True)
        (tmp_path / "masks" / split).mkdir(parents=True)
        Image.new("RGB", (5, 4), (9, 9, 9)).save(tmp_path / "images" / split / "a.jpg")
        Image.new("L", (5, 4), 2).save(tmp_path / "masks" / split / "a.png")
    train, val = build_segmentation_datasets(
        tmp_path, layout="folder", classes=3, crop_size=(4, 4), scale=(5, 4), photometric=False
    )
    assert train.classes == ("class_0", "class_1", "class_2") and len(val) == 1
    assert val[0][1].tolist() == [[2] * 5] * 4
    Image.new("RGB", (5, 4)).save(tmp_path / "images" / "val" / "b.png")
    with pytest.raises(DataError, match="1 of 2 images have no mask"):
        SegmentationFolder(tmp_path / "images" / "val", tmp_path / "masks" / "val")
    Image.new("L", (3, 3)).save(tmp_path / "masks" / "val" / "b.png")
    with pytest.raises(DataError, match=r"b\.png' is 5x4 but mask .*b\.png' is 3x3"):
        SegmentationFolder(tmp_path / "images" / "val", tmp_path / "masks" / "val")  # headers
    with pytest.raises(DataError, match="does not exist"):
        SegmentationFolder(tmp_path / "nope", tmp_path / "masks" / "val")


def test_shapes_generator_layout(tmp_path: Path) -> None:
    write_shapes_dataset(tmp_path, num_train=3, num_val=2, image_size=(32, 32))
    train, val = build_segmentation_datasets(
        tmp_path,
        layout="folder",
        classes=SEMANTIC_CLASSES,
        image_dir="{split}",
        mask_dir="masks/{split}",
        crop_size=(16, 16),
        scale=(32, 32),
    )
    assert (len(train), len(val), train.num_classes) == (3, 2, 5)
    image, mask = train[0]
    assert image.shape == (3, 16, 16) and mask.shape == (16, 16)
    _, full = val[1]
    assert full.shape == (32, 32) and set(full.unique().tolist()) <= {0, 1, 2, 3, 4, 255}


def test_trainids_command(tmp_path: Path, capsys) -> None:
    from kdforge.cli import main

    _write_cityscapes(tmp_path, kind="labelIds")
    main(["cityscapes-trainids", str(tmp_path)])
    assert "wrote 6" in capsys.readouterr().out
    Cityscapes(tmp_path, "train")  # now readable
