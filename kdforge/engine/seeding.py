"""Random streams that depend only on (seed, epoch, rank), so a resumed run draws what an
uninterrupted one would, without saving generator states."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

__all__ = ["epoch_seed", "seed_everything", "use_deterministic_algorithms"]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed every epoch starts from: crops, flips and shuffles of epoch ``epoch`` on
    process ``rank`` are the same whether or not the run stopped before it."""
    return seed + 1009 * epoch + 1_000_003 * rank


def use_deterministic_algorithms() -> None:
    """Deterministic GPU kernels (cuDNN without autotuning, cuBLAS with a fixed
    workspace), so that two runs, or a resumed and an uninterrupted one, end bit-identical
    on CUDA as they do on CPU. Costs some GPU speed; an op without a deterministic kernel
    warns instead of failing. Process-wide, and best called before CUDA is first used."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)
