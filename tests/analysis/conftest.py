"""Fixtures of the analysis tests: generated shapes data and tiny detection/segmentation recipes."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from kdforge.data.shapes import SEMANTIC_CLASSES, write_shapes_dataset

SMALL_GFL = "{fpn_channels: 64, feat_channels: 64, stacked_convs: 1, frozen_stages: -1}"


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generated shapes (COCO boxes and semantic masks): 2 training, 4 validation images."""
    root = tmp_path_factory.mktemp("shapes")
    write_shapes_dataset(root, num_train=2, num_val=4, image_size=(64, 64), seed=0)
    return root


@pytest.fixture
def detection_overrides(shapes_root, tmp_path) -> list[str]:
    """A small GFL teacher and student on the shapes data."""
    return [
        "task=detection",
        "data.name=coco",
        f"data.root={shapes_root}",
        "data.options={train_split: train, val_split: val, scale: [64, 64]}",
        "data.batch_size=2",
        "data.num_workers=0",
        "train.device=cpu",
        f"train.out_dir={tmp_path}",
        "teacher.name=gfl_r18_fpn",
        f"teacher.kwargs={SMALL_GFL}",
        "student.name=gfl_r18_fpn",
        f"student.kwargs={SMALL_GFL}",
        "loss={detection: {}}",
    ]


@pytest.fixture
def segmentation_overrides(shapes_root, tmp_path) -> list[str]:
    """A PSPNet-R18 teacher and student on the shapes masks (5 classes, 255 ignored)."""
    classes = "[" + ", ".join(SEMANTIC_CLASSES) + "]"
    return [
        "task=segmentation",
        "data.name=segfolder",
        f"data.root={shapes_root}",
        f"data.options={{classes: {classes}, image_dir: '{{split}}', "
        "mask_dir: 'masks/{split}', crop_size: [64, 64], scale: [64, 64]}",
        "data.batch_size=2",
        "data.num_workers=0",
        "train.device=cpu",
        f"train.out_dir={tmp_path}",
        "teacher.name=pspnet_r18",
        "student.name=pspnet_r18",
        "loss={segmentation: {}}",
    ]


@pytest.fixture
def check_png():
    """``check(path, min_width, min_height)``: a readable PNG at least that large."""

    def check(path: Path, min_width: int = 200, min_height: int = 200) -> None:
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert image.width >= min_width and image.height >= min_height
            image.load()  # decodes every pixel

    return check
