"""Task records: looked up by name, and each one's input view and confusion counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from torch import nn

from kdforge.engine.tasks import TASKS, get_task
from kdforge.errors import ConfigError


def _image(width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _data(name: str, **options) -> OmegaConf:
    return OmegaConf.create({"name": name, "root": None, "options": options})


def test_tasks_are_found_by_name_and_an_unknown_one_lists_them():
    assert [get_task(name).name for name in TASKS] == list(TASKS)
    assert get_task("segmentation").counted == "labelled pixels"
    with pytest.raises(ConfigError, match="valid tasks: classification, segmentation, detection"):
        get_task("depth")


def test_classification_view_resizes_to_the_model_input():
    view = get_task("classification").view
    picture, x = view(_data("imagefolder", image_size=64), _image(100, 80))
    assert picture.shape == (64, 64, 3) and x.shape == (1, 3, 64, 64)
    picture, x = view(_data("digits", size=16), _image(40, 30))
    assert picture.shape == (16, 16, 3) and x.min() >= 0 and x.max() <= 1  # not normalised


def test_detection_view_pads_and_segmentation_view_keeps_the_size():
    picture, x = get_task("detection").view(_data("coco", scale=[80, 60]), _image(50, 40))
    assert picture.shape == (60, 75, 3) and x.shape == (1, 3, 64, 96)  # padded to 32s
    assert x[..., 60:, :].abs().sum() == 0
    picture, x = get_task("segmentation").view(_data("segfolder"), _image(50, 40))
    assert picture.shape == (40, 50, 3) and x.shape == (1, 3, 40, 50)
    with pytest.raises(ConfigError, match="data.name=coco"):
        get_task("detection").view(_data("cityscapes"), _image(50, 40))


class Constant(nn.Module):
    """Logits ``(N, K)`` (or ``(N, K, h, w)``) that always pick class ``k``."""

    def __init__(self, k: int, num_classes: int, dense: bool = False) -> None:
        super().__init__()
        self.k, self.num_classes, self.dense = k, num_classes, dense

    def forward(self, images):
        n, _, h, w = images.shape
        logits = torch.zeros(n, self.num_classes, *((h // 4, w // 4) if self.dense else ()))
        logits[:, self.k] = 1.0
        return logits


class Val:
    num_classes = 3


def test_confusion_counts_one_batch():
    images = torch.zeros(2, 3, 8, 8)
    counts = get_task("classification").confusion(
        Constant(1, 3), images, torch.tensor([0, 1]), Val(), 0.3, 0.5
    )
    assert counts.tolist() == [[0, 1, 0], [0, 1, 0], [0, 0, 0]]
    masks = torch.tensor([0, 2, 255, 2]).repeat_interleave(16).reshape(1, 8, 8)
    counts = get_task("segmentation").confusion(
        Constant(2, 3, dense=True), images[:1], masks, Val(), 0.3, 0.5
    )
    assert counts.tolist() == [[0, 0, 16], [0, 0, 0], [0, 0, 32]]  # 255 is left out


def test_data_names_are_checked_against_the_task():
    with pytest.raises(ConfigError, match="data.name=coco, not 'cifar10'"):
        get_task("detection").build_datasets(_data("cifar10"))
    with pytest.raises(ConfigError, match="cityscapes or segfolder, not 'coco'"):
        get_task("segmentation").build_datasets(_data("coco"))
