"""Every value of a recipe is checked when it is loaded: the error names the key, the
value and the valid range (kdforge.config.RULES)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from kdforge.cli import main
from kdforge.config import RULES, Config, ConfigError, load_config
from kdforge.engine.optim import lr_factor, make_optimizer

STUDENT = ["student.name=resnet8"]

# (override, what the message must say: "key=value: must be <range>")
BAD = [
    ("data.batch_size=0", "data.batch_size=0: must be >= 1"),
    ("data.batch_size=-4", "data.batch_size=-4: must be >= 1"),
    ("data.eval_batch_size=0", "data.eval_batch_size=0: must be null or >= 1"),
    ("data.num_workers=-1", "data.num_workers=-1: must be >= 0"),
    ("data.mixup_alpha=-0.2", "data.mixup_alpha=-0.2: must be >= 0"),
    ("data.repeated_aug=0", "data.repeated_aug=0: must be >= 1"),
    ("student.num_classes=0", "student.num_classes=0: must be null or >= 1"),
    ("teacher.num_classes=-3", "teacher.num_classes=-3: must be null or >= 1"),
    ("optim.name=adam", "optim.name=adam: must be one of sgd, adamw"),
    ("optim.lr=0", "optim.lr=0.0: must be > 0"),
    ("optim.lr=-0.1", "optim.lr=-0.1: must be > 0"),
    ("optim.lr=nan", "optim.lr=nan: must be > 0 (a finite number)"),
    ("optim.lr=inf", "optim.lr=inf: must be > 0 (a finite number)"),
    ("optim.momentum=1", "optim.momentum=1.0: must be in [0, 1)"),
    ("optim.momentum=-0.5", "optim.momentum=-0.5: must be in [0, 1)"),
    ("optim.betas=[0.9]", "optim.betas=[0.9]: must be two values, each in [0, 1)"),
    ("optim.betas=[0.9,1.0]", "optim.betas=[0.9, 1.0]: must be two values, each in [0, 1)"),
    ("optim.betas=[0.9,0.99,0.999]", "must be two values, each in [0, 1)"),
    ("optim.weight_decay=-1e-4", "optim.weight_decay=-0.0001: must be >= 0"),
    ("optim.norm_weight_decay=-1", "optim.norm_weight_decay=-1.0: must be null or >= 0"),
    ("optim.bias_lr_mult=-2", "optim.bias_lr_mult=-2.0: must be >= 0"),
    ("optim.bias_weight_decay=-1", "optim.bias_weight_decay=-1.0: must be null or >= 0"),
    ("optim.base_batch_size=0", "optim.base_batch_size=0: must be null or >= 1"),
    ("optim.clip_grad_norm=0", "optim.clip_grad_norm=0.0: must be null or > 0"),
    ("schedule.name=step", "schedule.name=step: must be one of multistep, cosine, poly, constant"),
    ("schedule.epochs=0", "schedule.epochs=0: must be >= 1"),
    ("schedule.iters=0", "schedule.iters=0: must be null or >= 1"),
    ("schedule.milestones=[180,150]", "schedule.milestones=[180, 150]: must be a strictly"),
    ("schedule.milestones=[150,150]", "=[150, 150]: must be a strictly increasing list"),
    ("schedule.milestones=[-1,5]", "schedule.milestones=[-1, 5]: must be a strictly increasing"),
    ("schedule.gamma=0", "schedule.gamma=0.0: must be > 0"),
    ("schedule.min_lr=-1e-5", "schedule.min_lr=-1e-05: must be >= 0"),
    ("schedule.power=0", "schedule.power=0.0: must be > 0"),
    ("schedule.warmup_epochs=-1", "schedule.warmup_epochs=-1.0: must be >= 0"),
    ("schedule.warmup_factor=0", "schedule.warmup_factor=0.0: must be in (0, 1]"),
    ("schedule.warmup_factor=1.5", "schedule.warmup_factor=1.5: must be in (0, 1]"),
    ("schedule.warmup_iters=-500", "schedule.warmup_iters=-500: must be >= 0"),
    ("schedule.warmup_mode=exp", "schedule.warmup_mode=exp: must be one of linear, constant"),
    ("train.seed=-1", "train.seed=-1: must be in [0, 4294967295]"),
    ("train.seed=4294967296", "train.seed=4294967296: must be in [0, 4294967295]"),
    ("train.max_steps=0", "train.max_steps=0: must be null or >= 1"),
    ("train.max_eval_batches=0", "train.max_eval_batches=0: must be null or >= 1"),
    ("train.eval_every=0", "train.eval_every=0: must be >= 1"),
    ("train.log_every=0", "train.log_every=0: must be >= 1"),
    ("train.ema_decay=1.5", "train.ema_decay=1.5: must be null or in [0, 1]"),
    ("train.ema_decay=-0.1", "train.ema_decay=-0.1: must be null or in [0, 1]"),
    ("train.ema_steps=0", "train.ema_steps=0: must be >= 1"),
    ("train.stop_distillation=-1", "train.stop_distillation=-1: must be null or >= 0"),
]

# values at the edge of their range, and None where the schema allows it
GOOD = [
    "data.batch_size=1",
    "data.eval_batch_size=1",
    "data.eval_batch_size=null",
    "data.num_workers=0",
    "data.mixup_alpha=0",
    "data.repeated_aug=1",
    "student.num_classes=1",
    "optim.name=adamw",
    "optim.lr=1e-8",
    "optim.momentum=0",
    "optim.momentum=0.999",
    "optim.betas=[0,0.999]",
    "optim.weight_decay=0",
    "optim.norm_weight_decay=0",
    "optim.bias_lr_mult=0",
    "optim.base_batch_size=null",
    "optim.clip_grad_norm=null",
    "optim.clip_grad_norm=0.001",
    "schedule.name=constant",
    "schedule.epochs=1",
    "schedule.iters=1",
    "schedule.iters=null",
    "schedule.milestones=[]",
    "schedule.milestones=[0,1]",
    "schedule.min_lr=0",
    "schedule.warmup_factor=1",
    "schedule.warmup_mode=constant",
    "schedule.warmup_iters=0",
    "train.seed=0",
    "train.seed=4294967295",
    "train.max_steps=1",
    "train.max_steps=null",
    "train.ema_decay=0",
    "train.ema_decay=1",
    "train.ema_decay=null",
    "train.ema_steps=1",
    "train.stop_distillation=0",
    "train.stop_distillation=null",
]


@pytest.mark.parametrize(("override", "message"), BAD, ids=[o for o, _ in BAD])
def test_a_value_out_of_range_names_key_value_and_range(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [*STUDENT, override])
    text = str(info.value)
    key = override.split("=")[0]
    assert message in text and text.startswith(f"{key}=")
    assert RULES[key].text in text


@pytest.mark.parametrize("override", GOOD)
def test_values_at_the_edge_of_their_range_are_accepted(override):
    load_config(None, [*STUDENT, override])


def _numeric_keys() -> list[str]:
    keys = []
    for section in dataclasses.fields(Config):
        if not dataclasses.is_dataclass(section.default_factory):
            continue
        for f in dataclasses.fields(section.default_factory):
            if "int" in str(f.type) or "float" in str(f.type):
                keys.append(f"{section.name}.{f.name}")
    return keys


def test_every_numeric_key_of_the_schema_has_a_rule():
    missing = [key for key in _numeric_keys() if key not in RULES]
    assert not missing, f"give these keys a rule in kdforge.config.RULES: {missing}"


def test_the_defaults_pass_every_rule():
    load_config(None, STUDENT)


def test_the_engine_accepts_every_name_the_rules_accept():
    param = [torch.nn.Parameter(torch.zeros(1))]
    for name in RULES["optim.name"].choices:
        make_optimizer(param, name)
    for name in RULES["schedule.name"].choices:
        lr_factor(0, 1, 1, name=name)
    for mode in RULES["schedule.warmup_mode"].choices:
        lr_factor(0, 1, 1, warmup_mode=mode, warmup_iters=2)


def test_keys_with_an_engine_table_are_left_to_the_engine():
    # their valid names live in one place: TASKS, AMP_DTYPES, TEACHER_DTYPES, select_device
    assert not {"task", "train.amp", "teacher.dtype", "train.device"} & set(RULES)
    load_config(None, [*STUDENT, "train.amp=fp8"])  # refused when the run is built


def test_nesterov_needs_momentum():
    with pytest.raises(ConfigError, match=r"optim.nesterov=true: needs optim.momentum > 0"):
        load_config(None, [*STUDENT, "optim.nesterov=true", "optim.momentum=0"])
    load_config(None, [*STUDENT, "optim.name=adamw", "optim.nesterov=true", "optim.momentum=0"])


def test_every_bad_value_is_named_in_one_line():
    with pytest.raises(ConfigError) as info:
        load_config(None, [*STUDENT, "schedule.epochs=0", "optim.lr=-0.1"])
    assert str(info.value) == "optim.lr=-0.1: must be > 0; schedule.epochs=0: must be >= 1"


def test_an_override_can_fix_a_recipe_value_and_a_recipe_value_is_checked(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("student: {name: resnet8}\nschedule: {epochs: 0}\n")
    with pytest.raises(ConfigError, match=r"schedule.epochs=0: must be >= 1"):
        load_config(recipe)
    assert load_config(recipe, ["schedule.epochs=1"]).schedule.epochs == 1


def test_an_interpolated_value_is_checked_once_resolved(tmp_path):
    with pytest.raises(ConfigError, match=r"optim.lr=0.0: must be > 0"):
        load_config(None, [*STUDENT, "optim.lr=${schedule.min_lr}"])
    with pytest.raises(ConfigError, match=r"optim.lr: Interpolation key 'nope' not found"):
        load_config(None, [*STUDENT, "optim.lr=${nope}"])


def test_a_resumed_run_with_an_edited_config_is_checked(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("student: {name: resnet8}\ndata: {batch_size: 0}\n")
    with pytest.raises(SystemExit, match=r"kdforge train: error: data.batch_size=0: must be >= 1"):
        main(["train", "--resume", str(run)])


def test_the_command_line_prints_a_bad_value_as_one_line(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("student: {name: resnet8}\n")
    with pytest.raises(SystemExit) as info:
        main(["train", str(recipe), "--set", "optim.momentum=1"])
    assert str(info.value) == "kdforge train: error: optim.momentum=1.0: must be in [0, 1)"
