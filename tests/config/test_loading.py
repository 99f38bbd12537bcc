"""Reading a recipe and its ``--set`` overrides: a file or an override that cannot be
read is one ConfigError line naming it (and, for YAML, the line)."""

from __future__ import annotations

import pytest

from kdforge.cli import main
from kdforge.config import ConfigError, load_config, save_config
from kdforge.engine.build import build_terms
from kdforge.losses import DKDLoss, FitNetLoss


def _write(tmp_path, text, name="recipe.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _message(path, overrides=()):
    with pytest.raises(ConfigError) as info:
        load_config(path, list(overrides))
    message = str(info.value)
    assert "\n" not in message
    return message


def test_recipe_merges_over_defaults_and_overrides_win(tmp_path):
    path = _write(tmp_path, "student: {name: resnet8}\noptim: {lr: 0.1}\n")
    cfg = load_config(path, ["optim.lr=0.2", "schedule.milestones=[1,2]"])
    assert cfg.optim.lr == 0.2 and cfg.optim.momentum == 0.9
    assert list(cfg.schedule.milestones) == [1, 2]
    assert cfg.schedule.epochs == 240


def test_unknown_key_in_recipe_names_key_and_valid_keys(tmp_path):
    path = _write(tmp_path, "student: {name: resnet8}\noptim: {learning_rate: 0.1}\n")
    message = _message(path)
    assert "optim.learning_rate" in message and "lr" in message and "momentum" in message


def test_missing_student_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="student.name"):
        load_config(_write(tmp_path, "optim: {lr: 0.1}\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_saved_config_loads_back_identically(tmp_path):
    cfg = load_config(_write(tmp_path, "student: {name: resnet8}\n"), ["optim.lr=0.3"])
    save_config(cfg, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == cfg


# --- files that are not a recipe -------------------------------------------------------
YAML_ERRORS = {
    "an unclosed list": (
        "student:\n  name: [resnet8\noptim: {lr: 0.1}\n",
        "recipe.yaml:3:6: invalid YAML: did not find expected ',' or ']' "
        "(while parsing a flow sequence on line 2)",
    ),
    "a tab": ("student:\n\tname: resnet8\n", "recipe.yaml:2:1: invalid YAML: found character"),
    "a duplicate key": (
        "student: {name: resnet8}\noptim: {lr: 0.1}\noptim: {lr: 0.2}\n",
        "recipe.yaml:3:1: invalid YAML: found duplicate key optim",
    ),
    "a bad indent": ("student:\n  name: resnet8\n name2: x\n", "recipe.yaml:3:"),
}


@pytest.mark.parametrize("case", list(YAML_ERRORS))
def test_a_yaml_error_names_file_and_line(tmp_path, case):
    text, expected = YAML_ERRORS[case]
    message = _message(_write(tmp_path, text))
    assert expected in message and message.startswith(str(tmp_path))


NOT_RECIPES = {
    "an empty file": ("", "the recipe is empty"),
    "only comments": ("# student: {name: resnet8}\n", "the recipe is empty"),
    "a list": ("- student\n- optim\n", "a recipe is a mapping of sections"),
    "a number": ("3\n", "a recipe is a mapping of sections"),
    "a section given a value": ("student: {name: resnet8}\noptim: 0.1\n", "optim is a section"),
}


@pytest.mark.parametrize("case", list(NOT_RECIPES))
def test_a_file_that_is_not_a_recipe(tmp_path, case):
    text, expected = NOT_RECIPES[case]
    path = _write(tmp_path, text)
    message = _message(path)
    assert message.startswith(f"{path}: ") and expected in message


def test_a_folder_and_a_binary_file_are_not_recipes(tmp_path):
    assert "is a folder" in _message(tmp_path)
    binary = tmp_path / "recipe.yaml"
    binary.write_bytes(b"\x80\x81 not text")
    assert _message(binary) == f"{binary}: not a UTF-8 text file; a recipe is YAML"


def test_the_command_line_prints_a_yaml_error_as_one_line(tmp_path):
    path = _write(tmp_path, "student: {name: resnet8\n")
    with pytest.raises(SystemExit) as info:
        main(["train", str(path)])
    assert str(info.value).startswith(f"kdforge train: error: {path}:2:1: invalid YAML")


# --- overrides ---------------------------------------------------------------------------
BAD_OVERRIDES = {
    "optim.lr": "--set optim.lr: not of the form key=value (e.g. optim.lr=0.1)",
    "=3": "--set =3: '' is not a key",
    "optim..lr=3": "--set optim..lr=3: 'optim..lr' is not a key",
    "train.sed=3": "--set train.sed=3: unknown config key 'train.sed'; valid keys there: seed",
    "data.batch_size=abc": (
        "--set data.batch_size=abc: bad value for 'data.batch_size' (expects int): "
        "Value 'abc' of type 'str' could not be converted to Integer"
    ),
    "data.batch_size=2.5": "--set data.batch_size=2.5: bad value for 'data.batch_size'",
    "data.batch_size=null": "--set data.batch_size=null: bad value for 'data.batch_size'",
    "optim.lr=fast": "--set optim.lr=fast: bad value for 'optim.lr' (expects float)",
    "schedule.milestones=[a]": "--set schedule.milestones=[a]: bad value for 'schedule.milestones",
    "schedule.milestones=5": "--set schedule.milestones=5: bad value for 'schedule.milestones'",
    "optim.lr=[1": "--set optim.lr=[1: the value is not valid YAML",
    "optim=3": "--set optim=3: optim is a section; give its keys",
}


@pytest.mark.parametrize("override", list(BAD_OVERRIDES))
def test_a_malformed_override_is_named(tmp_path, override):
    path = _write(tmp_path, "student: {name: resnet8}\n")
    assert BAD_OVERRIDES[override] in _message(path, [override])


# --- loss terms (checked by their constructors when built) ------------------------------
def test_build_terms_by_name_and_by_type():
    terms = build_terms(
        {
            "dkd": {"beta": 2.0},
            "hint": {"type": "fitnet", "student_layer": "layer2", "teacher_layer": "layer3"},
        }
    )
    assert isinstance(terms["dkd"], DKDLoss) and terms["dkd"].beta == 2.0
    assert isinstance(terms["hint"], FitNetLoss) and terms["hint"].teacher_layer == "layer3"


def test_build_terms_errors_name_the_problem():
    with pytest.raises(ConfigError, match="unknown loss type 'kdd'.*kd, dkd"):
        build_terms({"kdd": {}})
    with pytest.raises(
        ConfigError, match=r"loss.kd \(kd\): unknown key\(s\) \['temp'\].*temperature"
    ):
        build_terms({"kd": {"temp": 2}})
    with pytest.raises(ConfigError, match="missing required key.*student_layer"):
        build_terms({"fitnet": {"teacher_layer": "layer2"}})
