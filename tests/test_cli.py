import json
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

from kdforge.cli import main
from kdforge.models import create_model
from kdforge.taps import FeatureTaps

COMMANDS = [
    "train",
    "eval",
    "export",
    "probe",
    "convert",
    "cityscapes-trainids",
    "visualize",
    "demo",
]


def test_help_lists_every_command():
    out = subprocess.run(
        [sys.executable, "-m", "kdforge", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for command in COMMANDS:
        assert command in out


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_documents_itself(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert "usage: kdforge " + command in capsys.readouterr().out


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
    out = tmp_path / "student.safetensors"
    main(["export", str(tmp_path / "run"), "--out", str(out)])
    with safe_open(str(out), "pt") as exported:
        metadata = exported.metadata()
    assert metadata["student_name"] == "resnet8" and metadata["num_classes"] == "10"
    assert json.loads(metadata["student_kwargs"]) == {}
    student = create_model("resnet8", num_classes=10, pretrained=out).eval()
    saved = torch.load(tmp_path / "run" / "best.pt", weights_only=False)["student"]
    reference = create_model("resnet8", num_classes=10).eval()
    reference.load_state_dict(saved)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(student(x), reference(x))
    capsys.readouterr()
    main(["eval", str(recipe), "--checkpoint", str(out), "--set", *tiny_overrides])
    assert "top1" in capsys.readouterr().out


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
    assert "resnet8x4" in str(info.value)
