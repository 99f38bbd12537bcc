"""``kdforge cache-teacher --check`` compares the stored values with the live teacher's.

A cache whose stored values were changed, with its checksums updated to match (so that
opening it verifies), must fail the check: only the comparison of values can catch it.
"""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from kdforge.cache import CacheError, TeacherCache
from kdforge.cache.format import MANIFEST, sha256
from kdforge.cli import main
from kdforge.config import load_config
from kdforge.engine.build import build_model

RECIPE = [
    "teacher.name=resnet8",
    "student.name=resnet8",
    "loss={ce: {weight: 0.1}, kd: {weight: 0.9}, hint: {type: fitnet, student_layer: layer2, "
    "teacher_layer: layer2}}",
    "schedule.epochs=1",
]


@pytest.fixture
def recipe(tiny_overrides, tmp_path):
    """A recipe whose teacher has fixed (saved) weights, as a trained teacher would."""
    torch.manual_seed(0)
    teacher = build_model(load_config(None, tiny_overrides + RECIPE).teacher, 10)
    torch.save(teacher.state_dict(), tmp_path / "teacher.pt")
    overrides = [o for o in tiny_overrides if not o.startswith("teacher.pretrained")]
    cfg = load_config(None, [*overrides, *RECIPE, f"teacher.pretrained={tmp_path}/teacher.pt"])
    path = tmp_path / "recipe.yaml"
    path.write_text(OmegaConf.to_yaml(cfg))
    return path


@pytest.fixture
def cache(recipe, tmp_path):
    out = tmp_path / "cache"
    main(["cache-teacher", str(recipe), "--epochs", "1", "--out", str(out)])
    return out


def _check(recipe, out, samples: int = 4) -> None:
    main(["cache-teacher", str(recipe), "--check", "--out", str(out), "--samples", str(samples)])


def _tamper(out, key: str, row: int, change) -> str:
    """Change ``key`` of sample ``row`` in epoch 0's first shard and re-sign the manifest;
    returns the shard's name."""
    manifest = json.loads((out / MANIFEST).read_text())
    shard = next(s for s in manifest["shards"] if s["epoch"] == 0 and s["start"] == 0)
    path = out / shard["file"]
    tensors = load_file(str(path))
    before = tensors[key].clone()
    tensors[key][row] = change(tensors[key][row])
    assert not torch.equal(before, tensors[key])
    save_file(tensors, str(path))
    for entry in manifest["files"]:
        if entry["file"] == shard["file"]:
            entry["sha256"] = sha256(path)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    TeacherCache(out)  # the checksums verify: the damage is in the values alone
    return shard["file"]


def _args(recipe, out):
    from kdforge.cli import build_parser

    return build_parser().parse_args(
        ["cache-teacher", str(recipe), "--check", "--out", str(out), "--samples", "4"]
    )


def test_an_untouched_cache_passes(recipe, cache, capsys):
    _check(recipe, cache)
    assert "matches the live teacher" in capsys.readouterr().out


def test_a_changed_logit_fails_the_check(recipe, cache, capsys):
    _tamper(cache, "logits_values", 1, lambda v: v + torch.linspace(2.0, 3.0, len(v)))
    with pytest.raises(SystemExit) as info:
        _check(recipe, cache)
    message = str(info.value)
    assert message.startswith("kdforge cache-teacher: error:")
    assert "stored logits differs from the live teacher" in message
    assert "matches the live teacher" not in capsys.readouterr().out


def test_one_changed_top_logit_fails_the_check(recipe, cache):
    """A single stored value off by a little more than the tolerance is enough."""

    def bump_top(v):
        v = v.clone()
        v[0] += 0.05 + 0.02 * v[0].abs()  # above atol 1e-3 + rtol 1e-2·|value|
        return v

    _tamper(cache, "logits_values", 3, bump_top)
    with pytest.raises(SystemExit, match="stored logits differs"):
        _check(recipe, cache)


def test_a_changed_feature_fails_the_check(recipe, cache):
    _tamper(cache, "feature.layer2", 0, lambda v: v + 1.0)
    with pytest.raises(SystemExit, match=r"stored feature\.layer2 differs"):
        _check(recipe, cache)


def test_more_samples_reach_a_later_changed_one(recipe, cache):
    _tamper(cache, "logits_values", 10, lambda v: v + 3.0)
    with pytest.raises(SystemExit, match="stored logits differs"):
        _check(recipe, cache, samples=16)


def test_the_check_raises_a_cache_error(recipe, cache):
    """Through the library too (``check_cache``), the error is a CacheError."""
    from kdforge.commands import cache_teacher

    _tamper(cache, "logits_values", 0, lambda v: -v)
    args = _args(recipe, cache)
    with pytest.raises(CacheError, match="differs from the live teacher"):
        cache_teacher.run(args)
