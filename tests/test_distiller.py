"""Distiller: frozen teacher, weighted named losses, probing connectors, epochs, hygiene."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdforge.distiller import Distiller
from kdforge.losses.base import DistillBatch, LossTerm
from kdforge.losses.ce import CrossEntropyLoss
from kdforge.losses.dkd import DKDLoss, dkd_loss
from kdforge.losses.fitnet import ConvRegressor, FitNetLoss, fitnet_loss
from kdforge.losses.kd import KDLoss, kd_loss

N, K = 4, 5  # batch size, classes


class TinyNet(nn.Module):
    """conv → BN → ReLU → global pool → linear."""

    def __init__(self, width: int, num_classes: int = K, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, stride=stride, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv(x)))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class Recorder(LossTerm):
    """Records what it is given; a zero loss that still depends on the student."""

    needs_teacher = False

    def __init__(self, taps: tuple[str, ...] = ()) -> None:
        super().__init__(1.0)
        self.taps = list(taps)
        self.seen: list[DistillBatch] = []

    @property
    def student_taps(self) -> list[str]:
        return self.taps

    @property
    def teacher_taps(self) -> list[str]:
        return self.taps

    def forward(self, batch: DistillBatch) -> Tensor:
        self.seen.append(batch)
        return batch.student_output.sum() * 0.0


class Parts(LossTerm):
    """A term returning a dict of named, weighted parts."""

    def forward(self, batch: DistillBatch) -> dict[str, Tensor]:
        return {
            "soft": self.weight * kd_loss(batch.student_output, batch.teacher_output, 2.0),
            "hard": self.weight * F.cross_entropy(batch.student_output, batch.targets),
        }


def _pair(teacher_classes: int = K) -> tuple[TinyNet, TinyNet]:
    torch.manual_seed(0)
    teacher = TinyNet(8, teacher_classes, stride=2)  # features (N, 8, 4, 4)
    student = TinyNet(4)  # features (N, 4, 8, 8)
    with torch.no_grad():  # non-trivial BN statistics and affine parameters
        for bn in (teacher.bn, student.bn):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    return teacher, student


def _data(seed: int = 1) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, 3, 8, 8, generator=g), torch.randint(0, K, (N,), generator=g)


def _buffers(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in model.named_buffers()}


def _assert_taps_empty(distiller: Distiller) -> None:
    for taps in (distiller.student_taps, distiller.runtime.taps):
        assert all(not calls for calls in taps._records.values())
        if taps.paths:
            with pytest.raises(RuntimeError):
                taps.outputs  # noqa: B018


def test_teacher_is_frozen_and_stays_in_eval_mode() -> None:
    teacher, student = _pair()
    teacher.train()
    distiller = Distiller(teacher, student, {"kd": KDLoss()})
    assert all(not p.requires_grad for p in teacher.parameters())
    assert all(p.requires_grad for p in student.parameters())
    assert distiller.train() is distiller
    assert distiller.training and student.training
    assert not teacher.training and not any(m.training for m in teacher.modules())
    distiller.eval()
    assert not student.training and not teacher.training
    distiller.train(True)
    assert student.training and not teacher.training
    trainable = {id(p) for p in distiller.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in student.parameters()}


def test_training_forward_leaves_teacher_bn_statistics_unchanged() -> None:
    teacher, student = _pair()
    distiller = Distiller(
        teacher, student, {"ce": CrossEntropyLoss(weight=0.1), "kd": KDLoss()}
    ).train()
    before_t, before_s = _buffers(teacher), _buffers(student)
    x, y = _data()
    distiller(x, y)
    for name, value in _buffers(teacher).items():
        torch.testing.assert_close(value, before_t[name], rtol=0, atol=0)
    # the student did train: its statistics moved
    assert not torch.equal(student.bn.running_mean, before_s["bn.running_mean"])
    assert student.bn.num_batches_tracked.item() == 1


def test_no_gradient_reaches_the_teacher() -> None:
    teacher, student = _pair()
    recorder = Recorder()
    distiller = Distiller(
        teacher,
        student,
        {"kd": KDLoss(), "fit": FitNetLoss("relu", "relu"), "rec": recorder},
        example_input=_data()[0],
    ).train()
    x, y = _data()
    _, losses = distiller(x, y)
    batch = recorder.seen[-1]
    assert not batch.teacher_output.requires_grad
    assert all(not f.requires_grad for f in batch.teacher_features.values())
    assert batch.student_output.requires_grad
    sum(losses.values()).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is not None for p in distiller.terms["fit"].parameters())


def test_teacher_runs_without_autograd_even_for_inputs_that_require_grad() -> None:
    # frozen parameters alone would not do: an input that requires grad (adversarial
    # training, input-gradient methods) would still build a graph through the teacher.
    teacher, student = _pair()
    recorder = Recorder(taps=("relu",))
    distiller = Distiller(teacher, student, {"kd": KDLoss(), "rec": recorder}).train()
    x, y = _data()
    distiller(x.requires_grad_(True), y)
    batch = recorder.seen[-1]
    assert batch.student_output.requires_grad
    assert not batch.teacher_output.requires_grad
    assert not batch.teacher_features["relu"].requires_grad


def test_losses_are_named_and_weighted() -> None:
    teacher, student = _pair()
    terms = {
        "ce": CrossEntropyLoss(weight=0.1),
        "kd": KDLoss(weight=0.9, temperature=4.0),
        "dkd": DKDLoss(weight=2.0, alpha=1.0, beta=8.0, temperature=4.0, warmup_epochs=20),
    }
    distiller = Distiller(teacher, student, terms).train()
    distiller.set_epoch(3)
    x, y = _data()
    out, losses = distiller(x, y)
    assert list(losses) == ["ce", "kd", "dkd"]
    assert out.shape == (N, K)
    with torch.no_grad():
        t_out = teacher(x)
    out = out.detach()
    torch.testing.assert_close(losses["ce"], 0.1 * F.cross_entropy(out, y))
    torch.testing.assert_close(losses["kd"], 0.9 * kd_loss(out, t_out, 4.0))
    torch.testing.assert_close(
        losses["dkd"], 2.0 * (4 / 20) * dkd_loss(out, t_out, y, 1.0, 8.0, 4.0)
    )
    assert all(v.shape == () for v in losses.values())


def test_example_input_builds_the_fitnet_connector_before_any_forward() -> None:
    teacher, student = _pair()
    student_stats = _buffers(student)
    x, y = _data()
    term = FitNetLoss("relu", "relu", weight=100.0)
    distiller = Distiller(teacher, student, {"fit": term}, example_input=x)
    assert isinstance(term.connector, ConvRegressor)
    assert term.connector.conv.in_channels == 4 and term.connector.conv.out_channels == 8
    assert term.connector.conv.stride == (2, 2)  # student map 8x8 is twice the teacher's 4x4
    trainable = {id(p) for p in distiller.parameters() if p.requires_grad}
    expected = {id(p) for p in (*student.parameters(), *term.connector.parameters())}
    assert trainable == expected
    assert term.connector.training  # the distiller's mode was restored after the probe
    _assert_taps_empty(distiller)  # the probe keeps no activations
    for name, value in _buffers(student).items():  # probing ran in eval mode
        torch.testing.assert_close(value, student_stats[name], rtol=0, atol=0)

    distiller.train()
    _, losses = distiller(x, y)  # no error: the connector was built before the optimizer
    distiller.eval()
    _, losses = distiller(x, y)
    with torch.no_grad():
        want = 100.0 * fitnet_loss(term.connector(student.features(x)), teacher.features(x))
    torch.testing.assert_close(losses["fit"], want)


def test_training_forward_without_probe_raises_for_fitnet() -> None:
    teacher, student = _pair()
    distiller = Distiller(teacher, student, {"fit": FitNetLoss("relu", "relu")}).train()
    with pytest.raises(RuntimeError, match="probe"):
        distiller(*_data())
    _assert_taps_empty(distiller)
    with pytest.raises(RuntimeError, match="probe"):  # and keeps failing, never silently
        distiller(*_data())


def test_probe_method_builds_the_connector() -> None:
    teacher, student = _pair()
    distiller = Distiller(teacher, student, {"fit": FitNetLoss("relu", "relu")})
    n_before = sum(p.numel() for p in distiller.parameters())
    distiller.probe(_data()[0])
    assert sum(p.numel() for p in distiller.parameters()) > n_before
    distiller.train()
    _, losses = distiller(*_data())
    assert losses["fit"].requires_grad


def test_lazily_built_connector_follows_eval_mode() -> None:
    teacher, student = _pair()
    term = FitNetLoss("relu", "relu")
    distiller = Distiller(teacher, student, {"fit": term}).eval()
    distiller(*_data())  # eval mode: building on the first batch is allowed
    assert not term.connector.training
    assert term.connector.bn.num_batches_tracked.item() == 0
    torch.testing.assert_close(term.connector.bn.running_mean, torch.zeros(8))


def test_kd_with_different_class_counts_fails_on_the_first_batch() -> None:
    teacher, student = _pair(teacher_classes=7)
    distiller = Distiller(teacher, student, {"kd": KDLoss(), "fit": FitNetLoss("relu", "relu")})
    distiller.eval()
    with pytest.raises(ValueError, match=r"student output.*\(4, 5\).*teacher output.*\(4, 7\)"):
        distiller(*_data())
    _assert_taps_empty(distiller)
    with pytest.raises(ValueError, match=r"\(4, 5\).*\(4, 7\)"):
        Distiller(teacher, student, {"kd": KDLoss()}, example_input=_data()[0])


def test_teacher_none_with_a_kd_term_raises() -> None:
    _, student = _pair()
    with pytest.raises(ValueError, match=r"kd.*teacher"):
        Distiller(None, student, {"ce": CrossEntropyLoss(), "kd": KDLoss()})
    with pytest.raises(ValueError):
        Distiller(None, student, {})


def test_teacher_none_with_only_ce_works() -> None:
    _, student = _pair()
    distiller = Distiller(None, student, {"ce": CrossEntropyLoss(weight=0.5)}).train()
    assert distiller.teacher is None and distiller.runtime is None
    x, y = _data()
    out, losses = distiller(x, y)
    assert list(losses) == ["ce"]
    torch.testing.assert_close(losses["ce"], 0.5 * F.cross_entropy(out, y))
    losses["ce"].backward()
    assert student.fc.weight.grad is not None


def test_a_term_returning_a_dict_yields_dotted_keys() -> None:
    teacher, student = _pair()
    distiller = Distiller(teacher, student, {"ce": CrossEntropyLoss(), "two": Parts(3.0)})
    x, y = _data()
    out, losses = distiller(x, y)
    assert list(losses) == ["ce", "two.soft", "two.hard"]
    with torch.no_grad():
        t_out = teacher(x)
    torch.testing.assert_close(losses["two.soft"], 3.0 * kd_loss(out.detach(), t_out, 2.0))
    torch.testing.assert_close(losses["two.hard"], 3.0 * F.cross_entropy(out.detach(), y))


def test_set_epoch_reaches_the_batch() -> None:
    _, student = _pair()
    recorder = Recorder()
    distiller = Distiller(None, student, {"rec": recorder})
    x, y = _data()
    distiller(x, y)
    distiller.set_epoch(7)
    distiller(x, y)
    distiller.set_epoch(8)
    distiller(x, y)
    assert [b.epoch for b in recorder.seen] == [0, 7, 8]
    assert recorder.seen[-1].targets is y


def test_features_reach_the_terms_and_the_output_is_path_empty_string() -> None:
    teacher, student = _pair()
    recorder = Recorder(taps=("", "relu", "fc:input"))
    distiller = Distiller(teacher, student, {"rec": recorder}).eval()
    x, y = _data()
    out, _ = distiller(x, y)
    _assert_taps_empty(distiller)
    batch = recorder.seen[-1]
    assert batch.student_features[""] is out
    assert batch.teacher_features[""] is batch.teacher_output
    torch.testing.assert_close(batch.student_features["relu"], student.features(x))
    torch.testing.assert_close(batch.teacher_features["relu"], teacher.features(x))
    assert batch.student_features["fc:input"].shape == (N, 4)
    assert batch.teacher_features["fc:input"].shape == (N, 8)
    assert not student._forward_hooks  # "" needs no hook: the output is already at hand


def test_one_sgd_step_reduces_the_kd_loss() -> None:
    teacher, student = _pair()
    distiller = Distiller(teacher, student, {"kd": KDLoss(weight=1.0)}).train()
    opt = torch.optim.SGD([p for p in distiller.parameters() if p.requires_grad], lr=0.1)
    x, y = _data()
    _, before = distiller(x, y)
    opt.zero_grad()
    before["kd"].backward()
    opt.step()
    _, after = distiller(x, y)
    assert after["kd"].item() < before["kd"].item()


def test_taps_are_cleared_after_forward() -> None:
    teacher, student = _pair()
    distiller = Distiller(
        teacher, student, {"fit": FitNetLoss("relu", "relu")}, example_input=_data()[0]
    ).train()
    assert distiller.student_taps.paths == ["relu"] and distiller.runtime.taps.paths == ["relu"]
    distiller(*_data())
    _assert_taps_empty(distiller)
