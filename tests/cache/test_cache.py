"""Teacher cache: written, verified, replayed exactly, and refused when it does not fit."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from kdforge.cache import (
    CacheError,
    ReplayDataset,
    TeacherCache,
    check_cache,
    replay_collate,
    write_cache,
)
from kdforge.cache.format import pack_logits
from kdforge.cli import main
from kdforge.config import load_config
from kdforge.engine.build import build_model, build_trainer
from kdforge.engine.tasks import TASKS

RECIPE = [
    "teacher.name=resnet8",
    "student.name=resnet8",
    "loss={ce: {weight: 0.1}, kd: {weight: 0.9}, hint: {type: fitnet, student_layer: layer2, "
    "teacher_layer: layer2}}",
    "schedule.epochs=2",
    "schedule.milestones=[1]",
]


@pytest.fixture
def cfg(tiny_overrides, tmp_path):
    torch.manual_seed(0)
    teacher = build_model(load_config(None, tiny_overrides + RECIPE).teacher, 10)
    torch.save(teacher.state_dict(), tmp_path / "teacher.pt")  # the same teacher every time
    overrides = [o for o in tiny_overrides if not o.startswith("teacher.pretrained")]
    return load_config(None, [*overrides, *RECIPE, f"teacher.pretrained={tmp_path}/teacher.pt"])


@pytest.fixture
def cache_dir(cfg, tmp_path):
    return write_cache(cfg, tmp_path / "cache", epochs=2, batch_size=16, shard_size=32)


def test_cache_layout_and_check(cfg, cache_dir) -> None:
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    assert manifest["epochs"] == 2 and manifest["num_samples"] == 48
    assert manifest["features"] == ["layer2"] and manifest["topk"] == 10
    assert len(manifest["shards"]) == 4  # 2 epochs x 2 shards of <= 32 samples
    worst = check_cache(cfg, cache_dir, samples=8)
    assert set(worst) == {"logits", "feature.layer2"}


def test_replay_gives_the_teacher_its_own_outputs_in_every_epoch(cfg, cache_dir) -> None:
    cache = TeacherCache(cache_dir)
    train_set, _ = TASKS["classification"].build_datasets(cfg.data)
    replay = ReplayDataset(train_set, cache)
    teacher = build_model(cfg.teacher, 10).eval()
    for epoch in (0, 1):
        replay.set_epoch(epoch)
        images = torch.stack([replay[i][0] for i in range(6)])
        stored = torch.stack([replay[i][1][1] for i in range(6)])
        with torch.no_grad():
            torch.testing.assert_close(stored, teacher(images), rtol=1e-5, atol=1e-5)
    replay.set_epoch(0)
    first = replay[3][0]
    replay.set_epoch(1)
    assert not torch.equal(first, replay[3][0])  # fresh augmentations each epoch


def test_replay_through_loader_workers_follows_the_epoch(cfg, cache_dir) -> None:
    replay = ReplayDataset(
        TASKS["classification"].build_datasets(cfg.data)[0], TeacherCache(cache_dir)
    )
    teacher = build_model(cfg.teacher, 10).eval()
    loader = DataLoader(replay, batch_size=8, num_workers=2, collate_fn=replay_collate)
    batches = []
    for epoch in (0, 1):  # workers start per epoch, after set_epoch, as in the trainer
        replay.set_epoch(epoch)
        images, stored = next(iter(loader))
        with torch.no_grad():
            torch.testing.assert_close(stored.output, teacher(images), rtol=1e-5, atol=1e-5)
        batches.append(images)
    assert not torch.equal(*batches)  # the workers saw epoch 1's stored augmentations


def test_training_from_the_cache_never_builds_the_teacher(cfg, cache_dir) -> None:
    cfg.teacher.cache = str(cache_dir)
    trainer = build_trainer(cfg, "cached")
    assert trainer.distiller.teacher is None
    metrics = trainer.fit()
    assert trainer.step == 12 and 0 <= metrics["top1"] <= 100


def test_a_damaged_shard_is_named(cache_dir) -> None:
    shard = sorted(cache_dir.glob("e001_*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:-4] + b"oops")
    with pytest.raises(CacheError, match=shard.name):
        TeacherCache(cache_dir)


def test_a_cache_of_another_recipe_or_too_few_epochs_is_refused(cfg, cache_dir) -> None:
    cfg.teacher.cache = str(cache_dir)
    cfg.schedule.epochs = 3
    with pytest.raises(CacheError, match="holds 2 epochs"):
        build_trainer(cfg, "too-long")
    cfg.schedule.epochs = 2
    cfg.train.seed = 1  # other augmentations
    with pytest.raises(CacheError, match="differs in: seed"):
        build_trainer(cfg, "other-seed")


def test_terms_that_need_the_teacher_model_are_refused(cfg, tmp_path) -> None:
    cfg.loss = {"cat_kd": {}}
    with pytest.raises(CacheError, match=r"\['cat_kd'\] use the teacher model"):
        write_cache(cfg, tmp_path / "c", epochs=1)


def test_top_k_logits_keep_the_rest_mass() -> None:
    logits = torch.randn(3, 20)
    packed = pack_logits(logits, 5)
    full = packed["logits_rest"][:, None].expand(3, 20).clone()
    full.scatter_(1, packed["logits_indices"], packed["logits_values"])
    torch.testing.assert_close(full.logsumexp(1), logits.logsumexp(1))  # same total mass
    torch.testing.assert_close(full.topk(5).values, logits.topk(5).values)


def test_cli_writes_and_checks(cfg, tmp_path, capsys) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(OmegaConf.to_yaml(cfg))
    out = tmp_path / "cli-cache"
    main(["cache-teacher", str(recipe), "--epochs", "1", "--out", str(out)])
    main(["cache-teacher", str(recipe), "--check", "--out", str(out), "--samples", "4"])
    assert "matches the live teacher" in capsys.readouterr().out
