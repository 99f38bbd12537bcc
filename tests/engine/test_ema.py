"""Model EMA as released: adjusted decay, copy on the first update, every-N steps, warm-up."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdforge.engine.ema import ModelEMA, adjusted_ema_decay


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def _perturb(model: nn.Module, value: float) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)
        model[1].running_mean.fill_(value)


def test_adjusted_decay_as_released() -> None:
    # 8 GPUs x 32 images, every 32 steps, 120 epochs: 1 - 2e-5 * 256 * 32 / 120
    assert adjusted_ema_decay(0.99998, 256, 32, 120) == pytest.approx(1 - 2e-5 * 256 * 32 / 120)
    assert adjusted_ema_decay(0.9, 256, 32, 1) == 0.0  # alpha is capped at 1


def test_first_update_copies_then_averages_parameters_and_buffers() -> None:
    model = _model()
    ema = ModelEMA(model, decay=0.75, every=1)
    _perturb(model, 1.0)
    assert ema.step(model, 0, epoch=0)
    assert all((p == 1.0).all() for p in ema.module.parameters())
    _perturb(model, 3.0)
    ema.step(model, 1, epoch=0)
    assert all(torch.allclose(p, torch.full_like(p, 1.5)) for p in ema.module.parameters())
    assert torch.allclose(ema.module[1].running_mean, torch.full((4,), 1.5))
    assert sorted(ema.state_dict())[:2] == ["module.0.bias", "module.0.weight"]
    assert "n_averaged" in ema.state_dict()


def test_updates_every_n_steps_and_copies_during_warmup() -> None:
    model = _model()
    ema = ModelEMA(model, decay=0.5, every=32, warmup_epochs=5)
    assert [i for i in range(70) if ema.step(model, i, epoch=6)] == [0, 32, 64]
    _perturb(model, 2.0)
    ema.step(model, 0, epoch=4)  # warm-up: every update copies
    _perturb(model, 4.0)
    ema.step(model, 32, epoch=4)
    assert all((p == 4.0).all() for p in ema.module.parameters())
    _perturb(model, 0.0)
    ema.step(model, 0, epoch=5)  # the last warm-up update reset the count: copies once more
    _perturb(model, 2.0)
    ema.step(model, 32, epoch=5)  # then averages
    assert all((p == 1.0).all() for p in ema.module.parameters())


def test_the_copy_has_no_hooks_and_args_are_checked() -> None:
    model = _model()
    calls = []
    model.register_forward_hook(lambda m, i, o: calls.append(1))
    ema = ModelEMA(model, decay=0.9)
    ema.module(torch.randn(2, 3))
    assert not calls and model._forward_hooks
    with pytest.raises(ValueError, match="decay"):
        ModelEMA(model, decay=1.5)
