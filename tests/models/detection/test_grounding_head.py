"""Grounding DINO's contrastive classification and token -> class scores, by hand."""

from __future__ import annotations

import math

import pytest
import torch

from kdforge.models.detection.grounding_head import ContrastiveEmbed, token_to_class_scores

INF = float("inf")
VISUAL = torch.tensor([[[1.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0]]])  # (1, 2 queries, 4)
TEXT = torch.tensor([[[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]])
TOKENS = torch.tensor([[True, True, False]])  # the third token is padding


def test_auto_scale_and_prior_bias():
    head = ContrastiveEmbed(max_text_len=5, log_scale="auto", bias=True)
    assert sorted(n for n, _ in head.named_parameters()) == ["bias"]
    assert head.bias.item() == pytest.approx(-4.59512, abs=1e-5)  # -log(0.99 / 0.01)
    out = head(VISUAL, TEXT, TOKENS)
    b = -math.log(99)
    # dot products [[1, 0], [0, 2]] / sqrt(4); padding and slots past the caption -inf
    expected = torch.tensor([[[0.5 + b, b, -INF, -INF, -INF], [b, 1.0 + b, -INF, -INF, -INF]]])
    torch.testing.assert_close(out, expected)
    out[..., :2].sum().backward()
    assert head.bias.grad.item() == pytest.approx(4.0)


def test_learnable_log_scale_and_no_scale():
    head = ContrastiveEmbed(max_text_len=3, log_scale=math.log(3.0))
    assert sorted(n for n, _ in head.named_parameters()) == ["log_scale"]
    torch.testing.assert_close(head(VISUAL, TEXT, TOKENS)[0, 1], torch.tensor([0.0, 6.0, -INF]))
    plain = ContrastiveEmbed(max_text_len=3)
    assert list(plain.parameters()) == []
    torch.testing.assert_close(plain(VISUAL, TEXT, TOKENS)[0, 1], torch.tensor([0.0, 2.0, -INF]))
    with pytest.raises(ValueError, match="log_scale"):
        ContrastiveEmbed(log_scale="learned")


def test_token_to_class_scores_is_the_mean_over_each_class_tokens():
    # two classes: tokens {1} and {3, 4}; map rows normalised as mmdetection's (1e-6 included)
    pmap = torch.zeros(2, 6)
    pmap[0, 1] = 1 / (1 + 1e-6)
    pmap[1, 3:5] = 1 / (2 + 1e-6)
    probs = torch.tensor([[[0.9, 0.7, 0.5, 0.2, 0.6, 0.0], [0.1, 0.1, 0.1, 1.0, 0.0, 0.0]]])
    scores = token_to_class_scores(probs, pmap)
    torch.testing.assert_close(scores, torch.tensor([[[0.7, 0.4], [0.1, 0.5]]]))


def test_padding_scores_nothing():
    head = ContrastiveEmbed(max_text_len=4, log_scale="auto", bias=True)
    probs = head(VISUAL, TEXT, TOKENS).sigmoid()
    assert torch.equal(probs[..., 2:], torch.zeros(1, 2, 2))
    pmap = torch.tensor([[0.0, 1.0, 1.0, 0.0]])  # a class over a real token and a padding one
    b = torch.sigmoid(torch.tensor(-math.log(99)))
    expected = torch.stack([b, torch.sigmoid(1.0 - torch.tensor(math.log(99)))]) / 2
    torch.testing.assert_close(token_to_class_scores(probs, pmap)[0, :, 0], expected)
