"""Writing a teacher cache from built objects (data set, teacher, taps), and checking one.

:mod:`kdforge.commands.cache_teacher` builds those objects from a recipe.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from safetensors.torch import save_file
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm import tqdm

from kdforge.cache.format import (
    MANIFEST,
    VERSION,
    CacheError,
    TeacherCache,
    fingerprint,
    pack_logits,
    sha256,
)
from kdforge.cache.replay import scripted
from kdforge.errors import ConfigError
from kdforge.losses import LossTerm
from kdforge.taps import FeatureTaps

__all__ = ["cached_outputs", "check_cache", "write_cache"]


def cached_outputs(cfg: DictConfig, terms: dict[str, LossTerm]) -> tuple[list[str], bool]:
    """``(teacher taps, whether logits are needed)`` of a recipe, or a CacheError saying why
    it cannot train from a cache (the data set's pipeline is checked when it is recorded)."""
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


@torch.inference_mode()
def _teacher_values(
    teacher: nn.Module, taps: FeatureTaps, images: Tensor
) -> tuple[Tensor, dict[str, Tensor]]:
    """``(logits, {path: feature})`` on the CPU, the teacher run where its weights are."""
    device = next(teacher.parameters(), torch.empty(0)).device
    logits = teacher(images.to(device))
    return logits.cpu(), {p: v.cpu() for p, v in taps.outputs.items()}


def write_cache(
    out: str | Path,
    train_set: Dataset,
    teacher: nn.Module,
    taps: Sequence[str],
    logits: bool,
    sections: dict[str, Any],
    seed_epoch: Callable[[int], object],
    epochs: int,
    topk: int | None = None,
    batch_size: int = 256,
    shard_size: int = 4096,
) -> Path:
    """Run ``teacher`` over ``epochs`` augmented passes of ``train_set`` and write the cache
    folder ``out`` (see :mod:`kdforge.cache`); returns ``out``.

    Args:
        out: the folder to write; it must not hold a cache already.
        train_set: the training set (with ``num_classes``) whose transform, a kdforge
            ``Compose``, is recorded.
        teacher: the frozen teacher in eval mode.
        taps: the teacher module paths whose outputs are stored.
        logits: store the teacher's logits.
        sections: the recipe sections the values depend on
            (:func:`~kdforge.cache.format.fingerprint_sections`); a training run compares
            their fingerprint with its own.
        seed_epoch: called with each epoch before its pass; seeds the global random
            generators as the trainer does at the start of that epoch.
        epochs: augmented passes stored.
        topk: logits kept per sample (default ``min(K, 100)``).
        batch_size: images per teacher forward.
        shard_size: samples per file.
    """
    out = Path(out)
    if (out / MANIFEST).exists():
        raise CacheError(f"{out} already holds a teacher cache; pick another --out")
    if epochs < 1:
        raise ConfigError(f"--epochs must be at least 1, got {epochs}")
    num_classes = train_set.num_classes
    k = topk or min(num_classes, 100)
    if not 1 <= k <= num_classes:
        raise ConfigError(f"--topk must be in [1, {num_classes}], got {k}")
    tap_paths = sorted(taps)
    transform = scripted(train_set)
    hooks = FeatureTaps(teacher, tap_paths)
    out.mkdir(parents=True, exist_ok=True)
    files, shards, shapes = [], [], {}
    n = len(train_set)
    bar = tqdm(total=epochs * n, desc="caching teacher", unit="img", dynamic_ncols=True)
    for epoch in range(epochs):
        seed_epoch(epoch)
        aug: list[Any] = []
        for start in range(0, n, shard_size):
            stop = min(start + shard_size, n)
            parts: dict[str, list[Tensor]] = {}
            for lo in range(start, stop, batch_size):
                images = []
                for i in range(lo, min(lo + batch_size, stop)):
                    images.append(train_set[i][0])
                    aug.append(transform.record)
                output, feats = _teacher_values(teacher, hooks, torch.stack(images))
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
    hooks.remove()
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
    path: str | Path,
    train_set: Dataset,
    teacher: nn.Module,
    taps: Sequence[str],
    logits: bool,
    sections: dict[str, Any],
    samples: int = 32,
    atol: float = 1e-3,
    rtol: float = 1e-2,
) -> dict[str, float]:
    """Recompute ``samples`` samples of epoch 0 with the live teacher; raise a CacheError if
    the cache does not fit ``sections`` or a stored value differs beyond
    ``atol + rtol·|live|`` (fp16 features need rtol ~1e-2).

    The arguments are those of :func:`write_cache`. Returns the largest absolute difference
    per stored value.
    """
    cache = TeacherCache(path)
    cache.check_fits(sections, 1)
    tap_paths = sorted(taps)
    transform = scripted(train_set)
    indices = range(min(samples, cache.num_samples))
    images = []
    for i in indices:
        transform.script = cache.augmentation(0, i)
        images.append(train_set[i][0])
    with FeatureTaps(teacher, tap_paths) as hooks:
        live_logits, live_feats = _teacher_values(teacher, hooks, torch.stack(images))
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
