"""ImageNet zoo: torchvision-identical state dicts, parameter counts, feature_info, loading."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdforge.models import create_model, list_models

# torchvision's published parameter counts (num_classes=1000); mobilenet_v1: mdistiller's.
PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "mobilenet_v2": 3_504_872,
    "mobilenet_v1": 4_231_976,
    "vit_b_16": 86_567_656,
    "vit_s_16": 22_050_664,  # DeiT-S widths
    "vit_ti_16": 5_717_416,  # DeiT-Ti widths
}
# len(state_dict()) of the torchvision (mobilenet_v1: mdistiller) models, num_batches_tracked
# included.
NUM_KEYS = {
    "resnet18": 122,
    "resnet34": 218,
    "resnet50": 320,
    "resnet101": 626,
    "mobilenet_v2": 314,
    "mobilenet_v1": 164,  # stem 6 + 13 blocks x 12 + fc 2
    **dict.fromkeys(["vit_b_16", "vit_s_16", "vit_ti_16"], 152),
}
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

_CACHE: dict[str, nn.Module] = {}


def _model(name: str) -> nn.Module:
    """One eval-mode instance per name, seeded, shared by the read-only tests."""
    if name not in _CACHE:
        torch.manual_seed(0)
        _CACHE[name] = create_model(name).eval()
    return _CACHE[name]


def test_registry_lists_the_zoo() -> None:
    assert set(list_models("imagenet")) == set(PARAMS)


@pytest.mark.parametrize("name", list_models("imagenet"))
def test_param_count_and_output_shape(name: str) -> None:
    model = _model(name)
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name]
    assert len(model.state_dict()) == NUM_KEYS[name]
    size = 224 if name.startswith("vit_") else 64  # a ViT takes its own image size only
    with torch.no_grad():
        assert model(torch.randn(2, 3, size, size)).shape == (2, 1000)


def test_resnet18_full_resolution_and_num_classes() -> None:
    with torch.no_grad():
        assert _model("resnet18")(torch.randn(1, 3, 224, 224)).shape == (1, 1000)
        small = create_model("resnet18", num_classes=10).eval()
        assert small(torch.randn(1, 3, 32, 32)).shape == (1, 10)
        assert small.fc.out_features == 10


CNNS = [n for n in list_models("imagenet") if not n.startswith("vit")]  # ViTs: test_vit.py


@pytest.mark.parametrize("name", CNNS)
def test_feature_info_matches_hooks_and_logits(name: str) -> None:
    model, size = _model(name), 64
    info = model.feature_info
    assert [d["reduction"] for d in info] == sorted(d["reduction"] for d in info)
    assert info[-1]["reduction"] == 32
    seen: dict[str, torch.Tensor] = {}
    handles = [
        model.get_submodule(d["module"]).register_forward_hook(
            lambda _m, _i, out, key=d["module"]: seen.__setitem__(key, out)
        )
        for d in info
    ]
    try:
        with torch.no_grad():
            logits = model(torch.randn(2, 3, size, size))
    finally:
        for h in handles:
            h.remove()
    for d in info:
        side = size // d["reduction"]
        assert seen[d["module"]].shape == (2, d["num_chs"], side, side), d
    head = model.get_submodule(model.classifier_name)
    assert isinstance(head, nn.Linear) and head is model.get_classifier()
    pooled = seen[info[-1]["module"]].mean(dim=(2, 3))
    torch.testing.assert_close(head(pooled), logits)


def test_resnet18_keys_follow_torchvision_naming() -> None:
    expected = ["conv1.weight", *(f"bn1.{s}" for s in BN)]
    for stage in range(1, 5):
        for block in range(2):
            p = f"layer{stage}.{block}"
            for conv in (1, 2):
                expected += [f"{p}.conv{conv}.weight", *(f"{p}.bn{conv}.{s}" for s in BN)]
            if stage > 1 and block == 0:
                expected += [f"{p}.downsample.0.weight", *(f"{p}.downsample.1.{s}" for s in BN)]
    expected += ["fc.weight", "fc.bias"]
    state = _model("resnet18").state_dict()
    assert list(state) == expected
    assert state["layer2.0.downsample.0.weight"].shape == (128, 64, 1, 1)
    assert state["fc.weight"].shape == (1000, 512)


def test_resnet50_is_v1_5_with_torchvision_shapes() -> None:
    model = _model("resnet50")
    block = model.layer2[0]
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2)
    state = model.state_dict()
    assert state["layer1.0.conv3.weight"].shape == (256, 64, 1, 1)
    assert state["layer4.2.bn3.running_var"].shape == (2048,)
    assert state["fc.weight"].shape == (1000, 2048)


def test_mobilenet_v2_keys_follow_torchvision_naming() -> None:
    state = _model("mobilenet_v2").state_dict()
    shapes = {
        "features.0.0.weight": (32, 3, 3, 3),
        "features.0.1.num_batches_tracked": (),
        "features.1.conv.0.0.weight": (32, 1, 3, 3),  # t=1: no expansion conv
        "features.1.conv.1.weight": (16, 32, 1, 1),
        "features.1.conv.2.running_mean": (16,),
        "features.2.conv.0.0.weight": (96, 16, 1, 1),
        "features.2.conv.1.0.weight": (96, 1, 3, 3),
        "features.17.conv.2.weight": (320, 960, 1, 1),
        "features.17.conv.3.bias": (320,),
        "features.18.0.weight": (1280, 320, 1, 1),
        "features.18.1.running_var": (1280,),
        "classifier.1.weight": (1000, 1280),
        "classifier.1.bias": (1000,),
    }
    for key, shape in shapes.items():
        assert state[key].shape == shape, key
    assert "features.19.0.weight" not in state and "classifier.0.weight" not in state


def test_mobilenet_v1_keys_follow_mdistiller_naming() -> None:
    model = _model("mobilenet_v1")
    state = model.state_dict()
    shapes = {
        "model.0.0.weight": (32, 3, 3, 3),
        "model.0.1.running_mean": (32,),
        "model.1.0.weight": (32, 1, 3, 3),  # depthwise
        "model.1.1.num_batches_tracked": (),
        "model.1.3.weight": (64, 32, 1, 1),  # pointwise
        "model.1.4.running_var": (64,),
        "model.2.0.weight": (64, 1, 3, 3),
        "model.11.3.weight": (512, 512, 1, 1),
        "model.12.3.weight": (1024, 512, 1, 1),
        "model.13.4.bias": (1024,),
        "fc.weight": (1000, 1024),
        "fc.bias": (1000,),
    }
    for key, shape in shapes.items():
        assert state[key].shape == shape, key
    assert list(state)[:6] == ["model.0.0.weight", *(f"model.0.1.{s}" for s in BN)]
    assert list(state)[-2:] == ["fc.weight", "fc.bias"] and "model.14.0.weight" not in state
    strides = [model.model[i][0].stride for i in range(14)]
    assert [i for i, s in enumerate(strides) if s == (2, 2)] == [0, 2, 4, 6, 12]
    assert [d["module"] for d in model.feature_info] == [f"model.{i}" for i in (1, 3, 5, 11, 13)]


def test_initialisation_matches_torchvision() -> None:
    resnet, mnet = _model("resnet50"), _model("mobilenet_v2")
    bns = [m for m in resnet.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(bool((m.weight == 1).all() and (m.bias == 0).all()) for m in bns)
    fan_out = 64 * 7 * 7  # kaiming normal, fan_out, gain sqrt(2)
    assert resnet.conv1.weight.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.1)
    head = mnet.classifier[1]
    assert head.weight.std().item() == pytest.approx(0.01, rel=0.1)
    assert bool((head.bias == 0).all())
    assert isinstance(mnet.classifier[0], nn.Dropout) and mnet.classifier[0].p == 0.2
    zero = create_model("resnet18", zero_init_residual=True)
    assert bool((zero.layer3[1].bn2.weight == 0).all())


def test_bare_state_dict_loads_via_create_model(tmp_path) -> None:
    source = _model("resnet18")
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    loaded = create_model("resnet18", pretrained=path)
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_wrong_shape_checkpoint_names_the_key(tmp_path) -> None:
    state = dict(_model("mobilenet_v2").state_dict())
    state["classifier.1.weight"] = torch.zeros(10, 1280)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"classifier\.1\.weight"):
        create_model("mobilenet_v2", pretrained=path)
