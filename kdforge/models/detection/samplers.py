"""mmdetection's ``RandomSampler``: a fixed number of training samples per image.

Two-stage detectors train on a random subset of the assigned priors: at most
``int(num * pos_fraction)`` positives (``gt_inds > 0``) and negatives (``gt_inds == 0``)
for the rest, each drawn with ``torch.randperm`` from torch's global generator, so that
``torch.manual_seed`` (per process under DDP) makes the draw reproducible. With
``add_gt_as_proposals`` the ground-truth boxes are prepended to the priors as positives
of themselves before sampling (the R-CNN stage; the RPN does not add them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["SamplingResult", "random_sample"]


@dataclass
class SamplingResult:
    """The sampled priors of one image, positives first (mmdetection's ``SamplingResult``).

    Attributes:
        pos_inds, neg_inds: sorted indices into ``priors`` (gt boxes first when added).
        priors: ``(P', 4)`` the priors sampled from, with the added ground truths.
        pos_gt_inds: ``(num_pos,)`` 0-based box index of each positive.
        avg_factor: ``max(num_pos, 1) + max(num_neg, 1)``, mmdetection's loss normaliser.
    """

    pos_inds: Tensor
    neg_inds: Tensor
    priors: Tensor
    pos_gt_inds: Tensor

    @property
    def avg_factor(self) -> int:
        return max(self.pos_inds.numel(), 1) + max(self.neg_inds.numel(), 1)

    @property
    def sampled_priors(self) -> Tensor:
        """``(num_pos + num_neg, 4)``: the positive priors, then the negative ones."""
        return torch.cat((self.priors[self.pos_inds], self.priors[self.neg_inds]))


def _choose(candidates: Tensor, num: int) -> Tensor:
    """All of ``candidates`` if there are at most ``num``, else ``num`` drawn at random."""
    if candidates.numel() <= num:
        return candidates
    perm = torch.randperm(candidates.numel())[:num].to(candidates.device)
    return candidates[perm]


def random_sample(
    priors: Tensor,
    gt_inds: Tensor,
    gt_boxes: Tensor,
    num: int,
    pos_fraction: float,
    add_gt_as_proposals: bool,
) -> SamplingResult:
    """Sample ``num`` priors of one image (mmdetection ``RandomSampler``, ``neg_pos_ub=-1``).

    Args:
        priors: ``(P, 4)`` anchors or proposals.
        gt_inds: ``(P,)`` assignment (-1 ignored, 0 negative, ``i + 1`` box ``i``).
        gt_boxes: ``(G, 4)`` ground-truth boxes.
        num: samples per image (RPN 256, R-CNN 512).
        pos_fraction: largest share of positives (RPN 0.5, R-CNN 0.25).
        add_gt_as_proposals: prepend ``gt_boxes`` to the priors as positives (when ``G > 0``).
    """
    if add_gt_as_proposals and gt_boxes.shape[0] > 0:
        gt_range = torch.arange(1, gt_boxes.shape[0] + 1, device=gt_inds.device)
        priors = torch.cat((gt_boxes.to(priors.dtype), priors))
        gt_inds = torch.cat((gt_range, gt_inds))
    positives = _choose((gt_inds > 0).nonzero().squeeze(1), int(num * pos_fraction)).unique()
    negatives = _choose((gt_inds == 0).nonzero().squeeze(1), num - positives.numel()).unique()
    return SamplingResult(positives, negatives, priors, gt_inds[positives] - 1)
