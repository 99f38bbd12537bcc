"""``kdforge visualize cam``: teacher and student class activation maps, side by side.

The maps are those CAT-KD transfers (Guo et al., CVPR 2023): the last feature map times the
classifier's weight (:func:`kdforge.losses.class_activation_map`), shown for the classes
the teacher ranks highest (the student's own ranking when the recipe has no teacher).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from kdforge.analysis.loading import load_model, model_input
from kdforge.config import load_config
from kdforge.data import build_datasets
from kdforge.errors import KdforgeError
from kdforge.losses import cam_paths, class_activation_map
from kdforge.taps import FeatureTaps

__all__ = ["class_names", "compute_cams", "draw_cams", "visualize_cam"]


def class_names(cfg: DictConfig) -> list[str] | None:
    """Class names of the recipe's data set, or None when the data cannot be read."""
    root = cfg.data.root
    try:
        if cfg.data.name == "imagefolder":  # list the folders; do not scan every image
            val = Path(str(root)).expanduser() / "val"
            return sorted(d.name for d in os.scandir(val) if d.is_dir() and d.name[0] != ".")
        options = OmegaConf.to_container(cfg.data.options, resolve=True)
        return list(build_datasets(cfg.data.name, root, **options)[1].classes)
    except (OSError, KdforgeError):
        return None


@torch.no_grad()
def compute_cams(
    model: nn.Module, inputs: Tensor, layer: str | None = None, classifier: str | None = None
) -> tuple[Tensor, Tensor]:
    """Run ``model`` on ``inputs``; return its ``(N, K)`` logits and ``(N, K, h, w)`` CAMs.

    ``layer`` and ``classifier`` default to the zoo model's last feature map and linear layer.
    """
    layer, classifier = cam_paths(model, layer, classifier)
    with FeatureTaps(model, [layer]) as taps:
        logits = model(inputs)
        features = taps.outputs[layer]
    return logits, class_activation_map(features, model.get_submodule(classifier).weight)


def draw_cams(
    image: np.ndarray,
    rows: Sequence[tuple[str, Tensor, Tensor]],
    classes: Sequence[int],
    names: Sequence[str],
    path: str | Path,
    title: str = "",
) -> Path:
    """One PNG: a column per model (``rows`` of ``(label, probs (K,), cams (K, h, w))``), a
    row per class, each CAM upsampled to the image, min-max scaled and overlaid."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    height, width = image.shape[:2]
    fig = Figure(figsize=(3.2 * len(rows), 3.0 * len(classes) + 0.4), layout="constrained")
    axes = fig.subplots(len(classes), len(rows), squeeze=False)
    for col, (label, probs, cams) in enumerate(rows):
        maps = F.interpolate(
            cams[None].float(), (height, width), mode="bilinear", align_corners=False
        )[0]
        for row, k in enumerate(classes):
            cam = maps[k]
            cam = (cam - cam.min()) / (cam.max() - cam.min()).clamp_min(1e-12)  # -> [0, 1]
            ax = axes[row][col]
            ax.imshow(image)
            ax.imshow(cam.numpy(), cmap="jet", alpha=0.5, vmin=0.0, vmax=1.0)
            ax.set_title(f"{label}\n{names[k]} ({probs[k]:.0%})", fontsize=9)
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    path = Path(path)
    fig.savefig(path, dpi=100)
    return path


def _cam_options(cfg: DictConfig) -> dict[str, Any]:
    """The layer/classifier paths of the recipe's ``cat_kd`` term, if it has one."""
    for name, spec in OmegaConf.to_container(cfg.loss, resolve=True).items():
        spec = spec or {}
        if spec.get("type", name) == "cat_kd":
            return {k: v for k, v in spec.items() if k.endswith(("_layer", "_classifier"))}
    return {}


def visualize_cam(
    config: str | Path,
    checkpoint: str | Path | None,
    images: Sequence[str | Path],
    out: str | Path = "visualize",
    top_k: int = 3,
    overrides: Sequence[str] | None = None,
) -> list[Path]:
    """Write ``out/<image>_cam.png`` for each image: teacher and student CAMs of its top classes.

    Args:
        config: a recipe; its teacher (with ``teacher.pretrained``) and student are built.
        checkpoint: student weights (run checkpoint or export); None keeps the recipe's.
        images: image files, resized (and cropped) as the recipe's validation data.
        out: output folder.
        top_k: classes per image, ranked by the teacher (else the student).
        overrides: ``key=value`` recipe overrides.
    """
    cfg = load_config(config, list(overrides or []))
    names = class_names(cfg)
    num_classes = cfg.student.num_classes or (len(names) if names else None)
    models = [("student", load_model(cfg, "student", checkpoint, num_classes))]
    if cfg.teacher.name is not None:
        models.insert(0, ("teacher", load_model(cfg, "teacher", None, num_classes)))
    paths = _cam_options(cfg)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for file in images:
        array, x = model_input(cfg, file)
        rows = []
        for role, model in models:
            logits, cams = compute_cams(
                model, x, paths.get(f"{role}_layer"), paths.get(f"{role}_classifier")
            )
            rows.append((f"{role}: {cfg[role].name}", logits[0].softmax(0), cams[0]))
        k = min(top_k, rows[0][1].numel())
        top = rows[0][1].topk(k).indices.tolist()
        labels = names if names and len(names) == rows[0][1].numel() else None
        labels = labels or [f"class {i}" for i in range(rows[0][1].numel())]
        stem = Path(file).stem
        target = out / f"{stem}_cam.png"
        if target in written:
            target = out / f"{stem}_{len(written)}_cam.png"
        written.append(draw_cams(array, rows, top, labels, target, title=Path(file).name))
    return written
