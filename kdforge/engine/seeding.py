"""Random streams that depend only on (seed, epoch, rank), so a resumed run draws what an
uninterrupted one would, without saving generator states."""

from __future__ import annotations

import random

import numpy as np
import torch

__all__ = ["epoch_seed", "seed_everything"]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed every epoch starts from: crops, flips and shuffles of epoch ``epoch`` on
    process ``rank`` are the same whether or not the run stopped before it."""
    return seed + 1009 * epoch + 1_000_003 * rank
