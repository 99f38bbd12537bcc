"""Grounding DINO's contrastive classification (mmdetection 3.x ``ContrastiveEmbed`` and
``convert_grounding_to_cls_scores``).

A query's logit for a text token is the dot product of their features, divided by
``sqrt(C)`` (``log_scale='auto'``) or scaled by a learnable ``exp(log_scale)``, plus a
learnable bias initialised to ``-log((1 - 0.01) / 0.01)`` (prior 0.01). Padding tokens, and the
columns past the caption up to ``max_text_len``, get ``-inf``. At evaluation a class's score is
the mean of the sigmoid scores of its tokens.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["ContrastiveEmbed", "contrastive_logits", "token_to_class_scores"]


def contrastive_logits(
    visual: Tensor,
    text: Tensor,
    text_token_mask: Tensor,
    max_text_len: int = 256,
    scale: Tensor | float = 1.0,
    bias: Tensor | float = 0.0,
) -> Tensor:
    """``(B, Q, max_text_len)`` query-token logits: ``visual @ text^T * scale + bias``,
    ``-inf`` on padding tokens and past the caption.

    Args:
        visual: ``(B, Q, C)`` query features.
        text: ``(B, T, C)`` token features, ``T <= max_text_len``.
        text_token_mask: ``(B, T)`` bool, True for real tokens.
    """
    logits = visual @ text.transpose(-1, -2) * scale + bias  # (B, Q, T)
    logits = logits.masked_fill(~text_token_mask[:, None, :], float("-inf"))
    out = logits.new_full((*logits.shape[:-1], max_text_len), float("-inf"))
    out[..., : logits.shape[-1]] = logits
    return out


class ContrastiveEmbed(nn.Module):
    """Classification by similarity to text tokens (mmdetection's ``ContrastiveEmbed``).

    Args:
        max_text_len: width of the output (token slots).
        log_scale: ``"auto"`` divides by ``sqrt(C)``; a float is the initial value of a
            learnable log-scale; None or ``"none"`` leaves the dot product unscaled.
        bias: add a learnable bias initialised to ``-log(99)`` (prior probability 0.01).
    """

    def __init__(
        self, max_text_len: int = 256, log_scale: str | float | None = None, bias: bool = False
    ) -> None:
        super().__init__()
        if not (isinstance(log_scale, float) or log_scale in ("auto", "none", None)):
            raise ValueError(
                f'log_scale must be "auto", "none", None or a float, not {log_scale!r}'
            )
        self.max_text_len = max_text_len
        self.auto_scale = log_scale == "auto"
        self.log_scale = (
            nn.Parameter(torch.tensor([log_scale])) if isinstance(log_scale, float) else None
        )
        prior = 0.01
        self.bias = nn.Parameter(torch.tensor([-math.log((1 - prior) / prior)])) if bias else None

    def forward(self, visual: Tensor, text: Tensor, text_token_mask: Tensor) -> Tensor:
        """``(B, Q, C)``, ``(B, T, C)``, ``(B, T)`` bool -> ``(B, Q, max_text_len)`` logits."""
        scale: Tensor | float = 1.0
        if self.log_scale is not None:
            scale = self.log_scale.exp()
        elif self.auto_scale:
            scale = 1.0 / math.sqrt(visual.shape[-1])
        bias = self.bias if self.bias is not None else 0.0
        return contrastive_logits(visual, text, text_token_mask, self.max_text_len, scale, bias)


def token_to_class_scores(token_scores: Tensor, positive_map: Tensor) -> Tensor:
    """Class scores from token scores: each class's mean over its tokens.

    Args:
        token_scores: ``(..., max_text_len)`` scores (sigmoid of the logits; 0 off the caption).
        positive_map: ``(num_classes, max_text_len)``, nonzero on each class's tokens.

    Returns:
        ``(..., num_classes)``.
    """
    covered = (positive_map > 0).to(token_scores.dtype)  # (C, L)
    weights = covered / covered.sum(-1, keepdim=True).clamp(min=1)
    return token_scores @ weights.T
