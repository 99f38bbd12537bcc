"""``kdforge visualize features``: teacher and student feature maps at chosen taps, side by side.

Each tapped map ``(N, C, h, w)`` is reduced to one value per position, the L2 norm over
channels (``reduce="l2"``, the default) or the mean of ``|x|`` over channels
(``"abs_mean"``, the p = 1 attention map of Zagoruyko & Komodakis, ICLR 2017); so maps of
different channel counts compare. Each is then upsampled bilinearly to the picture and
min-max normalised to [0, 1] on its own; the difference is student minus teacher of the
normalised maps, in [-1, 1]. Detectors' padding (to a multiple of 32) is cropped off first.
Token maps ``(N, L, C)`` of ViTs are laid on their square patch grid (a class token dropped).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdforge.analysis.loading import load_model, model_input
from kdforge.config import load_config
from kdforge.engine.tasks import get_task
from kdforge.errors import ConfigError, KdforgeError
from kdforge.taps import FeatureTaps

__all__ = [
    "REDUCTIONS",
    "default_layers",
    "draw_features",
    "feature_map",
    "layer_pairs",
    "normalised_map",
    "visualize_features",
]

REDUCTIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "l2": lambda f: f.norm(dim=1),  # (N, C, h, w) -> (N, h, w)
    "abs_mean": lambda f: f.abs().mean(dim=1),
}


def feature_map(value: object, path: str) -> Tensor:
    """A tap's value as ``(N, C, h, w)``; ``(N, L, C)`` tokens go on their square grid."""
    if isinstance(value, list):
        raise ConfigError(f"{path!r} ran {len(value)} times in one forward; tap one that runs once")
    if not isinstance(value, Tensor) or value.dim() not in (3, 4):
        kind = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ConfigError(
            f"{path!r} gives {kind}, not a feature map (N, C, H, W) or tokens (N, L, C); "
            "run `kdforge probe` to pick another module"
        )
    if value.dim() == 4:
        return value.float()
    n, length, channels = value.shape
    for drop in (0, 1):  # a class token first
        side = math.isqrt(length - drop)
        if side * side == length - drop:
            grid = value[:, drop:].transpose(1, 2).reshape(n, channels, side, side)
            return grid.float()
    raise ConfigError(f"{path!r} gives {length} tokens, not a square grid (+1 class token)")


def normalised_map(
    feature: Tensor, size: tuple[int, int], reduce: str = "l2", keep: tuple[float, float] = (1, 1)
) -> Tensor:
    """``(N, C, h, w)`` -> ``(N, H, W)`` in [0, 1]: reduced over channels, the ``keep``
    fraction of rows and columns (the unpadded part) upsampled to ``size``, min-max scaled."""
    if reduce not in REDUCTIONS:
        raise ConfigError(f"unknown reduction {reduce!r}; valid: {', '.join(REDUCTIONS)}")
    rows = max(1, math.ceil(feature.shape[-2] * keep[0]))
    cols = max(1, math.ceil(feature.shape[-1] * keep[1]))
    reduced = REDUCTIONS[reduce](feature[..., :rows, :cols])[:, None]  # (N, 1, rows, cols)
    up = F.interpolate(reduced, size, mode="bilinear", align_corners=False)[:, 0]
    low = up.amin(dim=(1, 2), keepdim=True)
    high = up.amax(dim=(1, 2), keepdim=True)
    return (up - low) / (high - low).clamp_min(1e-12)


def default_layers(model: nn.Module) -> list[str]:
    """The FPN levels of a detector, else the last stage in ``model.feature_info``."""
    info = getattr(model, "feature_info", None)
    if not info:
        raise ConfigError(
            f"{type(model).__name__} declares no feature_info: name the layers with --layers "
            "(`kdforge probe` lists the module paths)"
        )
    levels = [i["module"] for i in info if str(i.get("name", "")).startswith("P")]
    return levels or [info[-1]["module"]]


def layer_pairs(
    layers: Sequence[str] | None, teacher: nn.Module | None, student: nn.Module
) -> list[tuple[str | None, str]]:
    """``(teacher path, student path)`` per row from ``PATH`` or ``TEACHER_PATH,STUDENT_PATH``
    specs; without specs, each model's :func:`default_layers` in order."""
    if not layers:
        s_paths = default_layers(student)
        if teacher is None:
            return [(None, p) for p in s_paths]
        t_paths = default_layers(teacher)
        if len(t_paths) != len(s_paths):
            raise ConfigError(
                f"teacher layers {t_paths} and student layers {s_paths} do not pair up; "
                "name them with --layers TEACHER_PATH,STUDENT_PATH"
            )
        return list(zip(t_paths, s_paths, strict=True))
    pairs = []
    for spec in layers:
        t_path, _, s_path = spec.rpartition(",") if "," in spec else (spec, ",", spec)
        pairs.append((t_path if teacher is not None else None, s_path))
    return pairs


def draw_features(
    picture: np.ndarray,
    rows: Sequence[tuple[str, Tensor | None, str, Tensor]],
    path: str | Path,
    title: str = "",
) -> Path:
    """One PNG: per row ``(teacher label, teacher map or None, student label, student map)``
    the picture, the teacher map, the student map and student − teacher, with colour bars."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    has_teacher = any(t is not None for _, t, _, _ in rows)
    cols = 4 if has_teacher else 2
    fig = Figure(figsize=(3.4 * cols, 3.0 * len(rows) + 0.5), layout="constrained")
    axes = fig.subplots(len(rows), cols, squeeze=False)
    for r, (t_label, t_map, s_label, s_map) in enumerate(rows):
        axes[r][0].imshow(picture)
        axes[r][0].set_title("input", fontsize=9)
        panels = [(s_label, s_map, "viridis", 0.0)]
        if has_teacher:
            diff = s_map - t_map if t_map is not None else torch.zeros_like(s_map)
            panels = [
                (t_label, t_map, "viridis", 0.0),
                *panels,
                ("student − teacher", diff, "RdBu_r", -1.0),
            ]
        for c, (label, values, cmap, low) in enumerate(panels, start=1):
            ax = axes[r][c]
            shown = ax.imshow(values.numpy(), cmap=cmap, vmin=low, vmax=1.0)
            ax.set_title(label, fontsize=9)
            bar = fig.colorbar(shown, ax=ax, shrink=0.8)
            bar.set_label("difference" if low < 0 else "normalised activation", fontsize=8)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    path = Path(path)
    fig.savefig(path, dpi=100)
    return path


def _label(role: str, name: str, path: str, feature: Tensor) -> str:
    shape = "×".join(str(d) for d in feature.shape[1:])
    return f"{role}: {name}\n{path} ({shape})"


def visualize_features(
    config: str | Path,
    checkpoint: str | Path | None,
    images: Sequence[str | Path],
    out: str | Path = "visualize",
    layers: Sequence[str] | None = None,
    reduce: str = "l2",
    overrides: Sequence[str] | None = None,
) -> list[Path]:
    """Write ``out/<image>_features.png`` per image: teacher, student and their difference.

    Args:
        config: a recipe (any task); its teacher (``teacher.pretrained``) is drawn if it has one.
        checkpoint: student weights (run checkpoint or export); None keeps the recipe's.
        images: image files, prepared as the recipe's validation data.
        out: output folder.
        layers: ``PATH`` (both models) or ``TEACHER_PATH,STUDENT_PATH`` per row; default the
            FPN levels of detectors, else the last stage of each model.
        reduce: ``"l2"`` or ``"abs_mean"`` over channels.
        overrides: ``key=value`` recipe overrides.
    """
    cfg = load_config(config, list(overrides or []))
    if reduce not in REDUCTIONS:
        raise ConfigError(f"unknown reduction {reduce!r}; valid: {', '.join(REDUCTIONS)}")
    task = get_task(cfg.task)
    try:  # the data only gives the number of classes: images are prepared from the recipe
        num_classes = task.build_datasets(cfg.data)[1].num_classes
    except (OSError, KdforgeError):
        num_classes = None  # the recipe's <role>.num_classes, else the model's default
    student = load_model(cfg, "student", checkpoint, num_classes)
    teacher = load_model(cfg, "teacher", None, num_classes) if cfg.teacher.name else None
    pairs = layer_pairs(layers, teacher, student)
    s_taps = FeatureTaps(student, [s for _, s in pairs])  # unknown paths fail here
    t_taps = FeatureTaps(teacher, [t for t, _ in pairs]) if teacher is not None else None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    try:
        for i, file in enumerate(images):
            picture, x = model_input(cfg, file)
            size = picture.shape[:2]
            keep = (size[0] / x.shape[-2], size[1] / x.shape[-1])  # unpadded part
            with torch.no_grad():
                student(x)
                if teacher is not None:
                    teacher(x)
            rows = []
            for t_path, s_path in pairs:
                s_feat = feature_map(s_taps.outputs[s_path], s_path)
                s_label = _label("student", cfg.student.name, s_path, s_feat)
                t_label, t_map = "", None
                if t_taps is not None:
                    t_feat = feature_map(t_taps.outputs[t_path], t_path)
                    t_label = _label("teacher", cfg.teacher.name, t_path, t_feat)
                    t_map = normalised_map(t_feat, size, reduce, keep)[0]
                s_map = normalised_map(s_feat, size, reduce, keep)[0]
                rows.append((t_label, t_map, s_label, s_map))
            target = out / f"{Path(file).stem}_features.png"
            if target in written:
                target = out / f"{Path(file).stem}_{i}_features.png"
            title = f"{Path(file).name}: per-position {reduce} over channels, min-max normalised"
            written.append(draw_features(picture, rows, target, title))
    finally:
        s_taps.remove()
        if t_taps is not None:
            t_taps.remove()
    return written
