"""Samplers: repeated augmentation, aspect-ratio grouping, shards for evaluation.

``RepeatedAugSampler`` (Hoffer et al., CVPR 2020; Berman et al., 2019), DDP-aware: each
image is drawn ``repetitions`` times in a row of the shuffled order and the copies are
dealt to consecutive processes, so every process sees a different augmentation of it in
the same step. An epoch keeps the length of one pass over the data (rounded down to a
multiple of ``round_to`` images over all processes), as DeiT's and torchvision's
``RASampler`` that CAKD's released recipe uses (``--ra-sampler --ra-reps 4``).

``AspectRatioBatchSampler`` batches images of one orientation, as mmdetection's of the same
name: a batch of portrait and landscape images pads to about their union (1333 x 1333 at
COCO's scale), which costs compute and changes the statistics that normalisations over the
whole padded batch take.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence, Sized
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from kdforge.errors import ConfigError

__all__ = [
    "AspectRatioBatchSampler",
    "RepeatedAugSampler",
    "ShardSampler",
    "drop_last_needed",
    "last_batch_size",
    "portrait_flags",
]


def last_batch_size(num_samples: int, batch_size: int, world_size: int = 1) -> int:
    """Size of the last batch of one process's epoch (``batch_size`` when it is full).

    ``num_samples`` are dealt to ``world_size`` processes as ``DistributedSampler`` deals
    them (padded to ``ceil(num_samples / world_size)`` each); pass ``len(sampler)`` with
    ``world_size=1`` for a sampler that is already per process.
    """
    if batch_size < 1 or world_size < 1:
        raise ValueError(f"need batch_size, world_size >= 1, got {batch_size}, {world_size}")
    per_process = math.ceil(num_samples / world_size)
    return per_process % batch_size or min(batch_size, per_process)


def drop_last_needed(num_samples: int, batch_size: int, world_size: int = 1) -> bool:
    """True when an epoch would end on a batch of one sample after at least one full batch.

    BatchNorm cannot train on one sample where its statistics cover a single value per
    channel (PSPNet's 1x1 pyramid pooling: "Expected more than 1 value per channel when
    training"), and a batch of one is noise anyway; dropping it leaves out one sample per
    epoch, a different one each shuffled epoch. Use it as the training DataLoader's
    ``drop_last``.
    """
    per_process = math.ceil(num_samples / world_size)
    if batch_size < 2 or per_process <= batch_size:
        return False
    return last_batch_size(per_process, batch_size) == 1


class RepeatedAugSampler(Sampler[int]):
    """Shuffled indices, each repeated ``repetitions`` times, sharded over processes.

    Per epoch: ``perm = randperm(len(data))`` seeded by ``seed + epoch``; each index is
    repeated ``repetitions`` times; the list is padded by wrapping to a multiple of
    ``num_replicas``; process ``rank`` takes every ``num_replicas``-th index from ``rank``
    and keeps the first ``len(data) // round_to * round_to // num_replicas`` of them (the
    whole shard-length of one pass if the data set is smaller than ``round_to``).

    Args:
        data_source: the data set (only its length is used).
        num_replicas, rank: processes and this one's index (default: from
            ``torch.distributed`` when initialised, else 1 and 0).
        shuffle: shuffle each epoch (True).
        seed: base seed shared by all processes (0).
        repetitions: copies of each image (CAKD: 4; torchvision's default 3).
        round_to: epoch length granularity over all processes (256, as released).

    Call :meth:`set_epoch` before each epoch (the kdforge trainer does).
    """

    def __init__(
        self,
        data_source: Sized,
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        repetitions: int = 3,
        round_to: int = 256,
    ) -> None:
        initialised = dist.is_available() and dist.is_initialized()
        if num_replicas is None:
            num_replicas = dist.get_world_size() if initialised else 1
        if rank is None:
            rank = dist.get_rank() if initialised else 0
        if not 0 <= rank < num_replicas or repetitions < 1:
            raise ValueError(
                "need 0 <= rank < num_replicas and repetitions >= 1, got "
                f"rank={rank}, num_replicas={num_replicas}, repetitions={repetitions}"
            )
        self.length = len(data_source)
        self.num_replicas, self.rank, self.shuffle, self.seed = num_replicas, rank, shuffle, seed
        self.repetitions, self.epoch = repetitions, 0
        self.num_samples = math.ceil(self.length * repetitions / num_replicas)  # per process
        self.total_size = self.num_samples * num_replicas
        kept = self.length // round_to * round_to // num_replicas
        self.num_selected = kept if kept > 0 else self.length // num_replicas

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for ``epoch`` (the same order on every process)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.length, generator=generator).tolist()
        else:
            order = list(range(self.length))
        indices = [i for i in order for _ in range(self.repetitions)]
        indices += indices[: self.total_size - len(indices)]  # pad by wrapping around
        shard = indices[self.rank : self.total_size : self.num_replicas]
        return iter(shard[: self.num_selected])

    def __len__(self) -> int:
        return self.num_selected


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...``: disjoint shards that cover the data set once."""

    def __init__(self, dataset: Sized, rank: int = 0, world_size: int = 1) -> None:
        self.indices = range(rank, len(dataset), world_size)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def portrait_flags(dataset: Any) -> list[bool]:
    """``flags[i]``: image ``i`` is taller than wide (``width < height``), from the data set's
    ``image_size(i) -> (width, height)`` (the annotation file's sizes: nothing is decoded).

    Raises:
        ConfigError: the data set cannot tell its image sizes without decoding.
    """
    size = getattr(dataset, "image_size", None)
    if not callable(size):
        raise ConfigError(
            f"grouping by aspect ratio (data.group_by_aspect_ratio) needs the image sizes: "
            f"{type(dataset).__name__} has no image_size(index) (CocoDetection has one); "
            "set data.group_by_aspect_ratio=false"
        )
    flags = []
    for i in range(len(dataset)):
        width, height = size(i)
        flags.append(width < height)
    return flags


class AspectRatioBatchSampler(Sampler[list[int]]):
    """Batches of one orientation, as mmdetection 3.x's ``AspectRatioBatchSampler``.

    Wraps this process's index ``sampler`` (``DistributedSampler``, ``RepeatedAugSampler``):
    each index goes to the portrait (``width < height``) or the landscape bucket (square
    images count as landscape) and a bucket is yielded as a batch once it holds
    ``batch_size`` indices. At the end of the epoch the leftovers, portrait first, are
    yielded in batches of ``batch_size`` that may mix orientations; the last one, if
    incomplete, is dropped under ``drop_last``. So every batch but at most two per epoch
    has one orientation, an epoch has ``ceil(n / batch_size)`` batches
    (``n // batch_size`` under ``drop_last``) for ``n = len(sampler)``, as many on every
    process, and the order depends only on the inner sampler's (seed, epoch).

    mmdetection differs in two corners: under ``drop_last`` it also drops a leftover batch
    that is exactly full (its ``__len__`` then overcounts by one; kdforge only drops a
    last batch of one image, which never is), and its buckets outlive an epoch that is
    left early (``max_steps``); here they are local to each pass.

    Args:
        sampler: the per-process sampler of data set indices.
        portrait: ``portrait[i]`` for every data set index (:func:`portrait_flags`).
        batch_size: images per batch.
        drop_last: drop the epoch's last batch when it is incomplete.
    """

    def __init__(
        self,
        sampler: Sampler[int],
        portrait: Sequence[bool],
        batch_size: int,
        drop_last: bool = False,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.sampler, self.portrait = sampler, [bool(p) for p in portrait]
        self.batch_size, self.drop_last = batch_size, drop_last

    def set_epoch(self, epoch: int) -> None:
        """Pass the epoch on to the inner sampler (it reshuffles)."""
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[list[int]]:
        buckets: tuple[list[int], list[int]] = ([], [])  # landscape (w >= h), portrait
        for index in self.sampler:
            bucket = buckets[self.portrait[index]]
            bucket.append(index)
            if len(bucket) == self.batch_size:
                yield bucket[:]
                bucket.clear()
        rest = buckets[1] + buckets[0]  # mmdetection's order: w < h first
        for start in range(0, len(rest), self.batch_size):
            batch = rest[start : start + self.batch_size]
            if len(batch) == self.batch_size or not self.drop_last:
                yield batch

    def __len__(self) -> int:
        if self.drop_last:
            return len(self.sampler) // self.batch_size
        return math.ceil(len(self.sampler) / self.batch_size)
