"""What the analysis commands share: a recipe's model with weights, its validation data,
images prepared as the validation pipeline prepares them, and the CSV writer."""

from __future__ import annotations

import copy
import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from kdforge.config import ConfigError
from kdforge.data import transforms as T
from kdforge.engine.build import build_loaders, build_model
from kdforge.engine.distributed import DistInfo, select_device
from kdforge.engine.tasks import TASKS, Task
from kdforge.models import read_state_dict
from kdforge.tools.cam import classification_view

__all__ = [
    "load_model",
    "model_input",
    "task_of",
    "validation_loader",
    "write_csv",
]


def task_of(cfg: DictConfig) -> Task:
    """The recipe's :class:`Task`; an unknown ``task`` names the valid ones."""
    if cfg.task not in TASKS:
        raise ConfigError(f"unknown task {cfg.task!r}; valid tasks: {', '.join(TASKS)}")
    return TASKS[cfg.task]


def load_model(
    cfg: DictConfig, role: str, checkpoint: str | Path | None, num_classes: int | None
) -> nn.Module:
    """Build the recipe's ``role`` (``"student"`` or ``"teacher"``) in eval mode.

    Weights come from ``checkpoint`` (a run checkpoint, an export or any weights file) when
    given, else from ``<role>.pretrained`` of the recipe.
    """
    spec = copy.deepcopy(cfg[role])
    if spec.name is None:
        raise ConfigError(f"the recipe has no {role} (set {role}.name)")
    if checkpoint is not None:
        spec.pretrained = None
    model = build_model(spec, num_classes)
    if checkpoint is not None:
        model.load_state_dict(read_state_dict(checkpoint))
    return model.eval()


def validation_loader(cfg: DictConfig) -> tuple[DataLoader, torch.device]:
    """The recipe's validation loader (``build_loaders``, one process) and the device."""
    task = task_of(cfg)
    device = select_device(cfg.train.device)
    _, val, _ = build_loaders(cfg.data, DistInfo(device=device), cfg.train.seed, task)
    return val, device


def _blank_target(width: int, height: int) -> dict[str, Any]:
    """A detection target without objects, for running the validation pipeline on a file."""
    return {
        "boxes": torch.zeros(0, 4),
        "labels": torch.zeros(0, dtype=torch.int64),
        "ignore_boxes": torch.zeros(0, 4),
        "image_id": 0,
        "orig_size": (height, width),
        "img_shape": (height, width),
        "scale_factor": (1.0, 1.0),
        "flip": False,
    }


def model_input(
    cfg: DictConfig, val_set: Dataset | None, path: str | Path
) -> tuple[np.ndarray, Tensor]:
    """An image file as the model sees it: ``(picture (H, W, 3) uint8, input (1, 3, H', W'))``.

    Classification resizes to the model's input size; detection and segmentation run the
    validation pipeline of ``val_set`` (resize, normalise) and batch it as the task does
    (detection pads to a multiple of 32: ``H', W' >= H, W``, padding at the bottom/right).
    """
    with Image.open(path) as file:
        image = file.convert("RGB")
    if cfg.task == "classification":
        resize, normalize = classification_view(cfg)
        view = resize(image)
        x = T.ToTensor()(view)
        return np.asarray(view), (normalize(x) if normalize is not None else x)[None]
    if val_set is None:
        raise ConfigError(f"{cfg.task} images need the recipe's validation data (data.root)")
    task = task_of(cfg)
    second = (
        _blank_target(*image.size)
        if cfg.task == "detection"
        else Image.new("L", image.size, 255)  # an unlabelled mask
    )
    item = val_set.transform(image, second)
    x = task.collate([item])[0]
    height, width = item[0].shape[-2:]
    picture = np.asarray(image.resize((width, height), Image.Resampling.BILINEAR))
    return picture, x


def write_csv(path: str | Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    """Write ``rows`` under ``header`` as CSV (parent folders created); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)
    return path
