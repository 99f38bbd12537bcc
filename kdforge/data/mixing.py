"""Batch mixup (Zhang et al., ICLR 2018) and random erasing (Zhong et al., AAAI 2020).

Both follow torchvision's classification references (``RandomMixup``, ``RandomErasing``),
which CAKD's released recipe uses (``--mixup-alpha 0.2 --random-erase 0.1``): the same
torch global-RNG draws in the same order, so a seed gives the same result.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Dirichlet
from torch.utils.data import default_collate

from kdforge.data.transforms import RandomTransform

__all__ = ["Mixup", "MixupCollate", "RandomErasing"]

Box = tuple[int, int, int, int]  # (top, left, height, width)


class Mixup(RandomTransform):
    """Mix each image (and its one-hot label) with the previous one in the batch.

    ``x_i ← λ·x_i + (1 − λ)·x_{i−1}``, ``y_i ← λ·y_i + (1 − λ)·y_{i−1}`` (the batch rolled by
    one), ``λ ~ Beta(α, α)``, applied with probability ``p``; labels always become soft
    ``(N, K)`` targets, which ``F.cross_entropy`` (and label smoothing) accepts.

    Args:
        num_classes: ``K``.
        alpha: Beta concentration (CAKD recipe: 0.2).
        p: probability of mixing a batch (1).
    """

    def __init__(self, num_classes: int, alpha: float = 0.2, p: float = 1.0) -> None:
        if alpha <= 0 or num_classes < 1:
            raise ValueError(f"need alpha > 0 and num_classes >= 1, got {alpha}, {num_classes}")
        self.num_classes, self.alpha, self.p = num_classes, alpha, p

    def sample_params(self, batch: Any = None) -> float | None:
        """Draw ``λ``, or None when this batch is left unmixed."""
        if torch.rand(1).item() >= self.p:
            return None
        return float(Dirichlet(torch.tensor([self.alpha, self.alpha])).sample()[0])

    def apply(self, batch: tuple[Tensor, Tensor], params: float | None) -> tuple[Tensor, Tensor]:
        """``(images (N, C, H, W), labels (N,))`` -> ``(mixed images, soft labels (N, K))``."""
        images, labels = batch
        if labels.ndim == 1:
            labels = F.one_hot(labels, self.num_classes).to(images.dtype)
        if params is None:
            return images, labels
        lam = params
        images = lam * images + (1.0 - lam) * images.roll(1, 0)
        return images, lam * labels + (1.0 - lam) * labels.roll(1, 0)


class MixupCollate:
    """``collate_fn`` for a DataLoader: stack the samples, then :class:`Mixup` the batch.

    A class (not a closure) so that worker processes can pickle it.
    """

    def __init__(self, num_classes: int, alpha: float = 0.2, p: float = 1.0) -> None:
        self.mixup = Mixup(num_classes, alpha, p)

    def __call__(self, samples: list[tuple[Tensor, int]]) -> tuple[Tensor, Tensor]:
        return self.mixup(default_collate(samples))

    def __repr__(self) -> str:
        return f"MixupCollate({self.mixup!r})"


class RandomErasing(RandomTransform):
    """Erase a random rectangle of a ``(C, H, W)`` tensor with probability ``p``.

    Up to 10 draws of an area fraction in ``scale`` and a log-uniform aspect ratio in
    ``ratio``; the first box that fits is set to ``value`` (a number, per-channel numbers,
    or ``"random"`` for standard-normal noise). Applied after normalisation.

    Args:
        p: probability (CAKD recipe: 0.1).
        scale: erased area fraction range ((0.02, 0.33)).
        ratio: aspect ratio range ((0.3, 3.3)).
        value: fill value (0).
    """

    def __init__(
        self,
        p: float = 0.5,
        scale: tuple[float, float] = (0.02, 0.33),
        ratio: tuple[float, float] = (0.3, 3.3),
        value: float | Sequence[float] | str = 0.0,
    ) -> None:
        if scale[0] > scale[1] or ratio[0] > ratio[1] or not 0 <= p <= 1:
            raise ValueError(f"bad RandomErasing arguments: p={p}, scale={scale}, ratio={ratio}")
        if isinstance(value, str) and value != "random":
            raise ValueError(f"value must be a number, numbers or 'random', got {value!r}")
        self.p, self.scale, self.ratio, self.value = p, tuple(scale), tuple(ratio), value

    def sample_params(self, img: Tensor) -> tuple[Box, Tensor] | None:
        """Draw ``((top, left, height, width), fill)``, or None for no erasing."""
        if torch.rand(1) >= self.p:
            return None
        channels, height, width = img.shape[-3:]
        log_ratio = torch.log(torch.tensor(self.ratio))
        for _ in range(10):
            area = height * width * torch.empty(1).uniform_(*self.scale).item()
            aspect = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1])).item()
            h, w = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
            if not (h < height and w < width):
                continue
            if self.value == "random":
                fill = torch.empty(channels, h, w, dtype=torch.float32).normal_()
            else:
                values = [self.value] if isinstance(self.value, (int, float)) else self.value
                fill = torch.tensor(values, dtype=torch.float32)[:, None, None]
            top = int(torch.randint(0, height - h + 1, size=(1,)).item())
            left = int(torch.randint(0, width - w + 1, size=(1,)).item())
            return (top, left, h, w), fill
        return None

    def apply(self, img: Tensor, params: tuple[Box, Tensor] | None) -> Tensor:
        """Return a copy of ``img`` with the box of ``params`` filled (``img`` if None)."""
        if params is None:
            return img
        (top, left, h, w), fill = params
        out = img.clone()
        out[..., top : top + h, left : left + w] = fill.to(img.dtype)
        return out
