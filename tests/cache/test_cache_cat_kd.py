"""CAT-KD from a teacher cache: the stored pooled CAMs (and ranking logits) are the live
term's own ``teacher_values``, the losses match the live teacher's, the teacher is never
built, ``--check`` compares them and the fingerprint covers the settings that change them."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from kdforge.cache import (
    CacheError,
    ReplayDataset,
    TeacherCache,
    cached_outputs,
    fingerprint_sections,
    replay_collate,
    teacher_replay,
    write_cache,
)
from kdforge.cache.format import MANIFEST, sha256
from kdforge.cli import main
from kdforge.config import load_config
from kdforge.distiller import Distiller
from kdforge.engine import build as build_module
from kdforge.engine.build import build_model, build_terms, build_trainer
from kdforge.engine.seeding import epoch_seed, seed_everything
from kdforge.engine.tasks import get_task
from kdforge.losses import CATKDLoss
from kdforge.models import create_model

RECIPE = [
    "teacher.name=resnet14",
    "student.name=resnet8",
    "loss={ce: {weight: 1.0}, cat_kd: {weight: 15.0, resolution: 2, normalize: false}}",
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


def _write(cfg, out, epochs: int = 1):
    """Write a cache as ``kdforge cache-teacher`` does (terms built from the recipe)."""
    terms = build_terms(OmegaConf.to_container(cfg.loss, resolve=True))
    taps, logits, values = cached_outputs(cfg, terms)
    train_set, _ = get_task(cfg.task).build_datasets(cfg.data)
    teacher = build_model(cfg.teacher, train_set.num_classes).eval().requires_grad_(False)

    def seed_epoch(epoch: int) -> None:
        seed_everything(epoch_seed(cfg.train.seed, epoch, 0))

    sections = fingerprint_sections(cfg, taps, logits, values)
    return write_cache(
        out,
        train_set,
        teacher,
        taps,
        logits,
        sections,
        seed_epoch,
        epochs,
        batch_size=16,
        values=values,
    )


def _manifest(out) -> dict:
    return json.loads((out / MANIFEST).read_text())


def test_only_the_pooled_cams_are_stored(cfg, tmp_path) -> None:
    out = _write(cfg, tmp_path / "cache")
    manifest = _manifest(out)
    key = CATKDLoss(resolution=2, normalize=False).teacher_values_key
    assert manifest["features"] == [] and not manifest["logits"]  # no tap, no output
    assert manifest["values"] == [f"{key}/cam"]
    assert manifest["value_shapes"] == {f"{key}/cam": [10, 2, 2]}  # (K, R, R)
    stored = load_file(str(out / manifest["shards"][0]["file"]))
    assert stored[f"value.{key}/cam"].dtype == torch.float32
    assert stored[f"value.{key}/cam"].shape == (48, 10, 2, 2)
    cfg.loss.cat_kd.num_cams = 4  # partial CAMs: the ranking logits are stored too
    manifest = _manifest(_write(cfg, tmp_path / "partial"))
    key = CATKDLoss(resolution=2, normalize=False, num_cams=4).teacher_values_key
    assert manifest["value_shapes"] == {f"{key}/cam": [10, 2, 2], f"{key}/logits": [10]}


SETTINGS = {
    "recipe": {},
    "normalized R=4": {"resolution": 4, "normalize": True},
    "binarized": {"binarize": True},
    "top CAMs": {"num_cams": 4, "strategy": 0, "normalize": True},
    "lowest CAMs, binarized": {"num_cams": 6, "strategy": 1, "binarize": True},
}


@pytest.mark.parametrize("settings", list(SETTINGS.values()), ids=list(SETTINGS))
def test_cached_and_live_losses_agree_on_the_same_batch(cfg, tmp_path, settings) -> None:
    for key, value in settings.items():
        cfg.loss.cat_kd[key] = value
    out = _write(cfg, tmp_path / "cache")
    train_set, _ = get_task(cfg.task).build_datasets(cfg.data)
    replay = ReplayDataset(train_set, TeacherCache(out))
    images, stored = replay_collate([replay[i] for i in (3, 0, 17, 40, 9, 21, 30, 5)])
    teacher, student = build_model(cfg.teacher, 10), build_model(cfg.student, 10)
    losses = {}
    for name, model in (("live", teacher), ("cached", None)):
        terms = build_terms(OmegaConf.to_container(cfg.loss, resolve=True))
        torch.manual_seed(1)  # the same official student head in both
        distiller = Distiller(model, copy.deepcopy(student), terms, cached_teacher=model is None)
        distiller.eval()
        with torch.no_grad():
            _, losses[name] = distiller(images, stored if model is None else stored.targets)
    assert losses["live"]["cat_kd"] > 0
    # float32 storage: the same values up to the round-off of a batch of 8 vs one of 16
    torch.testing.assert_close(losses["cached"], losses["live"], rtol=1e-6, atol=0.0)


def test_a_cat_kd_run_from_the_cache_never_builds_the_teacher(cfg, tmp_path, monkeypatch):
    out = _write(cfg, tmp_path / "cache", epochs=2)
    built = []
    create = build_module.create_model

    def spy(name, *args, **kwargs):
        built.append(name)
        return create(name, *args, **kwargs)

    monkeypatch.setattr(build_module, "create_model", spy)
    cfg.teacher.cache = str(out)
    trainer = build_trainer(cfg, "cached")
    assert trainer.distiller.teacher is None and built == ["resnet8"]
    metrics = trainer.fit()
    assert trainer.step == 12 and 0 <= metrics["top1"] <= 100
    assert built == ["resnet8"]


def test_the_fingerprint_covers_what_changes_the_stored_values(cfg, tmp_path) -> None:
    cfg.loss.cat_kd.num_cams = 4
    cfg.loss.cat_kd.strategy = 0
    cfg.teacher.cache = str(_write(cfg, tmp_path / "cache", epochs=2))
    # weight, normalize, num_cams and strategy act on the stored values at training time
    for key, value in (("weight", 3.0), ("normalize", True), ("strategy", 1), ("num_cams", 6)):
        cfg.loss.cat_kd[key] = value
    assert build_trainer(cfg, "same-values").distiller.teacher is None
    for key, value in (("resolution", 4), ("binarize", True), ("teacher_layer", "layer2")):
        changed = cfg.copy()
        changed.loss.cat_kd[key] = value
        changed.train.name = f"other-{key}"  # each build locks its own run folder
        with pytest.raises(CacheError, match="differs in: outputs"):
            build_trainer(changed, f"other-{key}")
    changed = cfg.copy()
    changed.loss.cat_kd.num_cams = None  # no ranking logits needed: other stored values
    changed.train.name = "all-cams"
    with pytest.raises(CacheError, match="differs in: outputs"):
        build_trainer(changed, "all-cams")


def test_the_cli_writes_and_checks_stored_cams(cfg, tmp_path, capsys) -> None:
    cfg.loss.cat_kd.num_cams = 4
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(OmegaConf.to_yaml(cfg))
    out = tmp_path / "cli-cache"
    main(["cache-teacher", str(recipe), "--epochs", "1", "--out", str(out)])
    check = ["cache-teacher", str(recipe), "--check", "--out", str(out), "--samples", "8"]
    main(check)
    printed = capsys.readouterr().out
    key = CATKDLoss(resolution=2, normalize=False, num_cams=4).teacher_values_key
    assert "matches the live teacher" in printed
    assert f"value.{key}/cam 0" in printed and f"value.{key}/logits 0" in printed
    for name in ("cam", "logits"):  # a value changed beyond tolerance, checksums re-signed
        _tamper(out, f"value.{key}/{name}", 5)
        with pytest.raises(SystemExit, match=rf"stored value\.{key}/{name} differs"):
            main(check)
        _tamper(out, f"value.{key}/{name}", 5, undo=True)


def _tamper(out, key: str, row: int, undo: bool = False) -> None:
    manifest = _manifest(out)
    shard = manifest["shards"][0]
    tensors = load_file(str(out / shard["file"]))
    tensors[key][row].view(-1)[0] += -1.0 if undo else 1.0
    save_file(tensors, str(out / shard["file"]))
    for entry in manifest["files"]:
        if entry["file"] == shard["file"]:
            entry["sha256"] = sha256(out / shard["file"])
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")


def test_a_term_without_a_teacher_or_stored_values_says_so() -> None:
    term = CATKDLoss()
    term.attach(create_model("resnet8", num_classes=10), None)  # as in a run from a cache
    assert term.teacher_taps == []  # the stored values replace the tap
    with pytest.raises(RuntimeError, match="no stored teacher values CATKDLoss-"):
        term.read_teacher_values({})


def test_the_teacher_runs_in_full_float32_while_caching() -> None:
    """No TF32 (cuDNN's default on a GPU): the writer's batches and --check's agreed only to
    ~2e-2 on CAMs of magnitude 60 with it (H200), to ~5e-5 without."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = cudnn.allow_tf32, matmul.allow_tf32
    teacher, seen = create_model("resnet8", num_classes=10).eval(), []
    teacher.register_forward_pre_hook(lambda *_: seen.append((cudnn.allow_tf32, matmul.allow_tf32)))
    try:
        cudnn.allow_tf32 = matmul.allow_tf32 = True
        replay = teacher_replay(teacher, {"cat_kd": CATKDLoss()}, torch.randn(2, 3, 32, 32), None)
        assert seen == [(False, False)] and (cudnn.allow_tf32, matmul.allow_tf32) == (True, True)
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = saved
    assert replay.output is None
    assert list(replay.features) == [f"{CATKDLoss().teacher_values_key}/cam"]
