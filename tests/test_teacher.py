"""Teacher speed options: each leaves the losses as they were (bf16 within a tolerance)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from kdforge import create_model
from kdforge.distiller import Distiller
from kdforge.losses import (
    CanKDLoss,
    CATKDLoss,
    CrossEntropyLoss,
    DetectionLoss,
    DKDLoss,
    FitNetLoss,
    KDLoss,
    LossTerm,
    MGDLoss,
    PKDLoss,
)
from kdforge.losses.base import DistillBatch

BF16_RTOL = 0.02  # bf16 keeps 8 bits of mantissa: teacher logits/features differ by ~0.4 %

TERMS = {
    "kd": lambda: {"ce": CrossEntropyLoss(weight=0.1), "kd": KDLoss(weight=0.9)},
    "dkd": lambda: {"dkd": DKDLoss(warmup_epochs=1)},
    "cat_kd": lambda: {"cat": CATKDLoss(weight=1.0)},
    "pkd": lambda: {"pkd": PKDLoss(student_layers=["layer1"], teacher_layers=["layer1"])},
    "mgd": lambda: {"mgd": MGDLoss(["layer1"], weight=1.0)},
    "fitnet": lambda: {"fit": FitNetLoss("layer2", "layer2")},
}


def _models() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    teacher = create_model("resnet14", num_classes=10)
    student = create_model("resnet8", num_classes=10)
    with torch.no_grad():  # a BN that is not the identity, so layout and dtype matter
        for m in teacher.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return teacher, student


def _data() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 10, (4,), generator=g)


def _losses(method: str, **options) -> tuple[Distiller, dict[str, Tensor]]:
    """One training forward + backward; the losses, detached."""
    teacher, student = _models()
    x, y = _data()
    torch.manual_seed(2)  # MGD's random mask
    distiller = Distiller(teacher, student, TERMS[method](), example_input=x, **options).train()
    torch.manual_seed(3)
    _, losses = distiller(x, y)
    sum(losses.values()).backward()
    return distiller, {k: v.detach() for k, v in losses.items()}


class TeacherSpy(LossTerm):
    """Records whether the teacher values it is given are inference tensors."""

    needs_teacher_autograd = False

    def __init__(self) -> None:
        super().__init__(0.0)
        self.inference: list[bool] = []

    def forward(self, batch: DistillBatch) -> Tensor:
        self.inference.append(batch.teacher_output.is_inference())
        return batch.student_output.sum() * 0.0


@pytest.mark.parametrize("method", list(TERMS))
def test_inference_mode_leaves_the_losses_unchanged(method: str) -> None:
    fast, fast_losses = _losses(method)
    slow, slow_losses = _losses(method, teacher_inference_mode=False)
    safe = all(not t.needs_teacher_autograd for t in fast.terms.values() if t.needs_teacher)
    assert fast.runtime.inference_mode is safe and not slow.runtime.inference_mode
    assert method != "fitnet" or not safe  # FitNet's MSE saves the teacher map for backward
    for name, value in slow_losses.items():
        torch.testing.assert_close(fast_losses[name], value, rtol=0, atol=0)


def test_inference_mode_is_used_only_when_every_term_allows_it() -> None:
    teacher, student = _models()
    x, y = _data()
    spy = TeacherSpy()
    Distiller(teacher, student, {"kd": KDLoss(), "spy": spy}).train()(x, y)
    assert spy.inference == [True]
    fit = FitNetLoss("layer2", "layer2")
    distiller = Distiller(teacher, student, {"fit": fit, "spy": spy}, example_input=x).train()
    _, losses = distiller(x, y)
    assert spy.inference[-1] is False  # FitNet needs autograd-safe teacher tensors
    sum(losses.values()).backward()


@pytest.mark.parametrize("method", ["kd", "cat_kd", "fitnet"])
def test_bf16_teacher_is_close_to_float32(method: str) -> None:
    _, fp32 = _losses(method)
    distiller, bf16 = _losses(method, teacher_dtype="bfloat16")
    for name, value in fp32.items():
        assert bf16[name].dtype == torch.float32
        torch.testing.assert_close(bf16[name], value, rtol=BF16_RTOL, atol=1e-4)
    assert all(p.dtype == torch.float32 for p in distiller.teacher.parameters())


@pytest.mark.parametrize("method", ["kd", "fitnet"])
def test_channels_last_teacher_gives_the_same_losses(method: str) -> None:
    _, plain = _losses(method)
    distiller, fast = _losses(method, teacher_channels_last=True)
    conv = distiller.teacher.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    for name, value in plain.items():
        torch.testing.assert_close(fast[name], value, rtol=1e-5, atol=1e-6)


def _count_calls(module: nn.Module) -> list[int]:
    count = [0]
    module.register_forward_hook(lambda *_: count.__setitem__(0, count[0] + 1))
    return count


@pytest.mark.parametrize("method", ["cat_kd", "fitnet", "pkd"])
def test_truncated_teacher_skips_its_head_and_gives_the_same_losses(method: str) -> None:
    _, full = _losses(method)
    teacher, student = _models()
    x, y = _data()
    fc_calls = _count_calls(teacher.fc)
    torch.manual_seed(2)  # as _losses: the same connector initialisation
    distiller = Distiller(teacher, student, TERMS[method](), example_input=x, truncate_teacher=True)
    assert fc_calls[0] == 1  # the probe runs the teacher in full, to count the tap calls
    torch.manual_seed(3)
    _, losses = distiller.train()(x, y)
    sum(losses.values()).backward()
    assert fc_calls[0] == 1  # ... and training forwards stop before the classifier
    for name, value in full.items():
        torch.testing.assert_close(losses[name].detach(), value, rtol=0, atol=0)
    teacher(x)  # called outside the distiller, the teacher runs in full
    assert fc_calls[0] == 2


def test_truncation_is_refused_when_a_term_reads_the_teacher_output() -> None:
    teacher, student = _models()
    with pytest.raises(ValueError, match=r"\['kd'\] read the teacher's output"):
        Distiller(teacher, student, {"kd": KDLoss()}, truncate_teacher=True)


FPN_TERMS = {  # both tap neck.fpn_convs.*; CanKD's official teacher runs extract_feat only
    "pkd": lambda: PKDLoss(),  # levels 0-4
    "cankd": lambda: CanKDLoss([f"neck.fpn_convs.{i}" for i in range(4)]),
}


@pytest.mark.parametrize("method", list(FPN_TERMS))
def test_truncated_detector_teacher_runs_backbone_and_neck_only(method: str) -> None:
    torch.manual_seed(0)
    kw = {"num_classes": 3, "fpn_channels": 32, "feat_channels": 32, "stacked_convs": 1}
    teacher, student = create_model("gfl_r18_fpn", **kw), create_model("gfl_r18_fpn", **kw)
    images = torch.randn(2, 3, 128, 128)  # P6 2x2: CanKD pools 2x2
    target = {"boxes": torch.tensor([[4.0, 6.0, 40.0, 44.0]]), "labels": torch.tensor([1])}
    targets = [target | {"img_shape": (128, 128)}] * 2
    torch.manual_seed(1)
    reference_term = FPN_TERMS[method]()
    term = copy.deepcopy(reference_term)
    reference = Distiller(
        copy.deepcopy(teacher), copy.deepcopy(student), {method: reference_term}, images
    )
    _, expected = reference.train()(images, targets)
    head_calls = _count_calls(teacher.bbox_head)
    backbone_calls = _count_calls(teacher.backbone)
    terms = {"detection": DetectionLoss(), method: term}
    distiller = Distiller(teacher, student, terms, example_input=images, truncate_teacher=True)
    _, losses = distiller.train()(images, targets)
    assert (head_calls[0], backbone_calls[0]) == (1, 2)  # the probe, then up to the last P-level
    assert expected.keys() <= losses.keys()  # CanKD: one loss per level
    for name, value in expected.items():
        torch.testing.assert_close(losses[name], value, rtol=0, atol=0)


def test_unknown_teacher_dtype_is_an_error() -> None:
    teacher, student = _models()
    with pytest.raises(ValueError, match="bfloat16"):
        Distiller(teacher, student, {"kd": KDLoss()}, teacher_dtype="int8")
