"""Every registered loss term, on a tiny setting: naming and argument conventions, probed
shapes, a training step, a frozen teacher, connectors kept out of the student, and a zero
loss for a student equal to the teacher where the math says so.

A term registered in ``kdforge.losses.TERMS`` without an entry in ``SETTINGS`` fails here.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from kdforge import Distiller, create_model
from kdforge.losses import TERMS
from kdforge.models.vit import VisionTransformer

Models = Callable[[], tuple[nn.Module, nn.Module]]


@dataclass(frozen=True)
class Setting:
    """A tiny (teacher, student) pair, a batch, and the term's constructor arguments.

    ``zero`` is either the term arguments under which the loss is 0 for a student equal to
    the teacher (same architecture and weights, both in eval mode), or why it is not 0 then.
    """

    models: Models
    batch: Callable[[], tuple[Tensor, Any]]
    zero: dict[str, Any] | str
    kwargs: dict[str, Any] = field(default_factory=dict)
    epoch: int = 0  # for warm-ups and ramps (CAKD is 0 before epoch 26)


def _cifar(teacher: str, student: str) -> Models:
    def build() -> tuple[nn.Module, nn.Module]:
        torch.manual_seed(0)
        return create_model(teacher, num_classes=10), create_model(student, num_classes=10)

    return build


def _detectors() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    kw = {"num_classes": 3, "fpn_channels": 32, "feat_channels": 32, "stacked_convs": 2}
    return create_model("gfl_r18_fpn", **kw), create_model("gfl_r18_fpn", **kw)


def _segmentors() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    return create_model("pspnet_r18", num_classes=3), create_model("pspnet_r18", num_classes=3)


def _vit_and_cnn() -> tuple[nn.Module, nn.Module]:
    """A 2-layer ViT on 8x8 patches of 4 px and a resnet8 whose layer3 is 8x8: 64 tokens."""
    torch.manual_seed(0)
    return VisionTransformer(32, 4, 2, 2, 64, 128, num_classes=10), create_model("resnet8", 10)


def _classification() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 10, (4,), generator=g)


def _detection() -> tuple[Tensor, list[dict[str, Any]]]:
    g = torch.Generator().manual_seed(1)
    boxes = [[[4.0, 6.0, 40.0, 44.0]], [[10.0, 10.0, 30.0, 50.0], [30.0, 2.0, 60.0, 30.0]]]
    targets = [
        {"boxes": torch.tensor(b), "labels": torch.arange(len(b)), "img_shape": (64, 64)}
        for b in boxes
    ]
    return torch.randn(2, 3, 64, 64, generator=g), targets


def _segmentation() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 3, (2, 32, 32), generator=g)
    labels[:, :4] = 255  # ignored pixels
    return torch.randn(2, 3, 32, 32, generator=g), labels


CIFAR = _cifar("resnet14", "resnet8")  # equal widths
WIDER = _cifar("resnet8x4", "resnet8")  # teacher 4x wider: connectors map the channels
GROUND_TRUTH = "a ground-truth term: it compares the student with the labels, not the teacher"
HINT = {"student_layer": "layer2", "teacher_layer": "layer2"}
PAIRS = {"student_layers": ["layer1", "layer2"]}

SETTINGS: dict[str, Setting] = {
    "ce": Setting(CIFAR, _classification, zero=GROUND_TRUTH),
    "detection": Setting(_detectors, _detection, zero=GROUND_TRUTH),
    "segmentation": Setting(_segmentors, _segmentation, zero=GROUND_TRUTH),
    # KL divergences between equal distributions (DKD: its binary and non-target parts)
    "kd": Setting(CIFAR, _classification, zero={}),
    "dkd": Setting(CIFAR, _classification, zero={}),
    # equal CAMs pool and normalise to equal maps (the student head kept, not redrawn)
    "cat_kd": Setting(CIFAR, _classification, zero={"student_init": "keep"}),
    # equal maps standardise to equal maps
    "pkd": Setting(CIFAR, _classification, zero=PAIRS, kwargs=PAIRS),
    # the conv-BN-ReLU connector is randomly initialised; without one the hint is the map
    "fitnet": Setting(WIDER, _classification, zero={**HINT, "connector": "none"}, kwargs=HINT),
    # the BN gate starts at zero, so z_s = s; equal channels need no connector
    "cankd": Setting(WIDER, _classification, zero=PAIRS, kwargs=PAIRS),
    # the teacher head on its own features reproduces its predictions (align_scale's
    # +1e-6 on the student std leaves ~1e-7)
    "crosskd": Setting(_detectors, _detection, zero={"stage": 2}, kwargs={"stage": 2}),
    "mgd": Setting(
        WIDER,
        _classification,
        zero="a random mask drops 65% of the student positions and a randomly initialised "
        "generator rebuilds the teacher map from the rest",
        kwargs={"student_layers": ["layer3"]},
    ),
    "cakd": Setting(
        _vit_and_cnn,
        _classification,
        zero="cross-architecture (ViT teacher, CNN student): the two cannot be equal, the "
        "projectors are randomly initialised and the adversarial part is a constant BCE",
        epoch=35,
    ),
}


def _setting(key: str) -> Setting:
    if key not in SETTINGS:
        pytest.fail(f"loss term {key!r} is registered but has no tiny setting in SETTINGS")
    return SETTINGS[key]


def test_every_registered_term_has_a_setting() -> None:
    assert set(SETTINGS) == set(TERMS)
    for key, setting in SETTINGS.items():
        assert isinstance(setting.zero, dict) or len(setting.zero) > 20, key  # a reason


@pytest.mark.parametrize("key", list(TERMS))
def test_naming_and_argument_conventions(key: str) -> None:
    cls = TERMS[key]
    assert cls.__name__.endswith("Loss"), cls.__name__
    weight = inspect.signature(cls).parameters.get("weight")
    assert weight is not None and weight.kind is inspect.Parameter.KEYWORD_ONLY
    assert isinstance(weight.default, float)  # the official default


@pytest.mark.parametrize("key", list(TERMS))
def test_training_step(key: str) -> None:
    setting = _setting(key)
    teacher, student = setting.models()
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    x, y = setting.batch()
    term = TERMS[key](**setting.kwargs)
    # (a) shapes are probed and connectors built at construction, before any optimizer
    distiller = Distiller(teacher, student, {key: term}, example_input=x).train()
    distiller.set_epoch(setting.epoch)
    trainable = [p for p in distiller.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=0.1)
    # (b) finite scalar losses whose gradients reach the student
    _, losses = distiller(x, y)
    assert losses and all(v.ndim == 0 and torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert any(g.abs().sum() > 0 for g in grads)
    optimizer.step()
    # (d) the teacher is untouched: same tensors, eval mode, no gradients
    assert all(not m.training for m in teacher.modules())
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    for name, value in teacher.state_dict().items():
        assert torch.equal(value, teacher_state[name]), name
    # (e) the term's parts live in distiller.terms only: the student exports as built
    assert distiller.student.state_dict().keys() == setting.models()[1].state_dict().keys()
    own = {id(t) for t in [*term.parameters(), *term.buffers()]}
    models = [*student.parameters(), *student.buffers(), *teacher.parameters(), *teacher.buffers()]
    assert not own & {id(t) for t in models}


ZERO = [k for k in TERMS if k not in SETTINGS or isinstance(SETTINGS[k].zero, dict)]


@pytest.mark.parametrize("key", ZERO)
def test_zero_loss_when_the_student_equals_the_teacher(key: str) -> None:
    setting = _setting(key)
    teacher = setting.models()[0]
    student = copy.deepcopy(teacher)
    x, y = setting.batch()
    term = TERMS[key](**setting.zero)
    distiller = Distiller(teacher, student, {key: term}, example_input=x).eval()
    distiller.set_epoch(setting.epoch)
    with torch.no_grad():
        _, losses = distiller(x, y)
    assert losses
    for name, value in losses.items():
        assert value.abs().item() <= 1e-6, (name, value.item())
