"""data.options.size_divisor: batches padded to a multiple of it (mmdetection's
pad_size_divisor), in the recipe-built loaders, the single-image view and the loss's pad_shape."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from kdforge.config import load_config
from kdforge.data.det_transforms import collate_detection
from kdforge.data.shapes import write_shapes_dataset
from kdforge.engine.build import build_data
from kdforge.engine.distributed import DistInfo
from kdforge.engine.tasks import get_task
from kdforge.errors import ConfigError
from kdforge.losses._common import pad_shapes

DINO = (
    Path(__file__).resolve().parents[2]
    / "kdforge/recipes/coco/dino/dino-4scale_r50_8xb2-12e_coco.yaml"
)


def _items() -> list:
    return [(torch.ones(3, 50, 70), {"img_shape": (50, 70)}), (torch.ones(3, 41, 33), {})]


@pytest.mark.parametrize(("divisor", "batch", "pads"), [
    (1, (50, 70), [(50, 70), (41, 33)]),
    (32, (64, 96), [(64, 96), (64, 64)]),
    (7, (56, 70), [(56, 70), (42, 35)]),
])  # fmt: skip
def test_collate_pads_the_batch_and_records_each_pad_shape(divisor, batch, pads):
    images, targets = collate_detection(_items(), size_divisor=divisor)
    assert tuple(images.shape) == (2, 3, *batch)
    assert [t["pad_shape"] for t in targets] == pads
    assert images[1, :, 41:].abs().sum() == 0 and images[1, :, :41, :33].eq(1).all()
    assert pad_shapes(targets, 32) == pads  # the loss reads the collate's, not its own 32
    assert pad_shapes([{"img_shape": (50, 70)}], 32) == [(64, 96)]  # fallback: its divisor


@pytest.mark.parametrize("bad", [0, -32, 1.5, True, "32"])
def test_a_bad_divisor_is_refused_before_the_data_loads(bad):
    data = OmegaConf.create({"name": "coco", "root": "/nonexistent", "options": {}})
    data.options.size_divisor = bad
    with pytest.raises(ConfigError, match=r"data.options.size_divisor=.* positive integer"):
        get_task("detection").build_datasets(data)
    with pytest.raises(ConfigError, match="data.options.size_divisor"):
        get_task("detection").view(data, Image.new("RGB", (50, 40)))


def test_the_view_pads_to_the_recipe_divisor():
    image = Image.fromarray(np.zeros((40, 50, 3), np.uint8))
    for divisor, shape in [(1, (60, 75)), (32, (64, 96))]:
        data = OmegaConf.create(
            {"name": "coco", "root": None, "options": {"scale": [80, 60], "size_divisor": divisor}}
        )
        assert tuple(get_task("detection").view(data, image)[1].shape) == (1, 3, *shape)


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    return write_shapes_dataset(root, num_train=2, num_val=2, image_size=(70, 90))


@pytest.mark.parametrize("divisor", [None, 1, 32])
def test_recipe_loaders_honour_it(shapes_root: Path, divisor: int | None):
    overrides = [
        f"data.root={shapes_root}",
        "data.options.train_split=train",
        "data.options.val_split=val",
        "data.options.scale=[100,100]",  # 70 x 90 -> 78 x 100
        "data.options.augment=resize_flip",  # no random crop: known shapes
        "data.num_workers=0",
    ]
    if divisor is not None:
        overrides.append(f"data.options.size_divisor={divisor}")
    cfg = load_config(DINO, overrides)
    assert cfg.data.options.get("size_divisor") == (divisor or 1)  # the recipe sets 1
    task = get_task("detection")
    train, val, _ = build_data(cfg.data, DistInfo(device=torch.device("cpu")), 0, task)
    d = divisor or 1
    for loader in (train, val):
        images, targets = next(iter(loader))
        size = [max(loader.dataset[i][0].shape[k] for i in range(2)) for k in (1, 2)]
        assert size == [78, 100]
        assert list(images.shape[-2:]) == [math.ceil(s / d) * d for s in size]
        assert all(t["pad_shape"] == tuple(images.shape[-2:]) for t in targets)
