"""The plain-torch detection ops give the same values and gradients on CUDA as on the CPU
(float64, random inputs with samples outside the maps). Needs a GPU: skipped without one;
``benchmarks/gpu_check_detection.sh`` runs it on one."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from kdforge.models.detection.deform_conv import deform_conv2d
from kdforge.models.detection.ms_deform_attn import multi_scale_deformable_attention
from kdforge.models.detection.nms import batched_nms
from kdforge.models.detection.roi_align import roi_align_plain

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _compare(op: Callable[..., torch.Tensor], *inputs: torch.Tensor) -> None:
    """``op`` on the CPU and on CUDA: outputs and the gradients of every input agree."""
    results = []
    for device in ("cpu", "cuda"):
        leaves = [x.detach().to(device).requires_grad_(x.is_floating_point()) for x in inputs]
        out = op(*leaves)
        weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype, device=device)
        (out.flatten() * weights).sum().backward()
        results.append([out, *(x.grad for x in leaves if x.grad is not None)])
    for cpu, cuda in zip(*results, strict=True):
        torch.testing.assert_close(cuda.cpu(), cpu, rtol=1e-9, atol=1e-9)


def test_deform_conv2d_matches_on_cuda() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 9, 11, generator=g, dtype=torch.float64)
    offset = 3 * torch.randn(2, 2 * 2 * 9, 5, 6, generator=g, dtype=torch.float64)
    weight = torch.randn(6, 2, 3, 3, generator=g, dtype=torch.float64)
    bias = torch.randn(6, generator=g, dtype=torch.float64)

    def op(x, offset, weight, bias):
        return deform_conv2d(
            x, offset, weight, bias, stride=2, padding=1, groups=2, deform_groups=2
        )

    _compare(op, x, offset, weight, bias)


def test_multi_scale_deformable_attention_matches_on_cuda() -> None:
    g = torch.Generator().manual_seed(1)
    shapes = [(6, 8), (3, 4)]
    value = torch.randn(2, 6 * 8 + 3 * 4, 2, 5, generator=g, dtype=torch.float64)
    locations = 1.4 * torch.rand(2, 7, 2, 2, 3, 2, generator=g, dtype=torch.float64) - 0.2
    weights = torch.rand(2, 7, 2, 2, 3, generator=g, dtype=torch.float64)

    def op(value, locations, weights):
        return multi_scale_deformable_attention(value, shapes, locations, weights)

    _compare(op, value, locations, weights)


def test_roi_align_matches_on_cuda() -> None:
    g = torch.Generator().manual_seed(2)
    features = torch.randn(2, 3, 12, 16, generator=g, dtype=torch.float64)
    corners = 40 * torch.rand(9, 2, 2, generator=g, dtype=torch.float64) - 4
    boxes = torch.cat([corners.min(1).values, corners.max(1).values], 1)
    rois = torch.cat([torch.arange(9, dtype=torch.float64)[:, None] % 2, boxes], 1)

    def op(features, rois):
        return roi_align_plain(features, rois, 7, spatial_scale=0.5, sampling_ratio=0)

    _compare(op, features, rois)


def test_batched_nms_matches_on_cuda() -> None:
    g = torch.Generator().manual_seed(3)
    xy = 50 * torch.rand(200, 2, generator=g)
    boxes = torch.cat([xy, xy + 5 + 20 * torch.rand(200, 2, generator=g)], 1)
    scores, labels = torch.rand(200, generator=g), torch.randint(0, 3, (200,), generator=g)
    keep = batched_nms(boxes, scores, labels, 0.5)
    keep_cuda = batched_nms(boxes.cuda(), scores.cuda(), labels.cuda(), 0.5)
    assert torch.equal(keep_cuda.cpu(), keep)
