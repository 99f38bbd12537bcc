"""``kdforge robustness``: the validation metric under the 15 corruptions at 5 severities.

The corruptions (:mod:`kdforge.analysis.corruptions`) are applied on the fly by
:class:`CorruptedDataset`, deterministically per seed and item index. Where in the
pipeline: classification corrupts the picture at the model's input size, after resizing
and cropping and before normalisation (ImageNet-C corrupts the 224 px crop); detection and
segmentation corrupt the decoded image before the pipeline (COCO-C and Cityscapes-C
corrupt the original files). Scores, as Michaelis et al. (2019) define them for COCO-C:

* ``P[c, s]``: the metric (top-1 %, COCO AP, mIoU) under corruption ``c`` at severity ``s``;
* mPC (mean performance under corruption) = the mean of ``P[c, s]`` over corruptions and
  severities;
* rPC (relative performance under corruption) = mPC / the clean metric.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from kdforge.analysis.corruptions import CORRUPTIONS, SEVERITIES, check_corruptions, corrupt
from kdforge.analysis.loading import load_model, validation_loader, write_csv
from kdforge.config import load_config
from kdforge.data.transforms import Compose, Normalize, ToTensor
from kdforge.engine.tasks import get_task

__all__ = [
    "CorruptedDataset",
    "RobustnessResult",
    "draw_robustness",
    "format_robustness",
    "run_robustness",
]

_TENSOR_STEPS = (ToTensor, Normalize)  # classification: corrupt before these


def _corrupt_any(image: Any, name: str, severity: int, rng: np.random.Generator) -> Any:
    """Corrupt a PIL image, an ``(H, W, 3)`` uint8 array or a ``(3, H, W)`` float tensor in
    [0, 1] (rounded to 8 bits first); the result has the input's type."""
    if isinstance(image, Image.Image):
        return Image.fromarray(corrupt(np.asarray(image.convert("RGB")), name, severity, rng))
    if isinstance(image, torch.Tensor):
        array = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        out = corrupt(np.ascontiguousarray(array), name, severity, rng)
        return torch.from_numpy(out).permute(2, 0, 1).float().div(255.0).to(image.dtype)
    return corrupt(image, name, severity, rng)


class _CorruptingTransform:
    """``before`` steps, the corruption, then ``after`` (the rest of the pipeline or None)."""

    def __init__(self, before: list, after: Any, name: str, severity: int) -> None:
        self.before, self.after, self.name, self.severity = before, after, name, severity
        self.rng = np.random.default_rng(0)  # set per item by CorruptedDataset

    def __call__(self, image: Any, *rest: Any) -> Any:
        for step in self.before:
            image = step(image)
        image = _corrupt_any(image, self.name, self.severity, self.rng)
        if self.after is None:
            return (image, *rest) if rest else image
        return self.after(image, *rest)


def _split(transform: Any, name: str, severity: int) -> _CorruptingTransform:
    if isinstance(transform, Compose):  # classification: after resize/crop, before tensors
        steps = list(transform.transforms)
        cut = next((i for i, t in enumerate(steps) if isinstance(t, _TENSOR_STEPS)), len(steps))
        return _CorruptingTransform(steps[:cut], Compose(steps[cut:]), name, severity)
    return _CorruptingTransform([], transform, name, severity)  # pairs, or no transform


class CorruptedDataset(Dataset):
    """A validation data set whose images are corrupted before normalisation.

    Item ``i`` draws its randomness from ``numpy.random.default_rng([seed, i])``, so the
    same seed gives the same corrupted item in any order, process or worker. Attributes
    of the wrapped data set (``classes``, ``num_classes``, ``ann_file``...) read through.

    Args:
        dataset: a kdforge data set with a ``transform`` attribute (all of ``kdforge.data``).
        name: a key of ``CORRUPTIONS``.
        severity: 1..5.
        seed: the seed of the corruptions' randomness.
    """

    def __init__(self, dataset: Dataset, name: str, severity: int, seed: int = 0) -> None:
        check_corruptions([name], [severity])
        if not hasattr(dataset, "transform"):
            raise TypeError(f"{type(dataset).__name__} has no transform attribute to corrupt")
        self.dataset = copy.copy(dataset)  # the original keeps its transform
        self.corrupting = _split(dataset.transform, name, severity)
        self.dataset.transform = self.corrupting
        self.name, self.severity, self.seed = name, severity, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        self.corrupting.rng = np.random.default_rng([self.seed, index])
        return self.dataset[index]

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # not set yet (e.g. while unpickling)
            raise AttributeError(name)
        return getattr(self.dataset, name)


@dataclass
class RobustnessResult:
    """``clean`` metric, ``scores[corruption][severity]``, and mPC / rPC from them."""

    metric: str
    clean: float
    scores: dict[str, dict[int, float]]

    @property
    def mpc(self) -> float:
        values = [v for per in self.scores.values() for v in per.values()]
        return float(np.mean(values))

    @property
    def rpc(self) -> float:
        return self.mpc / self.clean if self.clean else float("nan")


def format_robustness(result: RobustnessResult) -> str:
    """A text table: a row per corruption, a column per severity and their mean."""
    severities = sorted({s for per in result.scores.values() for s in per})
    width = max(len("corruption"), *(len(c) for c in result.scores))
    head = f"{'corruption':<{width}} " + " ".join(f"{f's{s}':>8}" for s in severities)
    lines = [head + f" {'mean':>8}", "-" * (len(head) + 9)]
    for name, per in result.scores.items():
        cells = " ".join(f"{per[s]:8.4g}" for s in severities)
        lines.append(f"{name:<{width}} {cells} {np.mean(list(per.values())):8.4g}")
    lines.append("-" * (len(head) + 9))
    lines.append(
        f"{result.metric}: clean {result.clean:.4g}, mPC {result.mpc:.4g}, "
        f"rPC {100 * result.rpc:.1f}%"
    )
    return "\n".join(lines)


def draw_robustness(result: RobustnessResult, path: str | Path, title: str) -> Path:
    """A corruption × severity heatmap of the metric, values in the cells, a colour bar."""
    from matplotlib.figure import Figure

    names = list(result.scores)
    severities = sorted({s for per in result.scores.values() for s in per})
    grid = np.array([[result.scores[n][s] for s in severities] for n in names])
    fig = Figure(figsize=(2.0 + 1.1 * len(severities), 1.5 + 0.42 * len(names)))
    fig.set_layout_engine("constrained")
    ax = fig.subplots()
    shown = ax.imshow(grid, cmap="viridis", vmin=0.0, vmax=max(result.clean, grid.max(), 1e-9))
    fig.colorbar(shown, ax=ax).set_label(f"{result.metric} (clean {result.clean:.4g})")
    ax.set_xticks(range(len(severities)), labels=[str(s) for s in severities])
    ax.set_yticks(range(len(names)), labels=names)
    ax.set_xlabel("severity")
    ax.set_ylabel("corruption")
    top = grid.max() if grid.size else 0.0
    for i in range(len(names)):
        for j in range(len(severities)):
            colour = "black" if grid[i, j] > 0.6 * top else "white"
            ax.text(j, i, f"{grid[i, j]:.3g}", ha="center", va="center", fontsize=8, color=colour)
    summary = f"mPC {result.mpc:.4g}, rPC {100 * result.rpc:.1f}%"
    ax.set_title(f"{title}\n{summary}", fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def run_robustness(
    config: str | Path,
    checkpoint: str | Path | None,
    out: str | Path = "robustness",
    corruptions: Sequence[str] | None = None,
    severities: Sequence[int] | None = None,
    max_batches: int | None = None,
    role: str = "student",
    seed: int = 0,
    overrides: Sequence[str] | None = None,
) -> tuple[RobustnessResult, Path, Path]:
    """Evaluate a recipe's model clean and under each corruption and severity.

    Writes ``out/robustness.csv`` (``corruption,severity,<metric>`` rows: ``clean`` at
    severity 0, then each corruption and severity, then ``mPC`` and ``rPC``) and
    ``out/robustness.png``; returns the result and both paths.
    """
    names = list(corruptions or CORRUPTIONS)
    levels = list(severities or SEVERITIES)
    check_corruptions(names, levels)  # before any long work
    cfg = load_config(config, list(overrides or []))
    task = get_task(cfg.task)
    loader, device = validation_loader(cfg)
    clean_set = loader.dataset
    model = load_model(cfg, role, checkpoint, clean_set.num_classes).to(device)

    def evaluate(data: Dataset) -> float:
        run = DataLoader(
            data,
            batch_size=loader.batch_size,
            num_workers=loader.num_workers,
            collate_fn=loader.collate_fn,
        )
        return float(task.evaluate(model, run, device, None, max_batches)[task.metric])

    clean = evaluate(clean_set)
    scores: dict[str, dict[int, float]] = {name: {} for name in names}
    runs = [(name, level) for name in names for level in levels]
    for name, level in tqdm(runs, desc="corruptions", unit="eval"):
        scores[name][level] = evaluate(CorruptedDataset(clean_set, name, level, seed))
    result = RobustnessResult(task.metric, clean, scores)
    rows: list[list[Any]] = [["clean", 0, clean]]
    rows += [[name, level, scores[name][level]] for name, level in runs]
    rows += [["mPC", "", result.mpc], ["rPC", "", result.rpc]]
    out = Path(out)
    csv = write_csv(out / "robustness.csv", ["corruption", "severity", task.metric], rows)
    title = f"{role} {cfg[role].name}: {task.metric} under corruption"
    png = draw_robustness(result, out / "robustness.png", title)
    return result, csv, png
