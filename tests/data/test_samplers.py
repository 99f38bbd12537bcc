"""Repeated-augmentation sampler: copies in a row, dealt across processes, epoch length."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from kdforge.data.samplers import RepeatedAugSampler


def test_single_process_repeats_each_image_in_a_row() -> None:
    sampler = RepeatedAugSampler(range(512), repetitions=4)
    order = list(sampler)
    assert len(sampler) == len(order) == 512  # one pass over the data, not four
    runs = [order[i : i + 4] for i in range(0, 512, 4)]
    assert all(len(set(run)) == 1 for run in runs)
    assert len({run[0] for run in runs}) == 128
    generator = torch.Generator().manual_seed(0)
    assert [run[0] for run in runs] == torch.randperm(512, generator=generator)[:128].tolist()


def test_copies_are_dealt_to_different_processes() -> None:
    shards = [list(RepeatedAugSampler(range(1000), 4, r, repetitions=4, seed=3)) for r in range(4)]
    assert all(len(s) == 1000 // 256 * 256 // 4 == 192 for s in shards)
    for step in range(192):  # in each step the four processes hold the four copies of one image
        assert len({s[step] for s in shards}) == 1
    two = [list(RepeatedAugSampler(range(1000), 2, r, repetitions=4)) for r in range(2)]
    assert two[0][0::2] == two[1][0::2] and two[0][:2] == [two[0][0]] * 2
    counts = Counter(two[0] + two[1])
    assert set(counts.values()) == {4}  # every drawn image: 2 copies on each process


def test_epochs_reshuffle_identically_on_every_process() -> None:
    a, b = RepeatedAugSampler(range(300), 2, 0), RepeatedAugSampler(range(300), 2, 1)
    first = list(a)
    a.set_epoch(1)
    b.set_epoch(1)
    assert list(a) != first and list(a)[::3] == list(b)[::3]
    a.set_epoch(0)
    assert list(a) == first
    ordered = list(RepeatedAugSampler(range(300), shuffle=False, repetitions=3))
    assert ordered[:7] == [0, 0, 0, 1, 1, 1, 2]


def test_small_data_sets_and_loaders() -> None:
    data = TensorDataset(torch.arange(10.0))
    sampler = RepeatedAugSampler(data, num_replicas=2, rank=1, repetitions=4)
    assert len(sampler) == 5  # smaller than round_to: the shard length of one pass
    loader = DataLoader(data, batch_size=2, sampler=sampler)
    assert sum(len(x) for (x,) in loader) == 5 and len(loader) == 3
    assert len(RepeatedAugSampler(range(10), repetitions=4)) == 10  # no process group: 1 of 1
    with pytest.raises(ValueError, match="rank"):
        RepeatedAugSampler(data, num_replicas=2, rank=2)
