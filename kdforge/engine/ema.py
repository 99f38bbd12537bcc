"""Exponential moving average of the student's weights, as torchvision's references keep it.

CAKD's released recipe (``--model-ema``, torchvision ``references/classification``): every
``every = 32`` optimizer steps (batch index ``i % 32 == 0`` within the epoch),
``avg ← decay·avg + (1 − decay)·w`` over parameters *and* buffers, the first update (and
every update during the LR warm-up) copying the weights. The configured ``0.99998`` is per
image, so the per-update decay is adjusted by the images per update and the epochs
(:func:`adjusted_ema_decay`): ``1 − min(1, 2e-5 · 8·32 · 32 / 120) = 0.998635`` as released.
"""

from __future__ import annotations

from functools import partial

from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

__all__ = ["ModelEMA", "adjusted_ema_decay"]


def adjusted_ema_decay(decay: float, images_per_step: int, every: int, epochs: int) -> float:
    """Per-update decay ``1 − min(1, (1 − decay) · images_per_step · every / epochs)``.

    torchvision's adjustment (from pycls): it keeps the averaging horizon independent of
    batch size, update interval and schedule length. ``images_per_step`` is the global batch
    (processes × per-process batch).
    """
    alpha = min(1.0, (1.0 - decay) * images_per_step * every / epochs)
    return 1.0 - alpha


def _ema_average(decay: float, averaged: Tensor, current: Tensor, num_averaged: Tensor) -> Tensor:
    return decay * averaged + (1 - decay) * current


class ModelEMA(AveragedModel):
    """A moving-average copy of ``model`` (``ema.module``), updated by :meth:`step`.

    Built on ``torch.optim.swa_utils.AveragedModel`` with ``use_buffers=True`` (BN statistics
    are averaged too), like torchvision's ``ExponentialMovingAverage``; ``state_dict()`` has
    its keys (``module.*``, ``n_averaged``). The copy carries no forward hooks, so the
    Distiller's taps on ``model`` do not record the EMA model's forwards.

    Args:
        model: the student (unwrapped, not the DDP module).
        decay: per-update decay (see :func:`adjusted_ema_decay`).
        every: update every this many optimizer steps (32).
        warmup_epochs: during these epochs every update copies the weights (the LR warm-up).
    """

    def __init__(
        self, model: nn.Module, decay: float, every: int = 32, warmup_epochs: float = 0
    ) -> None:
        if not 0.0 <= decay <= 1.0 or every < 1:
            raise ValueError(f"need 0 <= decay <= 1 and every >= 1, got {decay}, {every}")
        super().__init__(model, avg_fn=partial(_ema_average, decay), use_buffers=True)
        self.decay, self.every, self.warmup_epochs = decay, every, warmup_epochs
        for m in self.module.modules():  # deepcopy kept the model's hooks (e.g. feature taps)
            m._forward_hooks.clear()
            m._forward_pre_hooks.clear()

    def step(self, model: nn.Module, iteration: int, epoch: int) -> bool:
        """Call after each optimizer step with the batch index within the epoch (0-based) and
        the epoch; updates on ``iteration % every == 0``. Returns whether it updated."""
        if iteration % self.every:
            return False
        self.update_parameters(model)
        if epoch < self.warmup_epochs:
            self.n_averaged.fill_(0)  # the next update copies the weights again
        return True

    def extra_repr(self) -> str:
        return f"decay={self.decay:g}, every={self.every}, warmup_epochs={self.warmup_epochs:g}"
