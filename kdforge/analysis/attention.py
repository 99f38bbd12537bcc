"""``kdforge visualize attention``: the ViT teacher's and the CAKD student projector's attention.

Both maps are the pre-softmax ``q·kᵀ/√d`` logits over patch tokens that CAKD (Liu et al.,
ACCV 2022) distils — the teacher's from its last attention block (class token removed),
the student's from the PCA projector over its ``layer3`` tokens. Each is drawn as the
attention a patch receives: ``softmax`` over keys, averaged over all query patches, on
the patch grid, for the mean over heads and for the ``top_k`` most focused heads (lowest
entropy).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from PIL import Image
from torch import Tensor

from kdforge.analysis.loading import load_model
from kdforge.config import load_config
from kdforge.data.presets import classification_view
from kdforge.engine.checkpoint import load_checkpoint
from kdforge.errors import ConfigError
from kdforge.losses import CAKDLoss
from kdforge.losses.base import shape_tree
from kdforge.models.vit import split_heads
from kdforge.taps import FeatureTaps

__all__ = ["attention_received", "draw_attention", "visualize_attention"]


def attention_received(qk_logits: Tensor) -> Tensor:
    """``(..., L, L)`` pre-softmax logits -> ``(..., L)``: softmax over keys, mean over queries."""
    return qk_logits.softmax(dim=-1).mean(dim=-2)


def _maps(q: Tensor, k: Tensor, drop_class_token: bool) -> Tensor:
    """Per-head ``(h, L)`` attention received from one image's ``(h, L, d)`` queries/keys."""
    logits = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # (h, L, L)
    if drop_class_token:
        logits = logits[:, 1:, 1:]
    return attention_received(logits)


def draw_attention(
    image: np.ndarray, rows: Sequence[tuple[str, Tensor]], top_k: int, path: str | Path
) -> Path:
    """One PNG: a row per model (``(label, per-head maps (h, L))``); columns: the mean over
    heads, then the ``top_k`` lowest-entropy heads, each on the square patch grid over the image."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    cols = 1 + top_k
    fig = Figure(figsize=(2.6 * (cols + 1), 2.7 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), cols + 1, squeeze=False)
    height, width = image.shape[:2]
    for r, (label, maps) in enumerate(rows):
        entropy = -(maps * maps.clamp_min(1e-12).log()).sum(-1)  # (h,)
        heads = entropy.argsort()[:top_k].tolist()
        panels = [("mean of heads", maps.mean(0))] + [(f"head {h}", maps[h]) for h in heads]
        axes[r][0].imshow(image)
        axes[r][0].set_title(label, fontsize=9)
        for c, (title, m) in enumerate(panels, start=1):
            side = math.isqrt(m.numel())
            grid = F.interpolate(m.view(1, 1, side, side), (height, width), mode="nearest")[0, 0]
            axes[r][c].imshow(image)
            axes[r][c].imshow(grid.numpy(), cmap="jet", alpha=0.5)
            axes[r][c].set_title(title, fontsize=9)
        for ax in axes[r]:
            ax.axis("off")
    path = Path(path)
    fig.savefig(path, dpi=100)
    return path


def _shapes(output: Tensor, features: dict) -> dict:
    return {"": output.shape, **{k: shape_tree(v) for k, v in features.items()}}


def _run_state(checkpoint: str | Path | None) -> dict[str, Any]:
    """A kdforge run checkpoint (with ``terms`` and ``num_classes``), or {} for other files."""
    if checkpoint is None or Path(checkpoint).suffix == ".safetensors":
        return {}
    state = load_checkpoint(checkpoint)
    return state if "student" in state else {}


def _cakd_term(loss_cfg: dict) -> tuple[str, CAKDLoss]:
    """The recipe's ``cakd`` term (name, fresh instance), or a default one."""
    for name, spec in loss_cfg.items():
        spec = dict(spec or {})
        if spec.pop("type", name) == "cakd":
            return name, CAKDLoss(**spec)
    return "cakd", CAKDLoss()


def visualize_attention(
    config: str | Path,
    checkpoint: str | Path | None,
    images: Sequence[str | Path],
    out: str | Path = "visualize",
    top_k: int = 3,
    overrides: Sequence[str] | None = None,
) -> list[Path]:
    """Write ``out/<image>_attention.png`` per image: teacher and student-projector attention.

    Args:
        config: a recipe with a ViT teacher (``teacher.pretrained`` for its weights).
        checkpoint: a kdforge run checkpoint (student + projector weights). An export or
            None has no projector weights: only the teacher is drawn.
        images: image files, resized and centre-cropped to the teacher's input size.
        out: output folder.
        top_k: heads drawn per model besides their mean.
        overrides: ``key=value`` recipe overrides.
    """
    cfg = load_config(config, list(overrides or []))
    if cfg.teacher.name is None:
        raise ConfigError("visualize attention needs a recipe with a (ViT) teacher")
    state = _run_state(checkpoint)
    num_classes = state.get("num_classes") or None
    teacher = load_model(cfg, "teacher", None, num_classes)
    student = load_model(cfg, "student", checkpoint, num_classes)
    name, term = _cakd_term(OmegaConf.to_container(cfg.loss, resolve=True))
    term.attach(student, teacher)
    size = getattr(teacher, "image_size", 224)
    view, normalize = classification_view("imagefolder", {"image_size": size})
    prefix = f"{name}."
    projector = {
        k[len(prefix) :]: v for k, v in state.get("terms", {}).items() if k[: len(prefix)] == prefix
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with (
        torch.no_grad(),
        FeatureTaps(teacher, term.teacher_taps) as t_taps,
        FeatureTaps(student, term.student_taps) as s_taps,
    ):
        for i, file in enumerate(images):
            with Image.open(file) as img:
                array = np.asarray(view(img.convert("RGB")))
            x = torch.from_numpy(array.transpose(2, 0, 1).copy()).float()[None] / 255.0
            x = normalize(x)
            t_out, s_out = teacher(x), student(x)
            t_feats, s_feats = t_taps.outputs, s_taps.outputs
            if i == 0:  # projector shapes from this image, weights from the checkpoint
                term.build(_shapes(s_out, s_feats), _shapes(t_out, t_feats))
                if projector:
                    term.load_state_dict(projector)
            q, k, _ = term.attention.qkv(t_feats[term.attention.tap])
            rows = [(f"teacher: {cfg.teacher.name}", _maps(q[0], k[0], True))]
            if projector:
                tokens = s_feats[term.student_layer].flatten(2).transpose(1, 2)  # (1, HW, C)
                sq, sk, _ = split_heads(term.pca_proj.to_qkv(tokens), term.pca_proj.heads)
                label = f"student: {cfg.student.name} (PCA projector)"
                rows.append((label, _maps(sq[0], sk[0], False)))
            target = out / f"{Path(file).stem}_attention.png"
            if target in written:
                target = out / f"{Path(file).stem}_{i}_attention.png"
            written.append(draw_attention(array, rows, top_k, target))
    return written
