"""CdnQueryGenerator: group counts, query layout, noise bands and the attention mask."""

from __future__ import annotations

import pytest
import torch

from kdforge.models.detection.boxes import cxcywh_to_xyxy
from kdforge.models.detection.dino_denoising import (
    CdnQueryGenerator,
    denoising_attn_mask,
    target_img_shapes,
)


def _targets() -> list[dict]:
    """Image A (H 100, W 200) with one box, image B (H 50, W 100) with two."""
    return [
        {
            "boxes": torch.tensor([[50.0, 25.0, 150.0, 75.0]]),
            "labels": torch.tensor([3]),
            "img_shape": (100, 200),
        },
        {
            "boxes": torch.tensor([[10.0, 10.0, 30.0, 40.0], [60.0, 5.0, 90.0, 45.0]]),
            "labels": torch.tensor([1, 2]),
            "img_shape": (50, 100),
        },
    ]


def test_attention_mask_on_a_hand_case() -> None:
    # m = 1 box, 2 groups (4 denoising queries), 3 matching queries; 1 = blocked
    expected = [
        [0, 0, 1, 1, 0, 0, 0],
        [0, 0, 1, 1, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0],
    ]
    assert denoising_attn_mask(1, 2, 3).int().tolist() == expected


def test_group_counts() -> None:
    dynamic = CdnQueryGenerator(5, 8, 10, group_cfg={"dynamic": True, "num_dn_queries": 100})
    assert [dynamic.groups_for(m) for m in (0, 1, 2, 3, 30, 100, 101)] == [1, 100, 50, 33, 3, 1, 1]
    static = CdnQueryGenerator(5, 8, 10, group_cfg={"dynamic": False, "num_groups": 4})
    assert static.groups_for(7) == 4
    with pytest.raises(ValueError, match="num_groups"):
        CdnQueryGenerator(5, 8, 10, group_cfg={"dynamic": False})
    with pytest.raises(ValueError, match="group_cfg keys"):
        CdnQueryGenerator(5, 8, 10, group_cfg={"num_query": 3})


def test_query_layout_without_noise_effects() -> None:
    # box noise tiny and label noise almost never: queries reproduce the ground truth
    torch.manual_seed(0)
    gen = CdnQueryGenerator(
        5, 8, 4, label_noise_scale=1e-9, box_noise_scale=1e-6, group_cfg={"num_dn_queries": 4}
    )
    label_q, bbox_q, mask, meta = gen(_targets(), (999, 999))
    assert meta == {"num_denoising_queries": 8, "num_denoising_groups": 2}  # m=2, G=4//2
    assert label_q.shape == (2, 8, 8) and bbox_q.shape == (2, 8, 4) and mask.shape == (12, 12)
    emb = gen.label_embedding.weight
    # image A: [pos A0, pad, neg A0, pad] x 2 groups; image B: [B0, B1, B0, B1] x 2
    a_box = torch.tensor([0.5, 0.5, 0.5, 0.5])  # (50..150)/200, (25..75)/100 in cxcywh
    b_boxes = torch.tensor([[0.2, 0.5, 0.2, 0.6], [0.75, 0.5, 0.3, 0.8]])
    for slot in range(8):
        if slot % 2 == 0:
            torch.testing.assert_close(label_q[0, slot], emb[3])
            torch.testing.assert_close(bbox_q[0, slot].sigmoid(), a_box, atol=1e-5, rtol=0)
        else:  # padding
            assert label_q[0, slot].abs().sum() == 0 and bbox_q[0, slot].abs().sum() == 0
        torch.testing.assert_close(label_q[1, slot], emb[1 + slot % 2])
        torch.testing.assert_close(bbox_q[1, slot].sigmoid(), b_boxes[slot % 2], atol=1e-5, rtol=0)


def test_box_noise_bands() -> None:
    torch.manual_seed(1)
    gen = CdnQueryGenerator(5, 8, 4, box_noise_scale=0.4, group_cfg={"num_dn_queries": 60})
    target = {"boxes": torch.tensor([[40.0, 30.0, 60.0, 70.0]]), "labels": torch.tensor([0])}
    _, bbox_q, _, meta = gen([target], (100, 100))
    groups = meta["num_denoising_groups"]
    assert groups == 60 and bbox_q.shape == (1, 120, 4)
    corners = cxcywh_to_xyxy(bbox_q[0].sigmoid())  # (120, 4) normalised xyxy
    gt = torch.tensor([0.4, 0.3, 0.6, 0.7])
    half = torch.tensor([0.2, 0.4, 0.2, 0.4]) * 0.4 / 2  # box_noise_scale * (w, h) / 2
    shift = (corners - gt).abs() / half  # in units of the positive band
    positive, negative = shift[0::2], shift[1::2]
    assert positive.max() < 1 + 1e-3
    assert negative.min() > 1 - 1e-3 and negative.max() < 2 + 1e-3
    # both signs and a spread within each band are drawn
    signs = (corners - gt).sign()
    assert (signs > 0).any() and (signs < 0).any()
    assert positive.min() < 0.2 and negative.min() < 1.2 and negative.max() > 1.8


def test_label_noise_rate() -> None:
    torch.manual_seed(2)
    gen = CdnQueryGenerator(4, 8, 4, label_noise_scale=0.5, group_cfg={"num_dn_queries": 100})
    labels = torch.zeros(2000, dtype=torch.long)
    noisy = gen.noisy_labels(labels, num_groups=1)
    assert noisy.shape == (4000,)
    # chosen with probability 0.25, replaced by a uniform class of 4 (0 included): 3/16 change
    assert abs((noisy != 0).float().mean().item() - 3 / 16) < 0.02
    assert set(noisy.unique().tolist()) == {0, 1, 2, 3}


def test_no_boxes_in_the_batch() -> None:
    gen = CdnQueryGenerator(3, 8, 5, group_cfg={"num_dn_queries": 100})
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    label_q, bbox_q, mask, meta = gen([empty, empty], (32, 32))
    assert label_q.shape == (2, 0, 8) and bbox_q.shape == (2, 0, 4)
    assert meta == {"num_denoising_queries": 0, "num_denoising_groups": 1}
    assert mask.shape == (5, 5) and not mask.any()


def test_img_shape_wins_over_the_padded_size() -> None:
    targets = [{"img_shape": (30, 40)}, {}]
    assert target_img_shapes(targets, (64, 64)) == [(30, 40), (64, 64)]
