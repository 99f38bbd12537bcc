"""What the analysis commands share: a recipe's model with weights, its validation data,
image files prepared as its models see them, and the CSV writer."""

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
from torch.utils.data import DataLoader

from kdforge.engine.build import build_data, build_model
from kdforge.engine.distributed import DistInfo, select_device
from kdforge.engine.tasks import get_task
from kdforge.errors import ConfigError
from kdforge.models import load_pretrained

__all__ = ["load_model", "model_input", "validation_loader", "write_csv"]


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
        load_pretrained(model, checkpoint)  # names missing, unexpected and misshapen keys
    return model.eval()


def validation_loader(cfg: DictConfig) -> tuple[DataLoader, torch.device]:
    """The recipe's validation loader (``build_data``, one process) and the device."""
    device = select_device(cfg.train.device)
    _, val, _ = build_data(cfg.data, DistInfo(device=device), cfg.train.seed, get_task(cfg.task))
    return val, device


def model_input(cfg: DictConfig, path: str | Path) -> tuple[np.ndarray, Tensor]:
    """An image file as the recipe's models see it: ``(picture (H, W, 3) uint8, input
    (1, 3, H', W'))``, by the task's view (the recipe's validation preset)."""
    with Image.open(path) as file:
        image = file.convert("RGB")
    return get_task(cfg.task).view(cfg.data, image)


def write_csv(path: str | Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    """Write ``rows`` under ``header`` as CSV (parent folders created); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)
    return path
