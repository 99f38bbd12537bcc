"""CAKD: projector layouts, token groups, ramp, the released objective, gradient flow,
the separate discriminator step in a plain loop, and the recipes."""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from omegaconf import OmegaConf
from PIL import Image

from kdforge import Distiller, create_model
from kdforge.config import Config, load_config
from kdforge.data import DATASETS
from kdforge.engine.build import build_trainer
from kdforge.engine.ema import ModelEMA
from kdforge.losses import (
    TERMS,
    CAKDLoss,
    CrossEntropyLoss,
    GroupLinearProjector,
    PartialCrossAttentionProjector,
    PatchDiscriminator,
    cakd_ramp,
)
from kdforge.losses._cakd_modules import token_groups
from kdforge.losses.cakd import adversarial_loss, discriminator_loss, gan_loss, pca_loss
from kdforge.models.vit import VisionTransformer

RECIPES = Path(__file__).resolve().parents[2] / "kdforge" / "recipes" / "imagenet" / "cakd"
# Config keys the CAKD recipes use that the trainer/build wiring adds (see the CAKD report).
PROPOSED = {"data": ["mixup_alpha", "repeated_aug"], "optim": ["norm_weight_decay"]}
PROPOSED["train"] = ["ema_decay", "ema_steps"]
PROPOSED_OPTIONS = ["auto_augment", "random_erase", "val_resize"]  # imagefolder data options


def _pair() -> tuple[VisionTransformer, torch.nn.Module]:
    """A 2-layer ViT on 8x8 patches of 4 px and a resnet8 whose layer3 is 8x8: 64 tokens."""
    torch.manual_seed(0)
    return VisionTransformer(32, 4, 2, 2, 64, 128, num_classes=10), create_model("resnet8", 10)


def _distiller(**kwargs) -> tuple[Distiller, CAKDLoss]:
    teacher, student = _pair()
    term = CAKDLoss(**kwargs)
    terms = {"ce": CrossEntropyLoss(label_smoothing=0.1), "cakd": term}
    return Distiller(teacher, student, terms, example_input=torch.zeros(2, 3, 32, 32)), term


def _batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 10, (4,), generator=g)


def test_pca_projector_layout_and_logits() -> None:
    full = PartialCrossAttentionProjector(1024, 16, 64)
    shapes = [(n, tuple(p.shape), p.requires_grad) for n, p in full.named_parameters()]
    assert shapes == [
        ("to_qkv.weight", (3072, 1024), True),
        ("to_out.0.weight", (1024, 1024), False),  # built, never used, as released
        ("to_out.0.bias", (1024,), False),
    ]
    torch.manual_seed(0)
    proj, x = PartialCrossAttentionProjector(32, 4, 8), torch.randn(2, 6, 32)
    qk, vv = proj(x)
    q, k, v = (x @ proj.to_qkv.weight.T).chunk(3, dim=-1)  # 'b n (h d) -> b h n d'
    q, k, v = (t.view(2, 6, 4, 8).transpose(1, 2) for t in (q, k, v))
    torch.testing.assert_close(qk, (q @ k.transpose(-2, -1) * 8**-0.5).sum(1) / 4)
    torch.testing.assert_close(vv, (v @ v.transpose(-2, -1) * 8**-0.5).sum(1) / 4)


def test_token_groups_follow_the_released_blocks() -> None:
    groups = token_groups(196)
    assert [len(g) for g in groups] == [16, 16, 16, 8] * 3 + [8, 8, 8, 4]
    assert groups[0].tolist() == [0, 1, 2, 3, 14, 15, 16, 17, 28, 29, 30, 31, 42, 43, 44, 45]
    assert groups[3].tolist() == [12, 13, 26, 27, 40, 41, 54, 55]
    assert groups[15].tolist() == [180, 181, 194, 195]
    for token in range(196):  # block i = row block i // 4, col block i % 4
        row, col = divmod(token, 14)
        assert token in groups[(row // 4) * 4 + col // 4]
    assert [g.tolist() for g in token_groups(49)][3] == [32, 33, 34, 39, 40, 41, 46, 47, 48]
    assert [len(g) for g in token_groups(49)] == [16, 12, 12, 9]
    assert [g.tolist() for g in token_groups(9)] == [list(range(9))]


@pytest.mark.parametrize(("tokens", "linears"), [(196, 16), (49, 4), (64, 1)])
def test_group_linear_projector_uses_one_linear_per_block(tokens: int, linears: int) -> None:
    proj = GroupLinearProjector(8, 3, tokens)
    assert list(proj.state_dict()) == [
        f"layers.fc_layer_{i}.{p}" for i in range(linears) for p in ("weight", "bias")
    ]
    with torch.no_grad():
        for i, fc in enumerate(proj.layers):
            fc.weight.zero_()
            fc.bias.fill_(i)
    out = proj(torch.randn(2, tokens, 8))
    assert out.shape == (2, tokens, 3)
    for i, index in enumerate(token_groups(tokens)):
        assert (out[:, index] == i).all()
    assert GroupLinearProjector().layers.fc_layer_15.weight.shape == (768, 1024)


def test_discriminator_layout_and_smallest_map() -> None:
    disc = PatchDiscriminator(1, 8, 3)
    assert [(n, tuple(p.shape)) for n, p in disc.named_parameters()] == [
        ("model.0.weight", (8, 1, 4, 4)), ("model.0.bias", (8,)),
        ("model.2.weight", (16, 8, 4, 4)), ("model.3.weight", (16,)), ("model.3.bias", (16,)),
        ("model.5.weight", (32, 16, 4, 4)), ("model.6.weight", (32,)), ("model.6.bias", (32,)),
        ("model.8.weight", (64, 32, 4, 4)), ("model.9.weight", (64,)), ("model.9.bias", (64,)),
        ("model.11.weight", (1, 64, 4, 4)), ("model.11.bias", (1,)),
    ]  # fmt: skip
    assert [m.stride for m in disc.model if isinstance(m, torch.nn.Conv2d)] == [(2, 2)] * 3 + [
        (1, 1)
    ] * 2
    assert disc(torch.randn(2, 1, 196, 196)).shape == (2, 1, 1, 1)
    assert disc.min_input_size() == 24
    disc(torch.randn(2, 1, 24, 24))
    with pytest.raises(RuntimeError):
        disc(torch.randn(2, 1, 23, 23))


@pytest.mark.parametrize(
    ("epoch", "value"), [(0, 0.0), (25, 0.0), (30, 0.1), (35, 0.2), (100, 0.2)]
)
def test_ramp(epoch: int, value: float) -> None:
    assert cakd_ramp(epoch) == pytest.approx(value)


def test_pure_losses() -> None:
    a, b = torch.zeros(1, 2, 2), torch.ones(1, 2, 2)
    assert pca_loss(a, a, b, 2 * b).item() == pytest.approx(0.2 * 1 + 0.05 * 4)
    logits = torch.tensor([0.0, 2.0])
    assert gan_loss(logits, True).item() == pytest.approx(
        float(np.mean([math.log(2), math.log1p(math.exp(-2))]))
    )
    real, fake = torch.randn(3, 1, requires_grad=True), torch.randn(3, 1, requires_grad=True)
    discriminator_loss(real, fake).backward()
    assert real.grad is None and fake.grad is not None  # the real branch is detached, as released
    adv = adversarial_loss(real, fake)
    assert not adv.requires_grad
    expected = 0.05 * gan_loss(real, True) + gan_loss(fake, True)
    assert adv.item() == pytest.approx(expected.item())


def test_forward_matches_the_released_formula() -> None:
    distiller, term = _distiller()
    distiller.train()
    distiller.set_epoch(30)
    x, y = _batch()
    seen: dict[str, torch.Tensor] = {}
    teacher, student = distiller.teacher, distiller.student
    hooks = [
        student.layer3.register_forward_hook(lambda m, i, o: seen.update(x3=o)),
        student.fc.register_forward_hook(lambda m, i, o: seen.update(pool=i[0])),
        teacher.encoder.ln.register_forward_hook(lambda m, i, o: seen.update(ln=o)),
        teacher.encoder.layers[-1].ln_1.register_forward_hook(lambda m, i, o: seen.update(q_in=o)),
    ]
    out, losses = distiller(x, y)
    for h in hooks:
        h.remove()
    n, c = seen["x3"].shape[:2]
    tmp = seen["x3"].reshape(n, c, -1).permute(0, 2, 1)
    s_q, s_k, s_v = (
        t.reshape(n, 64, 16, 4).transpose(1, 2) for t in term.pca_proj.to_qkv(tmp).chunk(3, -1)
    )
    s_qk = (s_q @ s_k.transpose(-1, -2) * 0.5).sum(1) / 16
    s_vv = (s_v @ s_v.transpose(-1, -2) * 0.5).sum(1) / 16
    attn = teacher.encoder.layers[-1].self_attention
    t_q, t_k, t_v = (seen["q_in"] @ attn.in_proj_weight.T + attn.in_proj_bias).chunk(3, -1)
    t_q, t_k, t_v = (t.reshape(n, 65, 2, 32).transpose(1, 2) for t in (t_q, t_k, t_v))
    t_qk = ((t_q / 32**0.5) @ t_k.transpose(-1, -2)).mean(1)[:, 1:, 1:]
    t_vv = (t_v @ t_v.transpose(-1, -2)).mean(1)[:, 1:, 1:]  # the teacher's v·v is unscaled
    with torch.no_grad():
        t_out = teacher(x)
    ln = seen["ln"]
    lam = 0.1
    expected = {
        "pca": 0.2 * F.mse_loss(s_qk, t_qk) + 0.05 * F.mse_loss(s_vv, t_vv),
        "logits": F.mse_loss(out, t_out),
        "cls_token": F.mse_loss(term.cls_proj(seen["pool"]), ln[:, 0]),
        "gl": 0.05 * F.mse_loss(term.gl_proj(tmp), ln[:, 1:]),
    }
    for name, value in expected.items():
        torch.testing.assert_close(losses[f"cakd.{name}"], lam * value, rtol=1e-4, atol=1e-6)
    assert set(losses) == {"ce", "cakd.pca", "cakd.logits", "cakd.cls_token", "cakd.gl", "cakd.adv"}
    assert losses["cakd.adv"].item() > 0 and term.auxiliary_loss.item() > 0
    distiller.set_epoch(0)
    _, early = distiller(x, y)
    assert all(v.item() == 0 for k, v in early.items() if k.startswith("cakd."))
    assert term.auxiliary_loss.item() > 0  # the discriminator trains from the first epoch


def test_adversarial_terms_and_discriminator_give_no_gradient_to_student_or_teacher() -> None:
    distiller, term = _distiller()
    distiller.train()
    distiller.set_epoch(40)
    _, losses = distiller(*_batch())
    assert not losses["cakd.adv"].requires_grad
    student = [p for p in distiller.student.parameters()] + list(term.pca_proj.parameters())
    term.auxiliary_loss.backward()
    assert all(p.grad is None for p in student)
    assert all(p.grad is not None for p in term.auxiliary_parameters())
    term.discriminator.zero_grad(set_to_none=True)
    sum(losses.values()).backward()
    assert all(p.grad is None for p in term.auxiliary_parameters())
    assert all(p.grad is None and not p.requires_grad for p in distiller.teacher.parameters())
    assert not distiller.teacher.training
    assert distiller.student.layer1[0].conv1.weight.grad is not None


def test_plain_loop_steps_the_discriminator_on_its_own_optimizer() -> None:
    distiller, term = _distiller()
    lr = 0.1
    aux = term.auxiliary_parameters()
    aux_ids = {id(p) for p in aux}
    main = [p for p in distiller.parameters() if p.requires_grad and id(p) not in aux_ids]
    assert len(aux) == 13 and not aux_ids & {id(p) for p in distiller.student.parameters()}
    optimizer = torch.optim.SGD(main, lr=lr, momentum=0.9, weight_decay=2e-5)
    aux_optimizer = torch.optim.SGD(
        aux, lr=lr * term.auxiliary_lr_scale, momentum=0.9, weight_decay=2e-5
    )
    assert aux_optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)
    ema = ModelEMA(distiller.student, decay=0.5, every=1)
    snapshot = {n: p.detach().clone() for n, p in distiller.named_parameters()}
    distiller.train()
    distiller.set_epoch(35)
    for step in range(2):
        _, losses = distiller(*_batch(step))
        aux_loss, term.auxiliary_loss = term.auxiliary_loss, None
        aux_optimizer.zero_grad(set_to_none=True)
        aux_loss.backward()
        aux_optimizer.step()  # before the student's step, as released
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()  # no in-place error: the fake logits are detached
        optimizer.step()
        ema.step(distiller.student, step, epoch=35)
    moved = {n for n, p in distiller.named_parameters() if not torch.equal(p, snapshot[n])}
    assert {n for n in snapshot if n.startswith("terms.cakd.discriminator.")} <= moved
    assert "student.fc.weight" in moved and "terms.cakd.pca_proj.to_qkv.weight" in moved
    assert not any(n.startswith("teacher.") for n in moved)
    assert "terms.cakd.pca_proj.to_out.0.weight" not in moved
    assert int(ema.n_averaged) == 2


def test_build_errors_name_the_fix() -> None:
    teacher, student = _pair()
    with pytest.raises(ValueError, match="patch stride"):
        Distiller(
            teacher, student, {"cakd": CAKDLoss(student_layer="layer2")}, torch.zeros(1, 3, 32, 32)
        )
    with pytest.raises(ValueError, match="heads"):
        Distiller(teacher, student, {"cakd": CAKDLoss(heads=7)}, torch.zeros(1, 3, 32, 32))
    small = VisionTransformer(16, 4, 1, 2, 64, 64, num_classes=10)
    with pytest.raises(ValueError, match="discriminator"):
        Distiller(small, student, {"cakd": CAKDLoss()}, torch.zeros(1, 3, 16, 16))
    assert TERMS["cakd"] is CAKDLoss


def _unwired() -> list[str]:
    schema = OmegaConf.structured(Config)
    missing = [f"{s}.{k}" for s, keys in PROPOSED.items() for k in keys if k not in schema[s]]
    options = inspect.signature(DATASETS["imagefolder"]).parameters
    return missing + [f"data.options.{k}" for k in PROPOSED_OPTIONS if k not in options]


@pytest.mark.parametrize("name", ["vit_b16_resnet50.yaml", "vit_ti16_resnet18.yaml"])
def test_recipes_keep_the_released_numbers(name: str) -> None:
    text = (RECIPES / name).read_text()
    assert text.startswith("# CAKD") and len(text.splitlines()) <= 50
    raw = yaml.safe_load(text)
    assert raw["data"]["batch_size"] == 32 and raw["data"]["mixup_alpha"] == 0.2
    assert raw["data"]["repeated_aug"] == 4
    assert raw["data"]["options"] == {
        "image_size": 224, "auto_augment": "ta_wide", "random_erase": 0.1, "val_resize": 224
    }  # fmt: skip
    assert raw["loss"] == {"ce": {"weight": 1.0, "label_smoothing": 0.1}, "cakd": {}}
    assert raw["optim"] == {
        "name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 2e-5, "norm_weight_decay": 0.0
    }  # fmt: skip
    assert raw["schedule"] == {
        "name": "multistep", "epochs": 120, "milestones": [35, 65, 95], "gamma": 0.1,
        "warmup_epochs": 5, "warmup_factor": 0.01, "warmup_by": "epoch",
    }  # fmt: skip
    assert raw["train"] == {"ema_decay": 0.99998, "ema_steps": 32}
    if not _unwired():
        load_config(RECIPES / name)


@pytest.fixture(scope="module")
def imagefolder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("imagefolder")
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i in range(3):
                pixels = rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{i}.png")
    return root


def test_small_recipe_trains_two_steps(imagefolder: Path, tmp_path: Path) -> None:
    raw = yaml.safe_load((RECIPES / "vit_ti16_resnet18.yaml").read_text())
    for key in _unwired():  # keys the trainer does not read yet are left out, not faked
        *parents, leaf = key.split(".")
        node = raw
        for part in parents:
            node = node[part]
        node.pop(leaf)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    overrides = [
        f"data.root={imagefolder}", "data.batch_size=4", "data.num_workers=0",
        "teacher.pretrained=null", "train.check_teacher=false", "train.max_steps=2",
        "train.max_eval_batches=1", f"train.out_dir={tmp_path}", "train.name=run",
        "train.log_every=1",
    ]  # fmt: skip
    trainer = build_trainer(load_config(recipe, overrides), "test")
    trainer.fit()
    records = [
        json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    ]
    train = [r for r in records if r["kind"] == "train"]
    assert train and train[-1]["step"] == 2
    for key in ("ce", "cakd.pca", "cakd.logits", "cakd.cls_token", "cakd.gl", "cakd.adv"):
        assert all(math.isfinite(r[key]) for r in train), key
