"""Recipes and the command line with torchvision, timm and Hugging Face teachers and
students: KD + FitNet, CAT-KD and CAKD train, evaluate and export; probe lists both."""

from __future__ import annotations

import json
import math

import torch

from kdforge.cli import main
from kdforge.models import create_model


def train(recipe_text: str, tmp_path, overrides) -> list[dict]:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(recipe_text)
    main(["train", str(recipe), "--set", *overrides])
    log = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    return [json.loads(line) for line in log]


def train_records(records: list[dict], *keys: str) -> list[dict]:
    rows = [r for r in records if r["kind"] == "train"]
    assert rows
    for key in keys:
        assert all(math.isfinite(r[key]) for r in rows), key
    return rows


def test_timm_teacher_torchvision_student_kd_fitnet(tiny_overrides, tmp_path, capsys):
    recipe = """
teacher: {name: timm/resnet18}
student: {name: torchvision/resnet18}
loss:
  ce: {weight: 0.1}
  kd: {weight: 0.9}
  fitnet: {student_layer: layer3, teacher_layer: layer3}
schedule: {epochs: 1}
"""
    rows = train_records(train(recipe, tmp_path, tiny_overrides), "ce", "kd", "fitnet")
    assert rows[-1]["kd"] > 0 and rows[-1]["fitnet"] > 0
    assert "done: " in capsys.readouterr().out

    out = tmp_path / "student.safetensors"
    main(["export", str(tmp_path / "run"), "--out", str(out)])
    student = create_model("torchvision/resnet18", num_classes=10, pretrained=out).eval()
    saved = torch.load(tmp_path / "run" / "best.pt", weights_only=False)["student"]
    assert all(torch.equal(v, saved[k]) for k, v in student.state_dict().items())

    main(
        ["eval", str(tmp_path / "recipe.yaml"), "--checkpoint", str(out), "--set", *tiny_overrides]
    )
    assert "on 24 images: top1" in capsys.readouterr().out


def test_cat_kd_torchvision_teacher_timm_student(tiny_overrides, tmp_path):
    recipe = """
teacher: {name: torchvision/resnet34}
student: {name: timm/resnet18}
loss:
  ce: {weight: 1.0}
  cat_kd:
    weight: 15.0
    student_layer: layer4
    teacher_layer: layer4
    student_classifier: fc
    teacher_classifier: fc
schedule: {epochs: 1}
"""
    rows = train_records(train(recipe, tmp_path, tiny_overrides), "ce", "cat_kd")
    assert rows[-1]["cat_kd"] > 0


def test_cakd_timm_vit_teacher_torchvision_student(tiny_overrides, tmp_path):
    """The timm ViT-Ti at 32x32 in 8x8 patches of 4 against ResNet-18's layer1 (8x8 at /4:
    the discriminator needs 24 tokens or more); the ramp is full (0.2) from epoch 0 so the
    CAKD terms are not all zero."""
    recipe = """
teacher: {name: timm/vit_tiny_patch16_224, kwargs: {img_size: 32, patch_size: 4}}
student: {name: torchvision/resnet18}
loss:
  ce: {weight: 1.0}
  cakd: {student_layer: layer1, teacher_tokens: norm, ramp_start: -10}
schedule: {epochs: 1}
"""
    rows = train_records(train(recipe, tmp_path, tiny_overrides), "cakd.pca", "cakd.gl", "cakd.adv")
    assert rows[-1]["cakd.pca"] > 0


def test_hf_teacher_kd(tiny_overrides, tmp_path, hf_folder):
    recipe = f"""
teacher: {{name: "hf/{hf_folder}"}}
student: {{name: torchvision/resnet18}}
loss:
  ce: {{weight: 0.1}}
  kd: {{weight: 0.9}}
schedule: {{epochs: 1}}
"""
    rows = train_records(train(recipe, tmp_path, tiny_overrides), "kd")
    assert rows[-1]["kd"] > 0


def test_probe_lists_timm_and_torchvision_layers(capsys):
    main(["probe", "--teacher", "timm/resnet18", "--student", "torchvision/resnet18"])
    out = capsys.readouterr().out
    assert "timm/resnet18" in out and "torchvision/resnet18" in out
    assert out.count("layer3 ") >= 2
