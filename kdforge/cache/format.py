"""The cache folder: manifest, checksums, fingerprint and reading stored teacher outputs."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors import safe_open
from torch import Tensor

from kdforge.errors import DataError

__all__ = ["MANIFEST", "VERSION", "CacheError", "TeacherCache", "fingerprint", "sha256"]

MANIFEST = "manifest.json"
VERSION = 1


class CacheError(DataError):
    """A teacher cache that is damaged or does not fit the recipe."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint_sections(
    cfg: DictConfig, taps: list[str], logits: bool, values: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """What the stored values depend on: data and augmentation, teacher, seed, outputs.

    ``values``: ``{key: term}`` of the terms whose ``teacher_values`` are stored (see
    :func:`~kdforge.cache.cached_outputs`); their ``teacher_value_settings`` are part of
    the outputs.
    """
    data = OmegaConf.to_container(cfg.data, resolve=True)
    for key in ("batch_size", "eval_batch_size", "num_workers"):  # do not change the values
        data.pop(key)
    teacher = {k: cfg.teacher[k] for k in ("name", "num_classes", "pretrained")}
    teacher["kwargs"] = OmegaConf.to_container(cfg.teacher.kwargs, resolve=True)
    outputs: dict[str, Any] = {"logits": logits, "features": sorted(taps)}
    if values:  # absent when empty: caches of output and feature terms keep their fingerprint
        outputs["values"] = {k: t.teacher_value_settings() for k, t in sorted(values.items())}
    return {
        "task": cfg.task,
        "data": data,
        "teacher": teacher,
        "seed": cfg.train.seed,
        "outputs": outputs,
    }


def fingerprint(sections: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(sections, sort_keys=True).encode()).hexdigest()


class TeacherCache:
    """An opened cache folder: checksums verified, outputs read by ``(epoch, index)``.

    Args:
        path: the folder ``kdforge cache-teacher`` wrote.
        verify: check every file's sha256 against the manifest (a clear error names the
            first bad file).
    """

    def __init__(self, path: str | Path, verify: bool = True) -> None:
        self.path = Path(path)
        manifest = self.path / MANIFEST
        if not manifest.is_file():
            raise CacheError(f"{self.path} is not a teacher cache: it has no {MANIFEST}")
        self.manifest: dict[str, Any] = json.loads(manifest.read_text())
        if self.manifest.get("version") != VERSION:
            raise CacheError(
                f"{manifest}: format version {self.manifest.get('version')}, "
                f"this kdforge reads {VERSION}"
            )
        if verify:
            for entry in self.manifest["files"]:
                file = self.path / entry["file"]
                if not file.is_file():
                    raise CacheError(f"teacher cache {self.path}: missing file {entry['file']}")
                if sha256(file) != entry["sha256"]:
                    raise CacheError(
                        f"teacher cache {self.path}: {entry['file']} is damaged (sha256 "
                        "differs from the manifest); rewrite the cache"
                    )
        self._handles: dict[str, Any] = {}  # shard file -> safe_open handle (per process)
        self._aug: dict[int, list[Any]] = {}

    @property
    def epochs(self) -> int:
        return self.manifest["epochs"]

    @property
    def num_samples(self) -> int:
        return self.manifest["num_samples"]

    def check_fits(self, sections: dict[str, Any], epochs: int) -> None:
        """Raise unless the cache was made from these recipe sections for ``epochs`` epochs."""
        stored = self.manifest["sections"]
        if fingerprint(sections) != self.manifest["fingerprint"]:
            differ = sorted(k for k in sections if sections[k] != stored.get(k))
            raise CacheError(
                f"teacher cache {self.path} was made from a different recipe (differs in: "
                f"{', '.join(differ)}); write it again with kdforge cache-teacher"
            )
        if self.epochs < epochs:
            raise CacheError(
                f"teacher cache {self.path} holds {self.epochs} epochs but the run needs "
                f"{epochs}; write it with --epochs {epochs}"
            )

    def augmentation(self, epoch: int, index: int) -> list[Any]:
        """The stored parameters of each random transform for this sample."""
        if epoch not in self._aug:
            self._aug = {epoch: json.loads((self.path / f"aug_e{epoch:03d}.json").read_text())}
        return self._aug[epoch][index]

    def outputs(self, epoch: int, index: int) -> tuple[Tensor | None, dict[str, Tensor]]:
        """``(logits (K,) or None, {path: feature, key/name: term value})`` of one sample, as
        float32."""
        shard = self._shard(epoch, index)
        f = self._handles.get(shard["file"])
        if f is None:
            f = self._handles[shard["file"]] = safe_open(self.path / shard["file"], "pt")
        row = index - shard["start"]
        logits = None
        if self.manifest["logits"]:
            values = f.get_slice("logits_values")[row : row + 1][0]
            indices = f.get_slice("logits_indices")[row : row + 1][0]
            rest = f.get_slice("logits_rest")[row : row + 1]
            logits = rest.expand(self.manifest["num_classes"]).clone()
            logits[indices] = values
        features = {
            p: f.get_slice(f"feature.{p}")[row : row + 1][0].float()
            for p in self.manifest["features"]
        }
        for name in self.manifest.get("values", []):  # stored as float32
            features[name] = f.get_slice(f"value.{name}")[row : row + 1][0]
        return logits, features

    def _shard(self, epoch: int, index: int) -> dict[str, Any]:
        for shard in self.manifest["shards"]:
            if shard["epoch"] == epoch and shard["start"] <= index < shard["stop"]:
                return shard
        raise CacheError(f"teacher cache {self.path} has no sample {index} of epoch {epoch}")

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers reopen their handles
        return {**self.__dict__, "_handles": {}}


def pack_logits(logits: Tensor, k: int) -> dict[str, Tensor]:
    """``(n, K)`` logits -> the top-k values and classes and the others' log-mean-exp."""
    values, indices = logits.float().topk(k, dim=1)
    if k == logits.shape[1]:
        rest = torch.zeros(len(logits))
    else:
        others = logits.float().scatter(1, indices, float("-inf"))
        rest = others.logsumexp(1) - torch.log(torch.tensor(float(logits.shape[1] - k)))
    return {"logits_values": values, "logits_indices": indices, "logits_rest": rest}
