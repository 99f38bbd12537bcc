"""FitNet: the hint MSE, mdistiller's ConvReg choice of conv, and the shape checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdforge.losses.base import DistillBatch
from kdforge.losses.fitnet import ConvRegressor, FitNetLoss, fitnet_loss


def test_fitnet_loss_is_element_mean_squared_error() -> None:
    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64)
    t = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64)
    total = 0.0
    for idx in torch.cartesian_prod(*(torch.arange(d) for d in s.shape)).tolist():
        total += (s[tuple(idx)].item() - t[tuple(idx)].item()) ** 2
    assert fitnet_loss(s, t).item() == pytest.approx(total / s.numel(), rel=1e-12)
    assert fitnet_loss(s, s).item() == 0.0


@pytest.mark.parametrize(
    ("student", "teacher", "conv_type", "kernel", "stride"),
    [
        ((2, 4, 8, 8), (2, 6, 4, 4), nn.Conv2d, (3, 3), (2, 2)),  # student 2x larger
        ((2, 4, 4, 4), (2, 6, 8, 8), nn.ConvTranspose2d, (4, 4), (2, 2)),  # student 1/2x
        ((2, 4, 8, 8), (2, 6, 8, 8), nn.Conv2d, (1, 1), (1, 1)),  # equal
        ((2, 4, 7, 7), (2, 6, 4, 4), nn.Conv2d, (4, 4), (1, 1)),  # larger, not 2x
        ((2, 4, 6, 5), (2, 6, 4, 4), nn.Conv2d, (3, 2), (1, 1)),  # larger, not square
        ((2, 4, 8, 6), (2, 6, 4, 3), nn.Conv2d, (3, 3), (2, 2)),  # 2x, not square
        ((2, 4, 2, 3), (2, 6, 4, 6), nn.ConvTranspose2d, (4, 4), (2, 2)),  # 1/2x, not square
    ],
)
def test_conv_regressor_picks_mdistillers_conv(student, teacher, conv_type, kernel, stride):
    reg = ConvRegressor(student, teacher)
    assert type(reg.conv) is conv_type
    assert reg.conv.kernel_size == kernel and reg.conv.stride == stride
    assert reg.conv.in_channels == student[1] and reg.conv.out_channels == teacher[1]
    assert isinstance(reg.bn, nn.BatchNorm2d) and reg.bn.num_features == teacher[1]
    out = reg(torch.randn(*student))
    assert out.shape == teacher
    assert (out >= 0).all()  # ReLU last


def test_conv_regressor_without_relu() -> None:
    reg = ConvRegressor((2, 4, 8, 8), (2, 6, 8, 8), use_relu=False)
    assert (reg(torch.randn(2, 4, 8, 8)) < 0).any()


@pytest.mark.parametrize(
    ("student", "teacher"),
    [
        ((2, 4, 3, 3), (2, 6, 8, 8)),  # smaller, not half
        ((2, 4, 4, 4), (2, 6, 16, 16)),  # a quarter
        ((2, 4, 8, 2), (2, 6, 4, 4)),  # height 2x, width 1/2x
        ((2, 4, 6, 3), (2, 6, 4, 4)),  # height larger, width smaller
    ],
)
def test_conv_regressor_rejects_other_sizes(student, teacher) -> None:
    h_s, w_s, h_t, w_t = *student[2:], *teacher[2:]
    with pytest.raises(ValueError, match=f"{h_s}x{w_s}.*{h_t}x{w_t}"):
        ConvRegressor(student, teacher)


def _batch(fs: torch.Tensor, ft: torch.Tensor) -> DistillBatch:
    return DistillBatch(None, None, {"layer2": fs}, {"block.3": ft}, None)


def test_term_none_connector_is_weighted_mse() -> None:
    term = FitNetLoss("layer2", "block.3", weight=100.0, connector="none")
    assert term.student_taps == ["layer2"] and term.teacher_taps == ["block.3"]
    shape = torch.Size([2, 4, 8, 8])
    term.build({"": None, "layer2": shape}, {"": None, "block.3": shape})
    assert not list(term.parameters())
    fs, ft = torch.randn(shape), torch.randn(shape)
    got = term(_batch(fs, ft))
    assert got.item() == pytest.approx(100.0 * ((fs - ft) ** 2).mean().item(), rel=1e-6)


def test_term_none_connector_with_mismatched_shapes_names_everything() -> None:
    term = FitNetLoss("layer2", "block.3", connector="none")
    with pytest.raises(ValueError) as err:
        term.build({"layer2": torch.Size([2, 4, 8, 8])}, {"block.3": torch.Size([2, 16, 8, 8])})
    msg = str(err.value)
    for part in ("'layer2'", "'block.3'", "(2, 4, 8, 8)", "(2, 16, 8, 8)", "convreg"):
        assert part in msg


def test_term_convreg_builds_a_connector_and_uses_it() -> None:
    term = FitNetLoss("layer2", "block.3", weight=3.0)
    s, t = torch.Size([2, 4, 8, 8]), torch.Size([2, 6, 4, 4])
    term.build({"layer2": s}, {"block.3": t})
    assert isinstance(term.connector, ConvRegressor)
    assert type(term.connector.conv) is nn.Conv2d and term.connector.conv.stride == (2, 2)
    assert list(term.parameters())
    fs, ft = torch.randn(s, requires_grad=True), torch.randn(t)
    got = term(_batch(fs, ft))
    want = 3.0 * ((term.connector(fs) - ft) ** 2).mean()
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    got.backward()
    assert fs.grad is not None and term.connector.conv.weight.grad is not None


def test_term_convreg_with_impossible_shapes_names_both_modules() -> None:
    term = FitNetLoss("layer2", "block.3")
    with pytest.raises(ValueError, match=r"'layer2'.*\(2, 4, 3, 3\).*'block\.3'.*\(2, 6, 8, 8\)"):
        term.build({"layer2": torch.Size([2, 4, 3, 3])}, {"block.3": torch.Size([2, 6, 8, 8])})


def test_term_rejects_unknown_connector() -> None:
    with pytest.raises(ValueError, match="convreg"):
        FitNetLoss("a", "b", connector="linear")
