"""The torchvision ops kdforge reimplements equal torchvision's on the CPU."""

from __future__ import annotations

import pytest
import torch
import torchvision

from kdforge.models.detection import nms as nms_module
from kdforge.models.detection import roi_align as roi_align_module
from kdforge.models.detection.deform_conv import deform_conv2d
from kdforge.models.detection.roi_align import roi_align_plain


def random_boxes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 200
    wh = torch.rand(n, 2, generator=g) * 60 + 1
    boxes = torch.cat([xy, xy + wh], 1)
    scores = torch.randperm(n, generator=g).float() / n  # distinct: one valid order
    labels = torch.randint(0, 5, (n,), generator=g)
    return boxes, scores, labels


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("seed", range(3))
def test_plain_torch_nms_equals_torchvision(monkeypatch, threshold, seed):
    boxes, scores, labels = random_boxes(500, seed)
    expected = torchvision.ops.nms(boxes, scores, threshold)
    assert torch.equal(nms_module.nms(boxes, scores, threshold), expected)
    monkeypatch.setattr(nms_module, "_tv_batched_nms", None)  # force the plain-torch path
    expected = torchvision.ops.batched_nms(boxes, scores, labels, threshold)
    assert torch.equal(nms_module.batched_nms(boxes, scores, labels, threshold), expected)


def test_nms_uses_torchvision_when_it_imports():
    assert nms_module._tv_batched_nms is torchvision.ops.batched_nms


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_plain_roi_align_equals_torchvision(aligned, sampling_ratio):
    """Forward and backward on random RoIs, many partly or wholly outside the map, a
    zero-size one and a large one (adaptive grids of several sizes in one call)."""
    g = torch.Generator().manual_seed(sampling_ratio + 10 * aligned)
    features = torch.randn(2, 16, 25, 38, generator=g, requires_grad=True)
    xy = torch.rand(300, 2, generator=g) * 360 - 40
    wh = torch.rand(300, 2, generator=g) * 160
    batch = torch.randint(0, 2, (300, 1), generator=g).float()
    rois = torch.cat([batch, xy, xy + wh], 1)
    rois[0, 1:] = torch.tensor([50.0, 60.0, 50.0, 60.0])  # zero size
    rois[1, 1:] = torch.tensor([-20.0, -20.0, 330.0, 220.0])  # larger than the map
    args = ((7, 7), 1 / 8, sampling_ratio, aligned)
    ours = roi_align_plain(features, rois, *args)
    reference = torchvision.ops.roi_align(features, rois, *args)
    assert (ours - reference).abs().max() <= 1e-5
    upstream = torch.randn(reference.shape, generator=g)
    (grad_ours,) = torch.autograd.grad((ours * upstream).sum(), features)
    (grad_ref,) = torch.autograd.grad((reference * upstream).sum(), features)
    assert (grad_ours - grad_ref).abs().max() <= 1e-5


def test_roi_align_uses_torchvision_when_it_imports():
    assert roi_align_module._tv_roi_align is torchvision.ops.roi_align


@pytest.mark.parametrize(
    "groups, deform_groups, stride, dilation",
    [(1, 1, 1, 1), (1, 2, 1, 1), (2, 1, 1, 1), (2, 2, 2, 1), (1, 2, 1, 2), (2, 1, 2, 2)],
)
def test_plain_deform_conv_equals_torchvision(groups, deform_groups, stride, dilation):
    """Values and gradients of input, offset, weight and bias; offsets of up to a few
    pixels (plus one column pushed 20 pixels out) take many samples outside the map."""
    g = torch.Generator().manual_seed(groups + 10 * deform_groups + 100 * stride + dilation)
    x = torch.randn(2, 8, 11, 13, generator=g)
    weight = torch.randn(6, 8 // groups, 3, 3, generator=g) / (72 / groups) ** 0.5
    bias = torch.randn(6, generator=g)
    out_h, out_w = ((s + 2 - 2 * dilation - 1) // stride + 1 for s in (11, 13))
    offset = torch.randn(2, 2 * deform_groups * 9, out_h, out_w, generator=g) * 3
    offset[:, :, :, 0] += 20.0
    tensors = [t.requires_grad_() for t in (x, offset, weight, bias)]
    args = (stride, 1, dilation)
    ours = deform_conv2d(*tensors, *args, groups, deform_groups)
    reference = torchvision.ops.deform_conv2d(*tensors, *args)
    assert (ours - reference).abs().max() <= 1e-5
    upstream = torch.randn(reference.shape, generator=g) / 10
    grads_ours = torch.autograd.grad((ours * upstream).sum(), tensors)
    grads_ref = torch.autograd.grad((reference * upstream).sum(), tensors)
    for mine, theirs in zip(grads_ours, grads_ref, strict=True):
        assert (mine - theirs).abs().max() <= 1e-5
