"""MGD against a hand computation with a seeded mask (mmrazor's MGDLoss + MGDConnector)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdforge.distiller import Distiller
from kdforge.losses import TERMS, MGDLoss, mgd_loss
from kdforge.losses.mgd import MGDConnector, mgd_mask


def test_mask_zeroes_a_fraction_lambda_of_positions_shared_over_channels():
    torch.manual_seed(0)
    mask = mgd_mask(torch.zeros(4, 3, 50, 50), lambda_mgd=0.65)
    assert mask.shape == (4, 1, 50, 50) and set(mask.unique().tolist()) <= {0.0, 1.0}
    assert abs((1 - mask).mean().item() - 0.65) < 0.02
    torch.manual_seed(0)
    assert torch.equal(mask, (torch.rand(4, 1, 50, 50) <= 0.35).float())


def test_loss_is_alpha_times_sum_of_squares_over_batch():
    s, t = torch.randn(3, 4, 5, 6), torch.randn(3, 4, 5, 6)
    expected = 2e-5 * ((s - t) ** 2).sum() / 3
    torch.testing.assert_close(mgd_loss(s, t), expected)
    with pytest.raises(ValueError, match="equal shapes"):
        mgd_loss(s, t[:, :2])


@pytest.mark.parametrize("channels", [(8, 8), (4, 8)])
def test_term_matches_a_hand_computation_with_a_seeded_mask(channels: tuple[int, int]):
    c_s, c_t = channels
    term = TERMS["mgd"](["feat"], weight=1e-3, lambda_mgd=0.5)
    term.build({"feat": torch.Size([2, c_s, 5, 7])}, {"feat": torch.Size([2, c_t, 5, 7])})
    connector = term.connectors[0]
    assert (connector.align is None) == (c_s == c_t)
    s, t = torch.randn(2, c_s, 5, 7), torch.randn(2, c_t, 5, 7)
    batch = type("B", (), {"student_features": {"feat": s}, "teacher_features": {"feat": t}})
    torch.manual_seed(1)
    value = term(batch)["feat"]
    torch.manual_seed(1)
    keep = (torch.rand(2, 1, 5, 7) <= 0.5).float()
    x = s if connector.align is None else F.conv2d(s, connector.align.weight, connector.align.bias)
    gen = connector.generation
    hidden = F.relu(F.conv2d(x * keep, gen[0].weight, gen[0].bias, padding=1))
    y = F.conv2d(hidden, gen[2].weight, gen[2].bias, padding=1)
    torch.testing.assert_close(value, 1e-3 * ((y - t) ** 2).sum() / 2)


def test_parameter_names_match_mmrazor():
    names = [k for k, _ in MGDConnector(4, 8).named_parameters()]
    assert names == [
        "align.weight",
        "align.bias",
        "generation.0.weight",
        "generation.0.bias",
        "generation.2.weight",
        "generation.2.bias",
    ]


def test_term_trains_the_generator_and_student_not_the_teacher():
    torch.manual_seed(2)
    teacher = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 1))
    student = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 1))
    term = MGDLoss(["0"], ["0"])
    x = torch.randn(2, 3, 6, 6)
    _, losses = Distiller(teacher, student, {"mgd": term}, example_input=x).train()(x, None)
    losses["mgd.0"].backward()
    assert student[0].weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in term.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    with pytest.raises(ValueError, match="equal stride"):
        MGDLoss(["a"]).build({"a": torch.Size([2, 4, 6, 6])}, {"a": torch.Size([2, 4, 3, 3])})
