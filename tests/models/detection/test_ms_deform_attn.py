"""Multi-scale deformable attention against a direct per-point bilinear computation."""

from __future__ import annotations

import math

import pytest
import torch

from kdforge.models.detection.ms_deform_attn import (
    MultiScaleDeformableAttention,
    multi_scale_deformable_attention,
)

SHAPES = [(4, 5), (2, 3)]


def _bilinear(img: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``img`` (D, h, w) at continuous pixel coordinates; corners outside count as 0."""
    _, h, w = img.shape
    x0, y0 = math.floor(x.item()), math.floor(y.item())
    out = img.new_zeros(img.shape[0])
    for cx, cy in ((x0, y0), (x0 + 1, y0), (x0, y0 + 1), (x0 + 1, y0 + 1)):
        if 0 <= cx < w and 0 <= cy < h:
            out = out + img[:, cy, cx] * (1 - (x - cx).abs()) * (1 - (y - cy).abs())
    return out


def _reference(value, shapes, locations, weights):
    n, _, heads, dims = value.shape
    _, q, _, _, points, _ = locations.shape
    starts = [0]
    for h, w in shapes:
        starts.append(starts[-1] + h * w)
    rows = []
    for b in range(n):
        for i in range(q):
            per_head = []
            for m in range(heads):
                acc = value.new_zeros(dims)
                for lvl, (h, w) in enumerate(shapes):
                    img = value[b, starts[lvl] : starts[lvl + 1], m].T.reshape(dims, h, w)
                    for p in range(points):
                        # align_corners=False: location 0 / 1 is the outer edge of the border
                        x = locations[b, i, m, lvl, p, 0] * w - 0.5
                        y = locations[b, i, m, lvl, p, 1] * h - 0.5
                        acc = acc + weights[b, i, m, lvl, p] * _bilinear(img, x, y)
                per_head.append(acc)
            rows.append(torch.cat(per_head))
    return torch.stack(rows).view(n, q, heads * dims)


def _inputs(n=2, q=3, heads=2, dims=3, points=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = sum(h * w for h, w in SHAPES)
    value = torch.randn(n, s, heads, dims, generator=g, dtype=torch.float64)
    # some points fall outside [0, 1] to exercise the zero padding
    loc = torch.rand(n, q, heads, len(SHAPES), points, 2, generator=g, dtype=torch.float64)
    loc = loc * 1.4 - 0.2
    weights = torch.rand(n, q, heads, len(SHAPES), points, generator=g, dtype=torch.float64)
    return [t.requires_grad_() for t in (value, loc, weights)]


def test_matches_per_point_bilinear_values_and_gradients() -> None:
    value, loc, weights = _inputs()
    out = multi_scale_deformable_attention(value, SHAPES, loc, weights)
    ref = _reference(value, SHAPES, loc, weights)
    assert out.shape == (2, 3, 6)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (value, loc, weights), grad)
    want = torch.autograd.grad(ref, (value, loc, weights), grad)
    for g, w in zip(got, want, strict=True):
        assert w.abs().max() > 0
        torch.testing.assert_close(g, w, atol=1e-5, rtol=0)


def test_spatial_shapes_as_tensor_and_size_check() -> None:
    value, loc, weights = _inputs()
    a = multi_scale_deformable_attention(value, torch.tensor(SHAPES), loc, weights)
    torch.testing.assert_close(a, multi_scale_deformable_attention(value, SHAPES, loc, weights))
    with pytest.raises(ValueError, match="positions"):
        multi_scale_deformable_attention(value, [(4, 5), (2, 2)], loc, weights)


def test_chunked_equals_unchunked_with_gradients() -> None:
    value, loc, weights = _inputs(q=7)
    full = multi_scale_deformable_attention(value, SHAPES, loc, weights)
    # per query: 2 images * 2 heads * 3 dims * 2 levels * 2 points * 8 bytes = 384 bytes
    chunked = multi_scale_deformable_attention(value, SHAPES, loc, weights, max_sampled_bytes=800)
    torch.testing.assert_close(chunked, full, atol=1e-12, rtol=0)
    grad = torch.randn_like(full)
    want = torch.autograd.grad(full, (value, loc, weights), grad)
    got = torch.autograd.grad(chunked, (value, loc, weights), grad)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-12, rtol=0)


def test_module_init_and_reference_forms() -> None:
    torch.manual_seed(0)
    attn = MultiScaleDeformableAttention(
        16, 4, num_levels=2, num_points=3, batch_first=True, dropout=0.0
    )
    bias = attn.sampling_offsets.bias.view(4, 2, 3, 2)
    # head 0 looks along +x, head 1 along +y; the third point three steps out
    torch.testing.assert_close(bias[0, 1, 2], torch.tensor([3.0, 0.0]))
    torch.testing.assert_close(bias[1, 0, 0], torch.tensor([0.0, 1.0]), atol=1e-6, rtol=0)
    assert attn.attention_weights.weight.abs().sum() == 0
    s = sum(h * w for h, w in SHAPES)
    query, value = torch.randn(2, 5, 16), torch.randn(2, s, 16)
    ref2 = torch.rand(2, 5, 2, 2)
    out = attn(query, value, reference_points=ref2, spatial_shapes=SHAPES)
    assert out.shape == (2, 5, 16)
    attn.batch_first = False
    out_t = attn(
        query.transpose(0, 1), value.transpose(0, 1), reference_points=ref2, spatial_shapes=SHAPES
    )
    torch.testing.assert_close(out_t.transpose(0, 1), out)
    with pytest.raises(ValueError, match="2 or 4"):
        attn(query.transpose(0, 1), reference_points=torch.rand(2, 5, 2, 3), spatial_shapes=SHAPES)


def test_box_references_scale_offsets_by_box_size() -> None:
    torch.manual_seed(0)
    attn = MultiScaleDeformableAttention(
        8, 2, num_levels=1, num_points=2, batch_first=True, dropout=0.0
    )
    shapes = [(6, 8)]
    value = torch.randn(1, 48, 8)
    query = torch.randn(1, 3, 8)
    centres = torch.rand(1, 3, 1, 2) * 0.5 + 0.25
    # box (w, h) = 2 * points * (1/8, 1/6): box offsets equal point offsets in level pixels
    wh = torch.tensor([2 * 2 / 8, 2 * 2 / 6]).expand(1, 3, 1, 2)
    boxes = attn(query, value, reference_points=torch.cat([centres, wh], -1), spatial_shapes=shapes)
    points = attn(query, value, reference_points=centres, spatial_shapes=shapes)
    torch.testing.assert_close(boxes, points)


def test_padding_mask_zeroes_values() -> None:
    torch.manual_seed(0)
    attn = MultiScaleDeformableAttention(
        8, 2, num_levels=1, num_points=2, batch_first=True, dropout=0.0
    )
    shapes = [(3, 3)]
    value = torch.randn(1, 9, 8)
    mask = torch.zeros(1, 9, dtype=torch.bool)
    mask[0, 4] = True
    ref = torch.rand(1, 2, 1, 2)
    query = torch.randn(1, 2, 8)
    masked = attn(query, value, reference_points=ref, spatial_shapes=shapes, key_padding_mask=mask)
    changed = value.clone()
    changed[0, 4] = 100.0
    again = attn(query, changed, reference_points=ref, spatial_shapes=shapes, key_padding_mask=mask)
    torch.testing.assert_close(masked, again)
    unmasked = attn(query, changed, reference_points=ref, spatial_shapes=shapes)
    assert not torch.allclose(unmasked, masked)  # position 4 is sampled


def test_bfloat16_values_are_sampled_in_float32() -> None:
    # on a 200-wide level a bfloat16 location near 1 would be off by up to 0.8 pixel
    g = torch.Generator().manual_seed(0)
    value = torch.randn(1, 2 * 200, 1, 4, generator=g).bfloat16()
    loc = torch.rand(1, 16, 1, 1, 1, 2, generator=g) * 0.2 + 0.8
    weights = torch.ones(1, 16, 1, 1, 1)
    out = multi_scale_deformable_attention(value, [(2, 200)], loc, weights)
    assert out.dtype == torch.bfloat16
    want = multi_scale_deformable_attention(value.float(), [(2, 200)], loc, weights)
    torch.testing.assert_close(out.float(), want, atol=2e-2, rtol=1e-2)
