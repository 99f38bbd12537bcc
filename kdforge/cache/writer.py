"""``kdforge cache-teacher``: write a recipe's teacher outputs, or check a written cache."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import save_file
from torch import nn
from tqdm import tqdm

from kdforge.cache.format import (
    MANIFEST,
    VERSION,
    CacheError,
    TeacherCache,
    fingerprint,
    fingerprint_sections,
    pack_logits,
    sha256,
)
from kdforge.cache.replay import scripted
from kdforge.losses import LossTerm
from kdforge.taps import FeatureTaps

__all__ = ["cached_outputs", "check_cache", "write_cache"]


def cached_outputs(cfg: DictConfig, terms: dict[str, LossTerm]) -> tuple[list[str], bool]:
    """``(teacher taps, whether logits are needed)`` of a recipe, or a CacheError saying why
    it cannot train from a cache."""
    if cfg.task != "classification":
        raise CacheError(f"the teacher cache supports task classification only, not {cfg.task}")
    if cfg.data.mixup_alpha > 0 or cfg.data.repeated_aug > 1:
        raise CacheError("the teacher cache supports neither data.mixup_alpha nor repeated_aug")
    needy = {n: t for n, t in terms.items() if t.needs_teacher}
    live = [n for n, t in needy.items() if type(t).attach is not LossTerm.attach]
    if live:
        raise CacheError(
            f"loss terms {live} use the teacher model itself (its weights or modules), which a "
            "cache does not hold; supported: terms reading its output and tapped features "
            "(kd, dkd, fitnet, pkd)"
        )
    taps = sorted({p for t in needy.values() for p in t.teacher_taps if p != ""})
    logits = any(t.needs_teacher_output or "" in t.teacher_taps for t in needy.values())
    return taps, logits


def _setup(cfg: DictConfig) -> tuple[Any, nn.Module, list[str], bool, int]:
    from kdforge.engine.build import build_model, build_terms
    from kdforge.engine.tasks import TASKS

    if cfg.teacher.name is None:
        raise CacheError("teacher.name is not set: there is no teacher to cache")
    terms = build_terms(OmegaConf.to_container(cfg.loss, resolve=True) or {"ce": {}})
    taps, logits = cached_outputs(cfg, terms)
    train_set, _ = TASKS["classification"].build_datasets(cfg.data)
    teacher = build_model(cfg.teacher, train_set.num_classes).eval().requires_grad_(False)
    return train_set, teacher, taps, logits, train_set.num_classes


@torch.inference_mode()
def _teacher_values(teacher: nn.Module, taps: FeatureTaps, images: torch.Tensor):
    logits = teacher(images)
    return logits, taps.outputs


def write_cache(
    cfg: DictConfig,
    out: str | Path,
    epochs: int,
    topk: int | None = None,
    batch_size: int = 256,
    shard_size: int = 4096,
) -> Path:
    """Run the teacher of ``cfg`` over ``epochs`` augmented passes of its training set and
    write the cache folder ``out`` (see :mod:`kdforge.cache`); returns ``out``."""
    from kdforge.engine.trainer import _epoch_seed, seed_everything

    out = Path(out)
    if (out / MANIFEST).exists():
        raise FileExistsError(f"{out} already holds a teacher cache; pick another --out")
    if epochs < 1:
        raise CacheError(f"--epochs must be at least 1, got {epochs}")
    train_set, teacher, tap_paths, logits, num_classes = _setup(cfg)
    k = topk or min(num_classes, 100)
    if not 1 <= k <= num_classes:
        raise CacheError(f"--topk must be in [1, {num_classes}], got {k}")
    transform = scripted(train_set)
    taps = FeatureTaps(teacher, tap_paths)
    out.mkdir(parents=True, exist_ok=True)
    files, shards, shapes = [], [], {}
    n = len(train_set)
    bar = tqdm(total=epochs * n, desc="caching teacher", unit="img", dynamic_ncols=True)
    for epoch in range(epochs):
        seed_everything(_epoch_seed(cfg.train.seed, epoch, 0))
        aug: list[Any] = []
        for start in range(0, n, shard_size):
            stop = min(start + shard_size, n)
            parts: dict[str, list[torch.Tensor]] = {}
            for lo in range(start, stop, batch_size):
                images = []
                for i in range(lo, min(lo + batch_size, stop)):
                    images.append(train_set[i][0])
                    aug.append(transform.record)
                output, feats = _teacher_values(teacher, taps, torch.stack(images))
                values = pack_logits(output, k) if logits else {}
                values |= {f"feature.{p}": feats[p].half() for p in tap_paths}
                for key, value in values.items():
                    parts.setdefault(key, []).append(value.clone())
                bar.update(len(images))
            name = f"e{epoch:03d}_{start:07d}.safetensors"
            tensors = {key: torch.cat(v).contiguous() for key, v in parts.items()}
            save_file(tensors, str(out / name))
            shapes = {p: list(tensors[f"feature.{p}"].shape[1:]) for p in tap_paths}
            shards.append({"file": name, "epoch": epoch, "start": start, "stop": stop})
            files.append(name)
        aug_name = f"aug_e{epoch:03d}.json"
        (out / aug_name).write_text(json.dumps(aug))
        files.append(aug_name)
    bar.close()
    taps.remove()
    sections = fingerprint_sections(cfg, tap_paths, logits)
    manifest = {
        "version": VERSION,
        "fingerprint": fingerprint(sections),
        "sections": sections,
        "epochs": epochs,
        "num_samples": n,
        "num_classes": num_classes,
        "topk": k if logits else None,
        "logits": logits,
        "features": tap_paths,
        "feature_shapes": shapes,
        "shards": shards,
        "files": [{"file": f, "sha256": sha256(out / f)} for f in files],
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return out


def check_cache(
    cfg: DictConfig, path: str | Path, samples: int = 32, atol: float = 1e-3, rtol: float = 1e-2
) -> dict[str, float]:
    """Recompute ``samples`` samples of epoch 0 with the live teacher; raise a CacheError if
    a stored value differs beyond ``atol + rtol·|live|`` (fp16 features need rtol ~1e-2).
    Returns the largest absolute difference per stored value."""
    cache = TeacherCache(path)
    train_set, teacher, tap_paths, logits, _ = _setup(cfg)
    cache.check_fits(fingerprint_sections(cfg, tap_paths, logits), 1)
    transform = scripted(train_set)
    taps = FeatureTaps(teacher, tap_paths)
    indices = range(min(samples, cache.num_samples))
    images = []
    for i in indices:
        transform.script = cache.augmentation(0, i)
        images.append(train_set[i][0])
    live_logits, live_feats = _teacher_values(teacher, taps, torch.stack(images))
    stored = [cache.outputs(0, i) for i in indices]
    pairs = {
        f"feature.{p}": (torch.stack([s[1][p] for s in stored]), live_feats[p]) for p in tap_paths
    }
    if logits:  # compare the stored top-k classes only (the rest is a shared average)
        k = cache.manifest["topk"]
        top = live_logits.topk(k, dim=1).indices
        cached = torch.stack([s[0] for s in stored]).gather(1, top)
        pairs["logits"] = (cached, live_logits.gather(1, top))
    worst = {}
    for key, (cached, live) in pairs.items():
        worst[key] = float((cached - live).abs().max())
        if not torch.allclose(cached, live.float(), rtol=rtol, atol=atol):
            raise CacheError(
                f"teacher cache {path}: stored {key} differs from the live teacher by up to "
                f"{worst[key]:.3g} (tolerance {atol} + {rtol}·|value|) on epoch 0's first "
                f"{len(indices)} samples"
            )
    return worst
