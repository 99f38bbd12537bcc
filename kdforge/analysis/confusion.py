"""``kdforge confusion-matrix``: the confusion matrix of a model on the validation set.

Rows are the true class, columns the predicted class, for

* classification: one count per image (the top-1 class);
* segmentation: one count per labelled pixel (the ignore index left out), the matrix
  :mod:`kdforge.engine.eval.segmentation` computes mIoU from;
* detection: mmdetection's ``tools/analysis_tools/confusion_matrix.py``
  (:func:`kdforge.engine.eval.detection_confusion`): a ``K + 1`` matrix whose last row
  and column are *background*, detections scoring at least ``score_thr`` (0.3) matched to
  ground truths with IoU >= ``iou_thr`` (0.5). Crowd regions are left out (mmdetection
  2.x's ``get_ann_info`` does so).

Each task's :class:`~kdforge.engine.tasks.Task` says how one batch counts.

The picture is normalised per row (each true class sums to 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from kdforge.analysis.loading import load_model, validation_loader, write_csv
from kdforge.config import load_config
from kdforge.engine.tasks import Task, get_task
from kdforge.errors import DataError

__all__ = [
    "draw_confusion",
    "model_confusion",
    "most_confused",
    "run_confusion_matrix",
]


def most_confused(
    matrix: Tensor, names: Sequence[str], top_k: int = 10
) -> list[tuple[str, str, int, float]]:
    """The ``top_k`` largest off-diagonal counts as ``(true, predicted, count, row share)``."""
    counts = matrix.double().clone()
    counts.fill_diagonal_(0)
    rows = matrix.double().sum(1)
    order = counts.flatten().argsort(descending=True)[:top_k].tolist()
    k = matrix.shape[1]
    pairs = []
    for flat in order:
        i, j = divmod(flat, k)
        if counts[i, j] > 0:
            pairs.append((names[i], names[j], int(counts[i, j]), float(counts[i, j] / rows[i])))
    return pairs


def draw_confusion(
    matrix: Tensor,
    names: Sequence[str],
    path: str | Path,
    title: str,
    top_k: int = 10,
) -> Path:
    """Row-normalised matrix as a heatmap with class names and a colour bar; with more
    than 20 classes, cell values are left out and the ``top_k`` confused pairs listed."""
    from matplotlib.figure import Figure

    k = len(names)
    rows = matrix.double().sum(1, keepdim=True)
    shares = (matrix.double() / rows.clamp_min(1)).numpy()
    many = k > 20
    side = min(max(6.5, 0.45 * k + 3.0), 24.0)
    width = side + (4.5 if many else 0.0)
    fig = Figure(figsize=(width, side), layout="constrained")
    if many:
        ax, text_ax = fig.subplots(1, 2, width_ratios=[side, 4.5])
    else:
        ax, text_ax = fig.subplots(1, 1), None
    shown = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(shown, ax=ax, shrink=0.8).set_label("share of the true class's count")
    ticks = np.arange(k)
    size = 9 if k <= 20 else max(3, 9 - k // 20)
    if k <= 100:
        ax.set_xticks(ticks, labels=names, rotation=60, ha="right", fontsize=size)
        ax.set_yticks(ticks, labels=names, fontsize=size)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=10)
    if not many:
        for i in range(k):
            for j in range(k):
                if rows[i] > 0:
                    colour = "white" if shares[i, j] > 0.5 else "black"
                    text = f"{shares[i, j]:.2f}"
                    ax.text(j, i, text, ha="center", va="center", fontsize=7, color=colour)
    if text_ax is not None:
        text_ax.axis("off")
        lines = [f"{t} → {p}: {n} ({s:.0%})" for t, p, n, s in most_confused(matrix, names, top_k)]
        text_ax.set_title(f"top {top_k} confused pairs (true → predicted)", fontsize=9)
        text_ax.text(0, 1, "\n".join(lines), va="top", fontsize=8, family="monospace")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


@torch.no_grad()
def model_confusion(
    model: nn.Module,
    loader: DataLoader,
    task: Task,
    device: torch.device,
    max_batches: int | None = None,
    score_thr: float = 0.3,
    iou_thr: float = 0.5,
) -> Tensor:
    """The confusion matrix of ``model`` over a validation ``loader``, by ``task.confusion``."""
    matrix = None
    total = len(loader) if max_batches is None else min(len(loader), max_batches)
    for i, (images, targets) in enumerate(tqdm(loader, total=total, desc="confusion matrix")):
        if max_batches is not None and i >= max_batches:
            break
        counts = task.confusion(
            model, images.to(device), targets, loader.dataset, score_thr, iou_thr
        )
        matrix = counts if matrix is None else matrix + counts
    if matrix is None:
        raise DataError("nothing to count: the validation set is empty or max_batches is 0")
    return matrix


def run_confusion_matrix(
    config: str | Path,
    checkpoint: str | Path | None,
    out: str | Path = "confusion",
    role: str = "student",
    top_k: int = 10,
    score_thr: float = 0.3,
    iou_thr: float = 0.5,
    max_batches: int | None = None,
    overrides: Sequence[str] | None = None,
) -> tuple[Path, Path, list[tuple[str, str, int, float]]]:
    """Write ``out/confusion_matrix.{png,csv}`` (raw counts in the CSV) for a recipe's model.

    Returns the two paths and the ``top_k`` most confused pairs.
    """
    cfg: DictConfig = load_config(config, list(overrides or []))
    task = get_task(cfg.task)
    loader, device = validation_loader(cfg)
    dataset = loader.dataset
    names = [str(n) for n in dataset.classes]
    model = load_model(cfg, role, checkpoint, dataset.num_classes).to(device)
    matrix = model_confusion(model, loader, task, device, max_batches, score_thr, iou_thr)
    background = len(matrix) > len(names)  # detection: missed boxes and false alarms
    if background:
        names.append("background")
    unit = "counts" if background else task.counted
    title = f"{role} {cfg[role].name}: confusion on validation ({int(matrix.sum())} {unit})"
    if background:
        title += f"\nscore >= {score_thr}, IoU >= {iou_thr}; background = missed / false alarm"
    out = Path(out)
    png = draw_confusion(matrix, names, out / "confusion_matrix.png", title, top_k)
    rows = [[name, *row] for name, row in zip(names, matrix.tolist(), strict=True)]
    csv = write_csv(out / "confusion_matrix.csv", ["true \\ predicted", *names], rows)
    return png, csv, most_confused(matrix, names, top_k)
