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


@pytest.mark.parametrize(
    ("samples", "batch", "world", "last", "drop"),
    [
        (9, 4, 1, 1, True),  # 4 + 4 + 1
        (8, 4, 1, 4, False),
        (10, 4, 1, 2, False),
        (1, 4, 1, 1, False),  # one sample in all: nothing to drop it for
        (5, 1, 1, 1, False),  # every batch is one sample: drop_last changes nothing
        (17, 4, 2, 1, True),  # ceil(17 / 2) = 9 per process
        (16, 4, 2, 4, False),
        (0, 4, 1, 0, False),
    ],
)
def test_last_batch_size(samples: int, batch: int, world: int, last: int, drop: bool) -> None:
    from kdforge.data.samplers import drop_last_needed, last_batch_size

    assert last_batch_size(samples, batch, world) == last
    assert drop_last_needed(samples, batch, world) is drop
    data = TensorDataset(torch.arange(float(-(-samples // world))))
    sizes = [len(x) for (x,) in DataLoader(data, batch_size=batch)]
    assert (sizes[-1] if sizes else 0) == last  # what a per-process loader yields


def test_the_training_loader_never_ends_on_a_batch_of_one() -> None:
    """PSPNet's 1x1 pyramid pooling + BatchNorm cannot train on one sample; build_data drops
    the last batch when it would hold one."""
    from omegaconf import OmegaConf

    from kdforge.config import load_config
    from kdforge.engine.build import build_data
    from kdforge.engine.distributed import DistInfo
    from kdforge.engine.tasks import get_task

    pooled_bn = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.BatchNorm2d(3))
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        pooled_bn(torch.zeros(1, 3, 4, 4))
    cfg = load_config(None, ["student.name=resnet8", "data.name=digits", "data.num_workers=0"])
    data_cfg = OmegaConf.merge(cfg.data, {"options": {"size": 8}})
    train_len = len(get_task("classification").build_datasets(data_cfg)[0])
    for batch in (2, 4, 7, 8):
        data_cfg.batch_size = batch
        train, _, _ = build_data(data_cfg, DistInfo(), 0, get_task("classification"))
        assert train.drop_last is (train_len % batch == 1), batch
        assert min(len(x) for x, _ in train) > 1
