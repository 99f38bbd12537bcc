"""Bad inputs to `kdforge train/eval/export/convert/...`: recipes that do not fit their models,
checkpoints, run folders and the environment. Each is one line naming what is wrong and how
to fix it, comes before the first training step, and leaves what the user had as it was.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch

from kdforge import Distiller, create_model
from kdforge.cli import main
from kdforge.engine.run_folder import LOCK
from kdforge.errors import ConfigError
from kdforge.losses import FitNetLoss
from kdforge.models.vit import VisionTransformer

KD = ["teacher.name=resnet8", "student.name=resnet8", "loss={ce: {weight: 0.1}, kd: {}}"]
HINT = "hint: {type: fitnet, student_layer: layer2, teacher_layer: layer2}"


def _fail(argv: list[str], capsys) -> str:
    """Run the CLI, expect a one-line error; return it."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    message = str(info.value.code)
    assert message.startswith(f"kdforge {argv[0]}: error: "), message
    assert "\n" not in message.strip() or "does not match" in message, message
    assert "Traceback" not in capsys.readouterr().err
    return message


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text("student: {name: resnet8}\nschedule: {epochs: 1}\n")
    return path


@pytest.fixture
def finished_run(tiny_overrides, recipe, tmp_path, capsys) -> Path:
    main(["train", str(recipe), "--set", *tiny_overrides, *KD, "train.max_steps=2"])
    capsys.readouterr()
    return tmp_path / "run"


def _garbage(path: Path) -> Path:
    path.write_bytes(b"\x80\x04 this is not a checkpoint")
    return path


# --- recipes whose models or terms do not fit ------------------------------------------
RECIPE_CASES = {
    "unknown student": (["student.name=resnet9"], "resnet9"),
    "unknown teacher": (["teacher.name=resnet9", "loss={kd: {}}"], "resnet9"),
    "unknown loss type": (["loss={kdd: {}}"], "unknown loss type 'kdd'"),
    "unknown loss key": (["loss={kd: {temp: 2}}", "teacher.name=resnet8"], "temp"),
    "missing loss key": (
        ["teacher.name=resnet8", "loss={fitnet: {student_layer: layer2}}"],
        "teacher_layer",
    ),
    "a teacher term without a teacher": (["loss={kd: {}}"], "teacher.name"),
    "an unknown tap": (
        [*KD, "loss={hint: {type: fitnet, student_layer: layr2, teacher_layer: layer2}}"],
        "layr2",
    ),
    "truncating a teacher read by KD": ([*KD, "teacher.truncate=true"], "teacher.truncate"),
    "a bad teacher dtype": ([*KD, "teacher.dtype=int8"], "teacher.dtype"),
    "fp16 on a CPU": ([*KD, "train.amp=fp16", "train.device=cpu"], "fp16 needs CUDA"),
    "an unknown amp": ([*KD, "train.amp=fp8"], "train.amp"),
    "an unknown task": (["task=ranking"], "ranking"),
    "too few student classes": (["student.num_classes=5"], "student.num_classes=5"),
    "too few teacher classes": ([*KD, "teacher.num_classes=3"], "teacher.num_classes=3"),
    "mixup with other classes": (["data.mixup_alpha=0.2", "student.num_classes=12"], "mixup"),
    "a hook that is not a class": (["train.hooks=[{type: os.path.join}]"], "HookBase"),
    "a hook that cannot be imported": (["train.hooks=[{type: nope.Hook}]"], "cannot import"),
    "a hook argument it does not take": (
        ["train.hooks=[{type: kdforge.engine.hooks.LoggingHook, evry: 2}]"],
        "evry",
    ),
    "a teacher checkpoint that is missing": (
        [*KD, "teacher.pretrained=/no/such.pth"],
        "does not exist",
    ),
    "an unknown device": (["train.device=tpu"], "train.device"),
}


@pytest.mark.parametrize("case", list(RECIPE_CASES))
def test_recipes_that_do_not_fit(case, tiny_overrides, recipe, tmp_path, capsys):
    overrides, expected = RECIPE_CASES[case]
    message = _fail(["train", str(recipe), "--set", *tiny_overrides, *overrides], capsys)
    assert expected in message
    assert not (tmp_path / "run").exists()  # nothing was started, nothing is left


def test_fitnet_between_tokens_and_maps_names_both_shapes():
    teacher = VisionTransformer(32, 4, 2, 2, 64, 128, num_classes=10)
    student = create_model("resnet8", num_classes=10)
    hint = FitNetLoss("layer2", "encoder.layers.encoder_layer_0")
    with pytest.raises(ConfigError, match=r"loss.hint: fitnet: .*\(N, C, H, W\)"):
        Distiller(teacher, student, {"hint": hint}, example_input=torch.randn(2, 3, 32, 32))


def test_cuda_without_cuda(tiny_overrides, recipe, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    message = _fail(["train", str(recipe), "--set", *tiny_overrides, "train.device=cuda"], capsys)
    assert "no CUDA device" in message and "train.device=auto" in message


def test_corrupt_and_foreign_teacher_checkpoints(tiny_overrides, recipe, tmp_path, capsys):
    corrupt = _garbage(tmp_path / "teacher.pth")
    message = _fail(
        ["train", str(recipe), "--set", *tiny_overrides, *KD, f"teacher.pretrained={corrupt}"],
        capsys,
    )
    assert "teacher.pth cannot be read" in message
    foreign = tmp_path / "resnet14.pth"
    torch.save({"conv1.weight": torch.zeros(16, 3, 3, 3), "fc.weight": torch.zeros(5, 4)}, foreign)
    message = _fail(
        ["train", str(recipe), "--set", *tiny_overrides, *KD, f"teacher.pretrained={foreign}"],
        capsys,
    )
    assert "does not match" in message


# --- run folders ------------------------------------------------------------------------
def test_train_over_a_finished_run_is_refused(finished_run, tiny_overrides, recipe, capsys):
    before = (finished_run / "last.pt").read_bytes()
    message = _fail(["train", str(recipe), "--set", *tiny_overrides, *KD], capsys)
    assert "--resume" in message and (finished_run / "last.pt").read_bytes() == before


def test_resume_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    assert "not a kdforge run" in _fail(["train", "--resume", str(tmp_path / "photos")], capsys)


def test_resume_of_a_run_killed_before_its_first_checkpoint(finished_run, capsys):
    (finished_run / "last.pt").unlink()
    message = _fail(["train", "--resume", str(finished_run)], capsys)
    assert "before its first epoch ended" in message and "train.name" in message


def test_resume_with_a_truncated_checkpoint(finished_run, capsys):
    data = (finished_run / "last.pt").read_bytes()
    (finished_run / "last.pt").write_bytes(data[:1000])
    assert "last.pt cannot be read" in _fail(["train", "--resume", str(finished_run)], capsys)
    assert (finished_run / "last.pt").read_bytes() == data[:1000]  # left for the user


def test_resume_while_another_process_writes(finished_run, capsys):
    (finished_run / LOCK).write_text(f"{os.getppid()}@{socket.gethostname()}")  # alive
    message = _fail(["train", "--resume", str(finished_run)], capsys)
    assert "being written by process" in message and str(os.getppid()) in message


def test_an_out_dir_under_a_file(tiny_overrides, recipe, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    message = _fail(
        [
            "train",
            str(recipe),
            "--set",
            *tiny_overrides,
            f"train.out_dir={tmp_path / 'notes.txt' / 'runs'}",
        ],
        capsys,
    )
    assert "train.out_dir" in message and (tmp_path / "notes.txt").read_text() == "mine"


# --- eval, export, convert --------------------------------------------------------------
def test_eval_with_corrupt_and_foreign_checkpoints(
    finished_run, recipe, tiny_overrides, tmp_path, capsys
):
    corrupt = _garbage(tmp_path / "best.pt")
    message = _fail(
        ["eval", str(recipe), "--checkpoint", str(corrupt), "--set", *tiny_overrides], capsys
    )
    assert "cannot be read" in message
    message = _fail(
        [
            "eval",
            str(recipe),
            "--checkpoint",
            str(finished_run / "best.pt"),
            "--set",
            *tiny_overrides,
            "student.name=resnet14",
        ],
        capsys,
    )
    assert "does not match" in message


def test_export_errors(finished_run, tmp_path, capsys):
    assert "run" in _fail(["export", str(tmp_path / "nothing"), "--out", "x.safetensors"], capsys)
    (tmp_path / "file").write_text("mine")
    message = _fail(["export", str(finished_run), "--out", str(tmp_path / "file" / "s.st")], capsys)
    assert "cannot write --out" in message and (tmp_path / "file").read_text() == "mine"
    assert "is a folder" in _fail(["export", str(finished_run), "--out", str(tmp_path)], capsys)


def test_convert_a_missing_or_corrupt_file(tmp_path, capsys):
    assert "does not exist" in _fail(["convert", "mmdet", "/no/such.pth", "out.pth"], capsys)
    corrupt = _garbage(tmp_path / "retinanet.pth")
    assert "cannot be read" in _fail(["convert", "mmdet", str(corrupt), "o.pth"], capsys)
