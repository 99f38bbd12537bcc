"""Writing a teacher cache from built objects (data set, teacher, taps), and checking one.

:mod:`kdforge.commands.cache_teacher` builds those objects from a recipe.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
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
from kdforge.teacher import TeacherReplay

__all__ = ["cached_outputs", "check_cache", "teacher_replay", "write_cache"]

Values = Mapping[str, LossTerm]  # teacher_values_key -> a term that computes those values


def cached_outputs(
    cfg: DictConfig, terms: Mapping[str, LossTerm]
) -> tuple[list[str], bool, dict[str, LossTerm]]:
    """``(teacher taps, whether logits are needed, {key: term})`` of a recipe, or a
    CacheError saying why it cannot train from a cache (the data set's pipeline is checked
    when it is recorded). The third item holds one term per ``teacher_values_key`` among
    the terms that define :meth:`~kdforge.losses.LossTerm.teacher_values` (e.g. cat_kd):
    the cache stores those values instead of their taps."""
    if cfg.data.mixup_alpha > 0 or cfg.data.repeated_aug > 1:
        raise CacheError("the teacher cache supports neither data.mixup_alpha nor repeated_aug")
    return _outputs_of(terms)


def _outputs_of(terms: Mapping[str, LossTerm]) -> tuple[list[str], bool, dict[str, LossTerm]]:
    needy = {n: t for n, t in terms.items() if t.needs_teacher}
    valued = {n: t for n, t in needy.items() if t.has_teacher_values}
    plain = {n: t for n, t in needy.items() if n not in valued}
    live = [n for n, t in plain.items() if type(t).attach is not LossTerm.attach]
    if live:
        raise CacheError(
            f"loss terms {live} use the teacher model itself (its weights or modules), which a "
            "cache does not hold; supported: terms reading its output and tapped features "
            "(kd, dkd, fitnet, pkd) and terms that define teacher_values (cat_kd)"
        )
    taps = sorted({p for t in plain.values() for p in t.teacher_taps if p != ""})
    logits = any(t.needs_teacher_output or "" in t.teacher_taps for t in plain.values())
    return taps, logits, {t.teacher_values_key: t for t in valued.values()}


def _value_taps(values: Values, teacher: nn.Module) -> list[str]:
    """Attach each value term to the teacher alone; the taps their values are computed from."""
    for term in values.values():
        term.attach(None, teacher)
    return [p for t in values.values() for p in t.teacher_taps if p != ""]


@contextlib.contextmanager
def _without_tf32() -> Iterator[None]:
    """Full float32 convolutions and matmuls (PyTorch lets cuDNN use TF32 by default): the
    writer's batches and ``--check``'s then agree to ~5e-5 instead of ~2e-2 on CAMs of
    magnitude 60 (resnet32x4 on an H200), and binarised CAMs to the bit."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = cudnn.allow_tf32, matmul.allow_tf32
    cudnn.allow_tf32 = matmul.allow_tf32 = False
    try:
        yield
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = saved


@torch.inference_mode()
@_without_tf32()
def _teacher_values(
    teacher: nn.Module, hooks: FeatureTaps, images: Tensor, taps: Sequence[str], values: Values
) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
    """``(logits, {path: feature} of taps, {key/name: term value})`` on the CPU; the teacher
    and the terms' ``teacher_values`` run where the teacher's weights are."""
    device = next(teacher.parameters(), torch.empty(0)).device
    logits = teacher(images.to(device))
    features = hooks.outputs
    stored: dict[str, Tensor] = {}
    for term in values.values():  # the term's own code, as in a live run
        stored |= term.stored_teacher_values({"": logits, **features})
    kept = {p: features[p].cpu() for p in taps}
    return logits.cpu(), kept, {k: v.float().cpu() for k, v in stored.items()}


def teacher_replay(
    teacher: nn.Module, terms: Mapping[str, LossTerm], images: Tensor, targets: Any
) -> TeacherReplay:
    """What a :class:`~kdforge.cache.ReplayDataset` batch would carry for ``images``, computed
    here at full precision (no top-k, float32 features): ``terms`` are fresh ones (their
    value terms are attached to ``teacher`` alone). For benchmarks and tests."""
    taps, logits, values = _outputs_of(terms)
    with FeatureTaps(teacher, sorted({*taps, *_value_taps(values, teacher)})) as hooks:
        output, features, stored = _teacher_values(teacher, hooks, images, taps, values)
    features = {k: v.clone() for k, v in (features | stored).items()}  # not inference tensors
    return TeacherReplay(targets, output.clone() if logits else None, features)


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
    values: Values | None = None,
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
        values: ``{key: term}`` of the terms whose ``teacher_values`` are stored (the third
            item of :func:`cached_outputs`); they are attached to ``teacher`` here.
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
    tap_paths, values = sorted(taps), values or {}
    transform = scripted(train_set)
    hooks = FeatureTaps(teacher, sorted({*tap_paths, *_value_taps(values, teacher)}))
    out.mkdir(parents=True, exist_ok=True)
    files, shards, shapes, value_shapes = [], [], {}, {}
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
                batch = torch.stack(images)
                output, feats, stored = _teacher_values(teacher, hooks, batch, tap_paths, values)
                tensors = pack_logits(output, k) if logits else {}
                tensors |= {f"feature.{p}": feats[p].half() for p in tap_paths}
                tensors |= {f"value.{name}": v for name, v in stored.items()}  # float32
                for key, value in tensors.items():
                    parts.setdefault(key, []).append(value.clone())
                bar.update(len(images))
            name = f"e{epoch:03d}_{start:07d}.safetensors"
            tensors = {key: torch.cat(v).contiguous() for key, v in parts.items()}
            save_file(tensors, str(out / name))
            shapes = {p: list(tensors[f"feature.{p}"].shape[1:]) for p in tap_paths}
            value_shapes = {
                key.removeprefix("value."): list(v.shape[1:])
                for key, v in tensors.items()
                if key.startswith("value.")
            }
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
        "values": sorted(value_shapes),
        "value_shapes": value_shapes,
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
    values: Values | None = None,
) -> dict[str, float]:
    """Recompute ``samples`` samples of epoch 0 with the live teacher (and the value terms'
    ``teacher_values``); raise a CacheError if the cache does not fit ``sections`` or a
    stored value differs beyond ``atol + rtol·|live|`` (fp16 features need rtol ~1e-2).

    The arguments are those of :func:`write_cache`. Returns the largest absolute difference
    per stored value.
    """
    cache = TeacherCache(path)
    cache.check_fits(sections, 1)
    tap_paths, values = sorted(taps), values or {}
    transform = scripted(train_set)
    indices = range(min(samples, cache.num_samples))
    images = []
    for i in indices:
        transform.script = cache.augmentation(0, i)
        images.append(train_set[i][0])
    hooked = sorted({*tap_paths, *_value_taps(values, teacher)})
    with FeatureTaps(teacher, hooked) as hooks:
        live_logits, live_feats, live_values = _teacher_values(
            teacher, hooks, torch.stack(images), tap_paths, values
        )
    stored = [cache.outputs(0, i) for i in indices]
    pairs = {
        f"feature.{p}": (torch.stack([s[1][p] for s in stored]), live_feats[p]) for p in tap_paths
    }
    for name, live in sorted(live_values.items()):  # check_fits: the cache holds them
        pairs[f"value.{name}"] = (torch.stack([s[1][name] for s in stored]), live)
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
