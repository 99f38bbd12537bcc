"""``run_defining_changes``: what differs between a run's saved config and a resume's."""

from __future__ import annotations

import pytest

from kdforge.config import RESUME_SAFE_KEYS, load_config, run_defining_changes, save_config

BASE = ["student.name=resnet8", "teacher.name=resnet8", "loss={kd: {temperature: 4}}"]


def _changes(*overrides):
    return run_defining_changes(load_config(None, BASE), load_config(None, [*BASE, *overrides]))


def test_no_change():
    assert _changes() == ([], [])


def test_paths_environment_and_the_step_cap_do_not_change_the_run():
    safe = [
        "data.root=/elsewhere",
        "data.num_workers=0",
        "data.eval_batch_size=1",
        "train.device=cpu",
        "train.out_dir=/runs",
        "train.name=again",
        "train.log_every=1",
        "train.max_eval_batches=2",
        "train.compile=true",
        "train.max_steps=100",
    ]
    changed = sorted(o.split("=")[0] for o in safe)
    assert _changes(*safe) == ([], changed)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("optim.lr=0.2", "optim.lr"),
        ("teacher.pretrained=other.pth", "teacher.pretrained"),
        ("teacher.dtype=bfloat16", "teacher.dtype"),
        ("schedule.milestones=[1,2]", "schedule.milestones"),
        ("loss.kd.temperature=2", "loss.kd.temperature"),
        ("train.seed=1", "train.seed"),
        ("data.batch_size=2", "data.batch_size"),
        ("data.options={image_size: 64}", "data.options.image_size"),
    ],
)
def test_a_change_of_recipe_defines_another_run(override, key):
    assert _changes(override) == ([key], [])


def test_a_term_added_and_mixed_changes_are_split():
    hint = "loss.fitnet={student_layer: layer2, teacher_layer: layer2}"
    run, safe = _changes(hint, "train.name=x")
    assert run == ["loss.fitnet"]
    assert safe == ["train.name"]


def test_a_term_removed_is_one_key():
    without = load_config(None, BASE[:2])
    assert run_defining_changes(load_config(None, BASE), without) == (["loss.kd"], [])


def test_a_saved_config_read_back_has_no_changes(tmp_path):
    cfg = load_config(None, [*BASE, "optim.lr=0.3", "data.options={size: 32}"])
    save_config(cfg, tmp_path / "config.yaml")
    assert run_defining_changes(load_config(tmp_path / "config.yaml"), cfg) == ([], [])


def test_every_resume_safe_key_is_a_key_of_the_schema():
    cfg = load_config(None, BASE)
    for key in RESUME_SAFE_KEYS:
        section, name = key.split(".")
        assert name in cfg[section], key
