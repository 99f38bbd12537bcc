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
    cached_outputs,
    check_cache,
    fingerprint_sections,
    replay_collate,
    write_cache,
)
from kdforge.cache.format import pack_logits
from kdforge.cache.replay import scripted
from kdforge.cli import main
from kdforge.config import load_config
from kdforge.data import build_coco_datasets
from kdforge.data.shapes import write_shapes_dataset
from kdforge.engine.build import build_model, build_terms, build_trainer
from kdforge.engine.seeding import epoch_seed, seed_everything
from kdforge.engine.tasks import get_task
from kdforge.errors import ConfigError

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


def _source(cfg) -> dict:
    """What the writer takes, built from a recipe as ``kdforge cache-teacher`` builds it."""
    terms = build_terms(OmegaConf.to_container(cfg.loss, resolve=True))
    taps, logits, values = cached_outputs(cfg, terms)
    train_set, _ = get_task(cfg.task).build_datasets(cfg.data)
    teacher = build_model(cfg.teacher, train_set.num_classes).eval().requires_grad_(False)
    sections = fingerprint_sections(cfg, taps, logits, values)
    return {
        "train_set": train_set,
        "teacher": teacher,
        "taps": taps,
        "logits": logits,
        "sections": sections,
        "values": values,
    }


def _write(cfg, out, epochs, **options):
    def seed_epoch(epoch: int) -> None:
        seed_everything(epoch_seed(cfg.train.seed, epoch, 0))

    return write_cache(out, **_source(cfg), seed_epoch=seed_epoch, epochs=epochs, **options)


@pytest.fixture
def cache_dir(cfg, tmp_path):
    return _write(cfg, tmp_path / "cache", 2, batch_size=16, shard_size=32)


def test_cache_layout_and_check(cfg, cache_dir) -> None:
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    assert manifest["epochs"] == 2 and manifest["num_samples"] == 48
    assert manifest["features"] == ["layer2"] and manifest["topk"] == 10
    assert len(manifest["shards"]) == 4  # 2 epochs x 2 shards of <= 32 samples
    worst = check_cache(cache_dir, **_source(cfg), samples=8)
    assert set(worst) == {"logits", "feature.layer2"}
    with pytest.raises(CacheError, match="already holds a teacher cache"):
        _write(cfg, cache_dir, 1)


def test_bad_arguments_are_refused_before_any_work(cfg, tmp_path) -> None:
    with pytest.raises(ConfigError, match="--epochs"):
        _write(cfg, tmp_path / "none", 0)
    with pytest.raises(ConfigError, match=r"--topk must be in \[1, 10\]"):
        _write(cfg, tmp_path / "none", 1, topk=11)
    assert not (tmp_path / "none").exists()


def test_replay_gives_the_teacher_its_own_outputs_in_every_epoch(cfg, cache_dir) -> None:
    cache = TeacherCache(cache_dir)
    train_set, _ = get_task("classification").build_datasets(cfg.data)
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
        get_task("classification").build_datasets(cfg.data)[0], TeacherCache(cache_dir)
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
    cfg.loss = {"mgd": {"student_layers": ["layer2"]}}  # its attach may copy teacher weights
    with pytest.raises(CacheError, match=r"\['mgd'\] use the teacher model"):
        _write(cfg, tmp_path / "c", 1)


def test_pipelines_that_cannot_replay_are_refused(tmp_path) -> None:
    root = write_shapes_dataset(tmp_path, num_train=2, num_val=1, image_size=(32, 32))
    train_set, _ = build_coco_datasets(root, "train", "val", scale=(32, 32))
    with pytest.raises(CacheError, match="classification training sets.*DetCompose"):
        scripted(train_set)


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
