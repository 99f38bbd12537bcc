"""Repeated-augmentation sampler (Hoffer et al., CVPR 2020; Berman et al., 2019), DDP-aware.

Each image is drawn ``repetitions`` times in a row of the shuffled order and the copies
are dealt to consecutive processes, so every process sees a different augmentation of it
in the same step. An epoch keeps the length of one pass over the data (rounded down to a
multiple of ``round_to`` images over all processes), as DeiT's and torchvision's
``RASampler`` that CAKD's released recipe uses (``--ra-sampler --ra-reps 4``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sized

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

__all__ = ["RepeatedAugSampler", "ShardSampler", "drop_last_needed", "last_batch_size"]


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
