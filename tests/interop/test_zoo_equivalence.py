"""The zoo's ImageNet models equal torchvision's (same keys, same outputs), and a timm ViT
converts to the zoo's ViT with the same outputs."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file

from kdforge import load_model
from kdforge.cli import main
from kdforge.models import create_model
from kdforge.models.vit.convert import convert_timm_vit

# zoo name -> torchvision name
PAIRS = {
    "resnet18": "resnet18",
    "resnet50": "resnet50",
    "mobilenet_v2": "mobilenet_v2",
    "vit_b_16": "vit_b_16",
}


@pytest.mark.parametrize("zoo_name", PAIRS)
def test_zoo_model_equals_torchvision(zoo_name):
    torch.manual_seed(0)
    reference = torchvision.models.get_model(PAIRS[zoo_name], weights=None).eval()
    model = create_model(zoo_name).eval()
    model.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        diff = (model(x) - reference(x)).abs().max().item()
    assert diff <= 1e-5, f"{zoo_name}: max abs diff {diff:.2e}"


@pytest.mark.parametrize(
    ("timm_name", "zoo_name"),
    [("vit_tiny_patch16_224", "vit_ti_16"), ("vit_small_patch16_224", "vit_s_16")],
)
def test_timm_vit_converts_to_the_zoo_vit(timm_name, zoo_name):
    torch.manual_seed(0)
    reference = timm.create_model(timm_name).eval()
    for p in reference.parameters():  # timm zero-initialises some; make every weight count
        p.data.normal_(0, 0.02)
    model = create_model(zoo_name).eval()
    model.load_state_dict(convert_timm_vit(reference.state_dict()), strict=True)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        diff = (model(x) - reference(x)).abs().max().item()
    assert diff <= 1e-5, f"{timm_name} -> {zoo_name}: max abs diff {diff:.2e}"


def test_torchvision_prefix_builds_the_library_model():
    model = create_model("torchvision/resnet18", num_classes=7)
    assert type(model) is torchvision.models.ResNet and model.fc.out_features == 7


def test_kdforge_convert_timm_gives_a_zoo_vit_file(tmp_path):
    torch.manual_seed(0)
    reference = timm.create_model("vit_small_patch16_224", num_classes=5).eval()
    for p in reference.parameters():
        p.data.normal_(0, 0.02)
    save_file(reference.state_dict(), str(tmp_path / "vit_small.safetensors"))
    main(["convert", "timm", str(tmp_path / "vit_small.safetensors"), str(tmp_path / "zoo.pth")])
    model = load_model(tmp_path / "zoo.pth").eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert (model(x) - reference(x)).abs().max() <= 1e-5
