"""The ``kdforge`` command: every verb documents itself, user errors are one line, bugs keep
their traceback, and building the parser stays cheap."""

from __future__ import annotations

import ast
import json
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

from kdforge.cli import COMMANDS, main
from kdforge.errors import ConfigError
from kdforge.models import create_model, load_model
from kdforge.taps import FeatureTaps

HELP = [[verb] for verb in COMMANDS if verb != "visualize"]
HELP += [["visualize", kind] for kind in ("cam", "attention", "features")]


def test_help_lists_every_verb():
    out = subprocess.run(
        [sys.executable, "-m", "kdforge", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for verb in COMMANDS:
        assert f"    {verb}" in out, verb


@pytest.mark.parametrize("argv", HELP, ids=" ".join)
def test_each_verb_documents_itself(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main([*argv, "--help"])
    assert info.value.code == 0
    assert "usage: kdforge " + " ".join(argv) in capsys.readouterr().out


def test_building_the_parser_imports_the_command_modules_only():
    """``kdforge --help`` loads no library code beyond what ``import kdforge`` does (torch,
    through the public API), and not ``resource``, which Windows lacks."""
    code = (
        "import sys; from kdforge.cli import build_parser; before = set(sys.modules); "
        "build_parser(); print(repr(sorted(set(sys.modules) - before)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(ast.literal_eval(out.stdout))
    allowed = {"kdforge.commands", "kdforge.commands._args", *COMMANDS.values()}
    assert "kdforge.commands.bench" in loaded and "resource" not in loaded
    assert {m for m in loaded if m.startswith("kdforge")} <= allowed
    assert not {m for m in loaded if m.split(".")[0] in ("omegaconf", "matplotlib", "numpy")}


def test_a_user_error_is_one_line(monkeypatch):
    def fail(args):
        raise ConfigError("bad value for 'optim.lr'")

    monkeypatch.setattr("kdforge.commands.probe.run", fail)
    with pytest.raises(SystemExit) as info:
        main(["probe"])
    assert str(info.value) == "kdforge probe: error: bad value for 'optim.lr'"
    assert info.value.__cause__ is None and info.value.__suppress_context__


@pytest.mark.parametrize("error", [RuntimeError, KeyError, ValueError, FileNotFoundError])
def test_a_programming_error_keeps_its_traceback(monkeypatch, error):
    def fail(args):
        raise error("a bug")

    monkeypatch.setattr("kdforge.commands.probe.run", fail)
    with pytest.raises(error, match="a bug"):
        main(["probe"])


def test_probe_without_models_is_a_user_error():
    with pytest.raises(SystemExit, match="kdforge probe: error: .*--teacher/--student"):
        main(["probe"])


def test_probe_prints_paths_that_taps_accept(capsys):
    main(["probe", "--teacher", "resnet14", "--student", "resnet8"])
    out = capsys.readouterr().out
    assert "teacher: resnet14 on input 1x3x32x32" in out
    assert "layer3" in out and "1x64x8x8" in out and "(output)" in out and "1x100" in out
    paths = [line.split()[0] for line in out.split("student:")[1].splitlines()[2:] if line]
    FeatureTaps(create_model("resnet8"), [p for p in paths if p != "(output)"]).remove()


def test_train_export_eval_round_trip(tiny_overrides, tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("student: {name: resnet8}\nschedule: {epochs: 1}\n")
    main(["train", str(recipe), "--set", *tiny_overrides])
    assert "done: " in capsys.readouterr().out
    out = tmp_path / "student.safetensors"
    main(["export", str(tmp_path / "run"), "--out", str(out)])
    with safe_open(str(out), "pt") as exported:
        metadata = exported.metadata()
    assert metadata["model_name"] == "resnet8" and metadata["num_classes"] == "10"
    assert json.loads(metadata["model_kwargs"]) == {}
    student = load_model(out).eval()
    saved = torch.load(tmp_path / "run" / "best.pt", weights_only=False)["student"]
    reference = create_model("resnet8", num_classes=10).eval()
    reference.load_state_dict(saved)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(student(x), reference(x))
    capsys.readouterr()
    main(["eval", str(recipe), "--checkpoint", str(out), "--set", *tiny_overrides])
    assert "on 24 images: top1" in capsys.readouterr().out


def test_unknown_key_exits_with_a_clear_message(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("student: {name: resnet8}\ntrain: {epoch: 3}\n")
    with pytest.raises(SystemExit) as info:
        main(["train", str(recipe)])
    assert "train.epoch" in str(info.value) and "max_steps" in str(info.value)


def test_unknown_model_suggests_close_names(tiny_overrides, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("student: {name: resnet8x5}\n")
    with pytest.raises(SystemExit) as info:
        main(["train", str(recipe), "--set", *tiny_overrides])
    assert str(info.value).startswith("kdforge train: error: unknown model 'resnet8x5'")
    assert "resnet8x4" in str(info.value)


def test_missing_recipe_and_missing_checkpoint_are_user_errors(tiny_overrides, tmp_path):
    with pytest.raises(SystemExit, match="kdforge train: error: .*does not exist"):
        main(["train", str(tmp_path / "nothing.yaml")])
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("student: {name: resnet8}\n")
    missing = tmp_path / "missing.pt"
    with pytest.raises(SystemExit, match="kdforge eval: error: .*does not exist"):
        main(["eval", str(recipe), "--checkpoint", str(missing), "--set", *tiny_overrides])
    with pytest.raises(SystemExit, match="kdforge export: error: .*kdforge run"):
        main(["export", str(tmp_path), "--out", str(tmp_path / "x.safetensors")])


def test_resume_of_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(SystemExit, match="kdforge train: error: --resume .*no config.yaml"):
        main(["train", "--resume", str(tmp_path)])
