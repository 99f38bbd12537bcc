"""RoIAlign in plain torch against hand-computed cases (tests/interop/ compares it with
torchvision's kernel, values and gradients)."""

from __future__ import annotations

import torch

from kdforge.models.detection.roi_align import roi_align_plain


def linear_map(height: int, width: int) -> torch.Tensor:
    """f(y, x) = 3x - 2y + 1 on pixel centres (pixel (i, j) holds f(i, j))."""
    y, x = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return (3.0 * x - 2.0 * y + 1.0)[None, None].double()


def test_bins_of_a_linear_map_are_its_values_at_the_bin_centres():
    """Bilinear sampling is exact on a linear map and the samples are symmetric in a bin,
    so each bin is f at its centre: x = x1 * scale - 0.5 + (j + 0.5) * bin_w (aligned)."""
    features = linear_map(40, 50)
    box = torch.tensor([[0.0, 24.0, 16.0, 136.0, 72.0]], dtype=torch.float64)  # image pixels
    out = roi_align_plain(features, box, (2, 4), spatial_scale=0.25, aligned=True)
    x1, y1, bin_w, bin_h = 24 * 0.25 - 0.5, 16 * 0.25 - 0.5, (136 - 24) * 0.25 / 4, 14 / 2
    for i in range(2):
        for j in range(4):
            cx, cy = x1 + (j + 0.5) * bin_w, y1 + (i + 0.5) * bin_h
            assert abs(out[0, 0, i, j].item() - (3 * cx - 2 * cy + 1)) < 1e-9


def test_unaligned_boxes_are_not_shifted():
    features = linear_map(20, 20)
    box = torch.tensor([[0.0, 4.0, 4.0, 12.0, 12.0]], dtype=torch.float64)
    out = roi_align_plain(features, box, 1, spatial_scale=1.0, aligned=False)
    assert abs(out.item() - (3 * 8 - 2 * 8 + 1)) < 1e-9  # centre (8, 8), no -0.5


def test_the_adaptive_grid_is_ceil_of_the_bin_size():
    """A 14x10 RoI in 7x5 bins has 2x2 samples per bin: the same as sampling_ratio=2, and
    not the same as 1 sample."""
    features = torch.randn(1, 3, 30, 30, dtype=torch.float64)
    box = torch.tensor([[0.0, 3.25, 4.125, 13.25, 18.125]], dtype=torch.float64)
    adaptive = roi_align_plain(features, box, (7, 5), sampling_ratio=0)
    assert torch.allclose(adaptive, roi_align_plain(features, box, (7, 5), sampling_ratio=2))
    assert not torch.allclose(adaptive, roi_align_plain(features, box, (7, 5), sampling_ratio=1))


def test_rois_outside_the_map_and_empty_rois_pool_to_zero():
    features = torch.randn(2, 4, 10, 10, dtype=torch.float64) + 5
    rois = torch.tensor(
        [
            [0.0, 30.0, 30.0, 40.0, 40.0],  # more than one pixel beyond the map
            [1.0, 5.0, 5.0, 5.0, 5.0],  # zero size (aligned): no samples
            [1.0, 2.0, 2.0, 6.0, 6.0],  # inside
        ],
        dtype=torch.float64,
    )
    out = roi_align_plain(features, rois, 3)
    assert torch.equal(out[:2], torch.zeros_like(out[:2]))
    assert out[2].abs().min() > 0


def test_each_roi_reads_its_own_image():
    features = torch.stack([torch.full((1, 6, 6), 1.0), torch.full((1, 6, 6), 2.0)])
    rois = torch.tensor([[1.0, 1, 1, 4, 4], [0.0, 1, 1, 4, 4]])
    assert roi_align_plain(features, rois, 2).flatten(1).mean(1).tolist() == [2.0, 1.0]


def test_gradients_are_those_of_the_sampling():
    features = torch.randn(1, 2, 8, 9, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0.0, -3.0, 1.5, 40.0, 30.0], [0.0, 8.0, 8.0, 20.0, 16.0]]).double()
    assert torch.autograd.gradcheck(lambda f: roi_align_plain(f, rois, 3, 0.25), (features,))


def test_only_empty_rois_and_no_rois():
    features = torch.randn(1, 3, 8, 8)
    empty = torch.tensor([[0.0, 2.0, 2.0, 2.0, 2.0]])
    assert torch.equal(roi_align_plain(features, empty, 2), torch.zeros(1, 3, 2, 2))
    assert roi_align_plain(features, torch.zeros(0, 5), 2).shape == (0, 3, 2, 2)
