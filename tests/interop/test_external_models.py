"""Prefixed models (torchvision/, timm/, hf/) from Python: building, num_classes as each
library does, pretrained files, model info, errors, and model-output objects in KD."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from kdforge import Distiller
from kdforge.errors import CheckpointError, ConfigError
from kdforge.losses import KDLoss
from kdforge.models import create_model, get_model_info
from kdforge.models.external import HuggingFaceClassifier

from .conftest import save_tiny_vit


def save_state(model: nn.Module, path) -> None:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


def test_torchvision_pretrained_loads_strictly_and_refuses_other_class_counts(tmp_path):
    torch.manual_seed(0)
    source = torchvision.models.resnet18()
    source_file = tmp_path / "r18.safetensors"
    save_state(source, source_file)
    model = create_model("torchvision/resnet18", pretrained=source_file)
    assert torch.equal(model.fc.weight, source.fc.weight)
    with pytest.raises(CheckpointError, match=r"fc.weight: checkpoint \(1000, 512\)"):
        create_model(
            "torchvision/resnet18", num_classes=10, pretrained=tmp_path / "r18.safetensors"
        )


def test_timm_pretrained_drops_a_classifier_of_another_size(tmp_path):
    torch.manual_seed(0)
    source = timm.create_model("resnet18")
    save_state(source, tmp_path / "r18.safetensors")
    model = create_model("timm/resnet18", num_classes=10, pretrained=tmp_path / "r18.safetensors")
    assert model.fc.out_features == 10
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    same = create_model("timm/resnet18", pretrained=tmp_path / "r18.safetensors")
    assert torch.equal(same.fc.weight, source.fc.weight)


def test_hf_folder_keeps_its_weights_and_resizes_the_classifier(tmp_path):
    source = save_tiny_vit(tmp_path / "vit", num_labels=5)
    model = create_model(f"hf/{tmp_path / 'vit'}")
    assert isinstance(model, HuggingFaceClassifier)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), source.eval()(pixel_values=x).logits)
    resized = create_model(f"hf/{tmp_path / 'vit'}", num_classes=10)
    assert resized.model.classifier.out_features == 10
    embed = "vit.embeddings.patch_embeddings.projection.weight"
    assert torch.equal(resized.model.state_dict()[embed], source.state_dict()[embed])


def test_model_info_comes_from_each_library(hf_folder):
    assert get_model_info("torchvision/inception_v3").input_size == (3, 299, 299)
    assert get_model_info("timm/vit_tiny_patch16_224").input_size == (3, 224, 224)
    info = get_model_info(f"hf/{hf_folder}")
    assert info.input_size == (3, 32, 32) and info.default_num_classes == 10
    assert info.family == "external"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("timm/resnet19", "unknown model timm/resnet19; did you mean timm/resnet18"),
        ("torchvision/resnet19", "unknown model torchvision/resnet19; did you mean"),
        ("hf/no/such/folder", "is not a Hugging Face model folder"),
    ],
)
def test_bad_names_are_config_errors(name, message):
    with pytest.raises(ConfigError, match=message):
        create_model(name)


def test_kd_takes_the_logits_of_a_transformers_output(hf_folder):
    """A raw transformers model (not wrapped) as the teacher: its ImageClassifierOutput
    reaches the terms as the logits tensor."""
    import transformers

    teacher = transformers.ViTForImageClassification.from_pretrained(hf_folder)

    class PixelValues(nn.Module):  # transformers models take pixel_values=
        def __init__(self, model: nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(pixel_values=x)

    student = create_model("torchvision/resnet18", num_classes=10)
    x = torch.randn(4, 3, 32, 32)
    distiller = Distiller(PixelValues(teacher), student, {"kd": KDLoss()}, example_input=x)
    _, losses = distiller(x, torch.zeros(4, dtype=torch.long))
    assert losses["kd"].item() > 0 and torch.isfinite(losses["kd"])


def test_an_output_without_logits_is_a_clear_error():
    class DictOutput(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3 * 32 * 32, 10)

        def forward(self, x):
            return {"scores": self.fc(x.flatten(1))}

    student = create_model("torchvision/resnet18", num_classes=10)
    with pytest.raises(ConfigError, match="needs each model's output to be a logits tensor"):
        Distiller(DictOutput(), student, {"kd": KDLoss()}, example_input=torch.randn(2, 3, 32, 32))
