"""CIFAR zoo: registry, shapes, parameter counts, feature_info, RepDistiller checkpoints."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdforge.models import create_model, get_model_info, list_models

CIFAR_MODELS = {
    *(f"resnet{d}" for d in (8, 14, 20, 32, 44, 56, 110)),
    "resnet8x4",
    "resnet32x4",
    "wrn_16_1",
    "wrn_16_2",
    "wrn_40_1",
    "wrn_40_2",
    *(f"vgg{d}" for d in (8, 11, 13, 16, 19)),
    "ResNet50",
    "MobileNetV2",
    "ShuffleV1",
    "ShuffleV2",
}

# Exact parameter counts at 100 classes.
PARAM_COUNTS = {
    "resnet8": 83_892,
    "resnet14": 181_108,
    "resnet20": 278_324,
    "resnet32": 472_756,
    "resnet44": 667_188,
    "resnet56": 861_620,
    "resnet110": 1_736_564,
    "resnet8x4": 1_233_540,
    "resnet32x4": 7_433_860,
    "wrn_16_1": 180_916,
    "wrn_16_2": 703_284,
    "wrn_40_1": 569_780,
    "wrn_40_2": 2_255_156,
    "vgg8": 3_965_028,
    "vgg11": 9_277_284,
    "vgg13": 9_462_180,
    "vgg16": 14_774_436,
    "vgg19": 20_086_692,
    "ResNet50": 23_705_252,
    "MobileNetV2": 812_836,
    "ShuffleV1": 949_258,
    "ShuffleV2": 1_355_528,
}

# Millions of parameters as published for the RepDistiller (CRD, Tian et al. 2020) zoo.
PUBLISHED_M = {
    "resnet8x4": 1.23,
    "resnet32x4": 7.43,
    "wrn_40_2": 2.25,
    "resnet56": 0.86,
    "resnet110": 1.74,
    "vgg13": 9.46,
    "ShuffleV1": 0.95,
    "ShuffleV2": 1.36,
    "MobileNetV2": 0.81,
    "ResNet50": 23.71,
}

# (number of state_dict entries, sha1 of the sorted "key:[shape]" lines) of the
# RepDistiller/mdistiller reference models (models/*.py), built with 100 classes.
REFERENCE_KEYS = {
    "MobileNetV2": (320, "ba108e9fe56114509a8309959814f5b7d6a8ce76"),
    "ResNet50": (320, "0a43a33b184a4cebad44f855a0cb68eec6185ed8"),
    "ShuffleV1": (296, "d940a590b1a6531399055fe01f03e4c1963a4a8d"),
    "ShuffleV2": (338, "08a99f2fd55a3de15782c82bfe9f1736cb230d2a"),
    "resnet110": (668, "41eea685aa8fb9cae4e59761a78dea1775fdcf0e"),
    "resnet14": (92, "df602ddddb176eca9658b4487c8e1275277cfac9"),
    "resnet20": (128, "f24ffffdfc2760b9980b967ce9f24767572973e2"),
    "resnet32": (200, "92b3fa0d571f797450f380037917cd1516abe5ca"),
    "resnet32x4": (206, "63b79be005d92772d8de65708d528c015e9def6b"),
    "resnet44": (272, "e7e2aceaea6bd9a116854eb293d1de414ca5c2dd"),
    "resnet56": (344, "019a9685efcdf4acaf3a6056bbfe290cfd68aa16"),
    "resnet8": (56, "b579ed9d08cf132492cf2f3b7508b086e8477e0d"),
    "resnet8x4": (62, "2761d5c21827bcb5ca13feec562e4f6a89eff7a6"),
    "vgg11": (58, "c8af20a0eede31fd89daa3a94c7fc198d7b969bd"),
    "vgg13": (72, "41d144bbfaa2f5ea0bd23b0a13b7e0574262a749"),
    "vgg16": (93, "c1cf36a364eea949475400050f62076f665e8991"),
    "vgg19": (114, "d40f6b637ac20ee33e870d577d9052ff7cdcefef"),
    "vgg8": (37, "2d7c24212db4b239a08f96f9eb869a23da931533"),
    "wrn_16_1": (82, "b9d3a2741e016d0dc82e8ab807c0ce7ddf29f5c2"),
    "wrn_16_2": (83, "60cf17678d3cd5618bbbb25c92ff70a8ddca6f8a"),
    "wrn_40_1": (226, "a704d7f81b92fb178b896826f98c58768a87b92c"),
    "wrn_40_2": (227, "e9c7ef91e0cb976c639ce06ebc7fff1d8d67e065"),
}

_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _resnet8x4_keys() -> list[str]:
    """All keys of RepDistiller's resnet8x4: stem, one BasicBlock per stage, ``fc``."""
    keys = ["conv1.weight", *(f"bn1.{s}" for s in _BN)]
    for i in (1, 2, 3):  # every stage's single block changes width, so it has a downsample
        p = f"layer{i}.0"
        keys += [f"{p}.conv1.weight", *(f"{p}.bn1.{s}" for s in _BN)]
        keys += [f"{p}.conv2.weight", *(f"{p}.bn2.{s}" for s in _BN)]
        keys += [f"{p}.downsample.0.weight", *(f"{p}.downsample.1.{s}" for s in _BN)]
    return [*keys, "fc.weight", "fc.bias"]


# Distinctive keys (shape, or None for "must be absent") read off the reference source.
REFERENCE_SAMPLES: dict[str, dict[str, tuple[int, ...] | None]] = {
    "resnet32x4": {
        "conv1.weight": (32, 3, 3, 3),
        "layer1.0.downsample.0.weight": (64, 32, 1, 1),
        "layer1.1.downsample.0.weight": None,
        "layer3.0.downsample.1.running_var": (256,),
        "layer3.4.conv2.weight": (256, 256, 3, 3),
        "fc.weight": (100, 256),
    },
    "wrn_40_2": {
        "conv1.weight": (16, 3, 3, 3),
        "block1.layer.0.bn1.weight": (16,),
        "block1.layer.0.convShortcut.weight": (32, 16, 1, 1),
        "block1.layer.1.convShortcut.weight": None,
        "block3.layer.0.convShortcut.weight": (128, 64, 1, 1),
        "block3.layer.5.conv2.weight": (128, 128, 3, 3),
        "bn1.running_mean": (128,),
        "fc.weight": (100, 128),
    },
    "vgg13": {
        "block0.0.weight": (64, 3, 3, 3),
        "block0.0.bias": (64,),
        "block0.1.running_var": (64,),
        "block0.3.weight": (64, 64, 3, 3),
        "block0.4.num_batches_tracked": (),
        "block0.5.weight": None,
        "block4.4.weight": (512,),
        "classifier.weight": (100, 512),
    },
    "ShuffleV1": {
        "conv1.weight": (24, 3, 1, 1),
        "layer1.0.conv1.weight": (54, 24, 1, 1),
        "layer1.0.conv3.weight": (216, 18, 1, 1),
        "layer1.1.conv1.weight": (60, 80, 1, 1),
        "layer2.0.conv2.weight": (60, 1, 3, 3),
        "layer3.3.bn3.running_var": (960,),
        "linear.weight": (100, 960),
    },
    "MobileNetV2": {
        "conv1.0.weight": (16, 3, 3, 3),
        "blocks.0.0.conv.0.weight": (16, 16, 1, 1),
        "blocks.0.0.conv.3.weight": (16, 1, 3, 3),
        "blocks.1.0.conv.6.weight": (12, 48, 1, 1),
        "blocks.6.0.conv.6.weight": (160, 480, 1, 1),
        "blocks.6.0.conv.7.running_mean": (160,),
        "conv2.0.weight": (1280, 160, 1, 1),
        "classifier.0.weight": (100, 1280),
    },
    "ResNet50": {
        "conv1.weight": (64, 3, 3, 3),
        "layer1.0.shortcut.0.weight": (256, 64, 1, 1),
        "layer1.1.shortcut.0.weight": None,
        "layer2.0.conv2.weight": (128, 128, 3, 3),
        "layer4.0.shortcut.1.running_var": (2048,),
        "layer4.2.bn3.weight": (2048,),
        "linear.weight": (100, 2048),
    },
    "ShuffleV2": {
        "layer1.0.conv1.weight": (24, 1, 3, 3),
        "layer1.0.conv5.weight": (58, 58, 1, 1),
        "layer1.1.conv1.weight": (58, 58, 1, 1),
        "layer2.7.conv2.weight": (116, 1, 3, 3),
        "conv2.weight": (1024, 464, 1, 1),
        "linear.weight": (100, 1024),
    },
}


@functools.cache
def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name).eval()


def _digest(state: dict[str, torch.Tensor]) -> str:
    lines = "\n".join(f"{k}:{list(v.shape)}" for k, v in sorted(state.items()))
    return hashlib.sha1(lines.encode()).hexdigest()


def test_registry_lists_the_cifar_zoo():
    assert set(list_models("cifar")) == CIFAR_MODELS
    for name in CIFAR_MODELS:
        info = get_model_info(name)
        assert (info.input_size, info.default_num_classes) == ((3, 32, 32), 100)


@pytest.mark.parametrize("name", sorted(CIFAR_MODELS))
def test_parameter_count(name):
    n_params = sum(p.numel() for p in _model(name).parameters())
    assert n_params == PARAM_COUNTS[name]
    if name in PUBLISHED_M:
        assert abs(n_params / 1e6 - PUBLISHED_M[name]) <= 0.01


def test_num_classes_argument():
    model = create_model("resnet8", num_classes=10).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize("name", sorted(CIFAR_MODELS))
def test_forward_and_feature_info(name):
    """Logits only; each feature_info module's output has the stated shape, is not
    modified in place afterwards, and the last one pooled into the classifier gives
    the logits."""
    model = _model(name)
    info = model.feature_info
    assert info and all(set(d) == {"module", "num_chs", "reduction"} for d in info)
    captured: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(path):
        return lambda _m, _i, out: captured.__setitem__(path, (out, out.clone()))

    handles = [
        model.get_submodule(d["module"]).register_forward_hook(hook(d["module"])) for d in info
    ]
    try:
        with torch.no_grad():
            logits = model(torch.randn(2, 3, 32, 32))
    finally:
        for h in handles:
            h.remove()
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 100)
    for d in info:
        out, snapshot = captured[d["module"]]
        size = 32 // d["reduction"]
        assert out.shape == (2, d["num_chs"], size, size), d
        assert torch.equal(out, snapshot), f"{d['module']} output was modified in place"
    last = captured[info[-1]["module"]][0]
    assert last.shape[1] == model.num_features
    head = model.get_submodule(model.classifier_name)
    assert isinstance(head, nn.Linear) and head is model.get_classifier()
    with torch.no_grad():
        pooled = F.adaptive_avg_pool2d(last, 1).flatten(1)
        torch.testing.assert_close(head(pooled), logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_1", "vgg8", "MobileNetV2", "ShuffleV2"])
def test_forward_features_is_the_last_feature_map(name):
    model = _model(name)
    captured = []
    module = model.get_submodule(model.feature_info[-1]["module"])
    handle = module.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        with torch.no_grad():
            features = model.forward_features(torch.randn(1, 3, 32, 32))
    finally:
        handle.remove()
    assert len(captured) == 1 and torch.equal(features, captured[0])


@pytest.mark.parametrize("name", sorted(CIFAR_MODELS))
def test_state_dict_matches_reference(name):
    state = _model(name).state_dict()
    count, digest = REFERENCE_KEYS[name]
    assert len(state) == count
    assert _digest(state) == digest
    for key, shape in REFERENCE_SAMPLES.get(name, {}).items():
        if shape is None:
            assert key not in state
        else:
            assert tuple(state[key].shape) == shape, key


def test_resnet8x4_full_key_list():
    assert list(_model("resnet8x4").state_dict()) == _resnet8x4_keys()


def _check_checkpoint_roundtrip(name: str, path: Path, nest: str) -> None:
    """Save perturbed weights as ``{nest: state_dict, "epoch": 240}`` and load them back."""
    state = {k: v.clone() for k, v in _model(name).state_dict().items()}
    for v in state.values():
        if v.is_floating_point():
            v.add_(0.5)
    torch.save({nest: state, "epoch": 240}, path)
    model = create_model(name, pretrained=path)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


@pytest.mark.parametrize(
    "name", ["resnet8x4", "resnet32x4", "wrn_40_2", "vgg13", "ShuffleV1", "MobileNetV2", "ResNet50"]
)
def test_repdistiller_checkpoint_loads(name, tmp_path):
    _check_checkpoint_roundtrip(name, tmp_path / "ckpt_epoch_240.pth", nest="model")


def test_mdistiller_net_checkpoint_loads(tmp_path):
    _check_checkpoint_roundtrip("resnet8x4", tmp_path / "ckpt_epoch_240.pth", nest="net")


def test_mismatched_checkpoint_is_refused(tmp_path):
    path = tmp_path / "ckpt_epoch_240.pth"
    torch.save({"model": _model("resnet8x4").state_dict(), "epoch": 240}, path)
    with pytest.raises(ValueError, match="does not match"):
        create_model("resnet32x4", pretrained=path)
