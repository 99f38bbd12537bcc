"""Samplers: repeated augmentation (copies in a row, dealt across processes, epoch length)
and aspect-ratio grouping (one orientation per batch, per process, resumable)."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from kdforge.data.samplers import AspectRatioBatchSampler, RepeatedAugSampler, portrait_flags
from kdforge.errors import ConfigError


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


class _Sized:
    """A data set of ``sizes[i] = (width, height)`` that only knows its image sizes."""

    def __init__(self, sizes: list[tuple[int, int]]) -> None:
        self.sizes = sizes

    def __len__(self) -> int:
        return len(self.sizes)

    def image_size(self, index: int) -> tuple[int, int]:
        return self.sizes[index]


def _mixed(n: int = 103, seed: int = 0) -> _Sized:
    """About a third portrait, a few square (which count as landscape)."""
    rng = torch.Generator().manual_seed(seed)
    kinds = torch.randint(0, 7, (n,), generator=rng).tolist()
    table = {0: (480, 640), 1: (427, 640), 2: (500, 500)}
    return _Sized([table.get(k, (640, 480)) for k in kinds])


def _grouped(data: _Sized, batch: int, world: int = 1, rank: int = 0, **kw) -> list[list[int]]:
    inner = DistributedSampler(
        data, num_replicas=world, rank=rank, shuffle=True, seed=kw.pop("seed", 0)
    )
    inner.set_epoch(kw.pop("epoch", 0))
    return list(AspectRatioBatchSampler(inner, portrait_flags(data), batch, **kw))


def test_batches_have_one_orientation_and_every_index_once() -> None:
    data = _mixed()
    flags = portrait_flags(data)
    assert flags.count(True) > 20 and flags.count(False) > 50
    assert portrait_flags(_Sized([(500, 500), (499, 500), (500, 499)])) == [False, True, False]
    for batch in (2, 4, 5):
        batches = _grouped(data, batch)
        assert sorted(i for b in batches for i in b) == list(range(len(data)))  # once each
        mixed = [b for b in batches if len({flags[i] for i in b}) > 1]
        assert len(mixed) <= 1 and (not mixed or mixed[0] in batches[-2:])  # leftovers only
        assert all(len(b) == batch for b in batches[:-1])
        assert len(batches) == math.ceil(len(data) / batch)


def test_leftovers_come_last_portrait_first_as_mmdetection() -> None:
    flags = [False, True, False, True, False, False, True]  # L P L P L L P
    sampler = AspectRatioBatchSampler(list(range(7)), flags, batch_size=3)
    # buckets fill in order: L{0,2,4} full at 4; P{1,3,6} full at 6; L{5} is left over
    assert list(sampler) == [[0, 2, 4], [1, 3, 6], [5]] and len(sampler) == 3
    sampler = AspectRatioBatchSampler(list(range(7)), flags, batch_size=2)
    # L{0,2} at 2, P{1,3} at 3, L{4,5} at 5; left: P{6}
    assert list(sampler) == [[0, 2], [1, 3], [4, 5], [6]]
    uneven = AspectRatioBatchSampler(list(range(7)), [True, False] * 3 + [False], batch_size=4)
    # P{0,2,4} and L{1,3,5,6} full at 6: the 3 portrait ones are left
    assert list(uneven) == [[1, 3, 5, 6], [0, 2, 4]]
    dropped = AspectRatioBatchSampler(list(range(7)), flags, batch_size=2, drop_last=True)
    assert list(dropped) == [[0, 2], [1, 3], [4, 5]] and len(dropped) == 3
    with pytest.raises(ValueError, match="batch_size"):
        AspectRatioBatchSampler(list(range(7)), flags, batch_size=0)


def test_order_depends_only_on_seed_and_epoch() -> None:
    data = _mixed()
    first = _grouped(data, 4, epoch=0)
    assert _grouped(data, 4, epoch=0) == first  # same seed and epoch: same batches
    assert _grouped(data, 4, epoch=1) != first
    assert _grouped(data, 4, epoch=0, seed=1) != first
    inner = DistributedSampler(data, num_replicas=1, rank=0, seed=0)
    sampler = AspectRatioBatchSampler(inner, portrait_flags(data), 4)
    sampler.set_epoch(1)  # reaches the inner sampler
    assert inner.epoch == 1 and list(sampler) == _grouped(data, 4, epoch=1)
    sampler.set_epoch(0)
    partial = iter(sampler)
    next(partial)  # an epoch left early (max_steps) leaves nothing behind
    assert list(sampler) == first


def test_processes_group_their_own_disjoint_shards() -> None:
    data = _mixed(n=96)
    flags = portrait_flags(data)
    shards = [_grouped(data, 4, world=2, rank=r, epoch=3) for r in range(2)]
    indices = [sorted(i for b in batches for i in b) for batches in shards]
    assert not set(indices[0]) & set(indices[1])
    assert sorted(indices[0] + indices[1]) == list(range(96))
    assert len(shards[0]) == len(shards[1]) == 12  # the same number of steps on each process
    for rank, batches in enumerate(shards):
        inner = DistributedSampler(data, num_replicas=2, rank=rank, seed=0)
        inner.set_epoch(3)
        assert indices[rank] == sorted(inner)  # exactly this process's shard
        assert sum(len({flags[i] for i in b}) > 1 for b in batches) <= 1
    odd = [_grouped(_mixed(n=97), 4, world=2, rank=r) for r in range(2)]
    assert len(odd[0]) == len(odd[1]) == 13  # DistributedSampler pads the shards to 49 each


def test_loader_length_is_the_number_of_batches() -> None:
    data = _mixed(n=50)
    for batch, drop in ((4, False), (4, True), (7, False), (7, True)):
        inner = DistributedSampler(data, num_replicas=1, rank=0)
        sampler = AspectRatioBatchSampler(inner, portrait_flags(data), batch, drop_last=drop)
        assert len(sampler) == len(list(sampler)) == (50 // batch if drop else -(-50 // batch))
    with pytest.raises(ConfigError, match="group_by_aspect_ratio"):
        portrait_flags(TensorDataset(torch.zeros(3)))


def test_build_data_groups_detection_batches(tmp_path) -> None:
    """``data.group_by_aspect_ratio`` in a recipe: one orientation per batch, the loader's
    length in batches, and the trainer's per-epoch ``set_epoch`` reaching the shuffle."""
    from types import SimpleNamespace

    from kdforge.config import load_config
    from kdforge.data.shapes import write_shapes_dataset
    from kdforge.engine.build import build_data
    from kdforge.engine.distributed import DistInfo
    from kdforge.engine.tasks import get_task
    from kdforge.engine.trainer import Trainer

    sizes = [(48, 64), (64, 48), (48, 64), (40, 64), (64, 40)]  # (height, width)
    root = write_shapes_dataset(tmp_path, num_train=23, num_val=2, image_size=sizes)
    overrides = [
        "task=detection", "data.name=coco", f"data.root={root}", "data.batch_size=4",
        "data.num_workers=0", "data.group_by_aspect_ratio=true", "student.name=retinanet_r18_fpn",
        "data.options={train_split: train, val_split: val, scale: [64, 48]}",
    ]  # fmt: skip
    cfg = load_config(None, overrides)
    train, _, _ = build_data(cfg.data, DistInfo(), 0, get_task("detection"))
    assert isinstance(train.batch_sampler, AspectRatioBatchSampler)
    n = len(train.dataset)
    assert len(train) == -(-n // 4)
    trainer = SimpleNamespace(
        seed=0,
        epoch=2,
        dist=DistInfo(),
        train_loader=train,
        distiller=SimpleNamespace(set_epoch=lambda e: None),
    )
    Trainer._start_epoch(trainer)  # what the trainer does before each epoch
    assert train.batch_sampler.sampler.epoch == 2
    portrait = {img["id"]: img["width"] < img["height"] for img in train.dataset.images}
    kinds = [len({portrait[t["image_id"]] for t in targets}) for _, targets in train]
    assert len(kinds) == len(train) and sum(k > 1 for k in kinds) <= 1 and kinds[0] == 1


def test_every_detection_recipe_groups_by_aspect_ratio() -> None:
    """mmdetection 3.x's ``_base_/datasets/coco_detection.py`` (which the CrossKD and CanKD
    configs inherit) batches with ``AspectRatioBatchSampler``."""
    from pathlib import Path

    from kdforge.config import load_config

    recipes = sorted((Path(__file__).parents[2] / "kdforge" / "recipes" / "coco").rglob("*.yaml"))
    assert len(recipes) > 30
    for recipe in recipes:
        assert load_config(recipe).data.group_by_aspect_ratio, recipe.name
    assert not load_config(None, ["student.name=resnet8"]).data.group_by_aspect_ratio  # default
