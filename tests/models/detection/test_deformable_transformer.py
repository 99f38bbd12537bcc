"""DINO's deformable transformer, neck, encodings and detector assembly (mmdetection 3.x)."""

from __future__ import annotations

import math

import pytest
import torch

from kdforge.models.detection.boxes import inverse_sigmoid
from kdforge.models.detection.channel_mapper import ChannelMapper
from kdforge.models.detection.deformable_transformer import (
    DeformableDetrTransformerEncoder,
    DinoTransformerDecoder,
)
from kdforge.models.detection.dino import build_dino
from kdforge.models.detection.positional_encoding import (
    SinePositionalEncoding,
    coordinate_to_encoding,
)

TINY = {
    "num_queries": 12,
    "num_encoder_layers": 1,
    "num_decoder_layers": 2,
    "feedforward_channels": 64,
    "embed_dims": 64,
    "num_dn_queries": 6,
}


def _tiny(**kwargs):
    torch.manual_seed(0)
    return build_dino(18, 3, **{**TINY, **kwargs})


def test_encoder_reference_points_hand_case() -> None:
    # one image; level 0 is 2x2 with valid (w, h) = (1.0, 0.5), level 1 is 1x2 with (0.5, 1.0)
    ratios = torch.tensor([[[1.0, 0.5], [0.5, 1.0]]])
    ref = DeformableDetrTransformerEncoder.get_encoder_reference_points([(2, 2), (1, 2)], ratios)
    assert ref.shape == (1, 6, 2, 2)
    # level-0 centres (x, y) / (w * 1.0, h * 0.5): (0.25, 0.5), (0.75, 0.5), (0.25, 1.5) ...
    # level-1 centres (x, y) / (w * 0.5, h * 1.0): (0.5, 0.5), (1.5, 0.5)
    base = torch.tensor(
        [[0.25, 0.5], [0.75, 0.5], [0.25, 1.5], [0.75, 1.5], [0.5, 0.5], [1.5, 0.5]]
    )
    # each point seen from each level: times that level's valid ratio
    torch.testing.assert_close(ref[0, :, 0], base * torch.tensor([1.0, 0.5]))
    torch.testing.assert_close(ref[0, :, 1], base * torch.tensor([0.5, 1.0]))
    torch.testing.assert_close(ref[0, 4, 1], torch.tensor([0.25, 0.5]))


def test_coordinate_encoding_hand_values() -> None:
    # num_feats 2: frequencies [1, 1]; x = 0.25 -> angle pi/2, y = 0.5 -> angle pi
    enc = coordinate_to_encoding(torch.tensor([[0.25, 0.5]]), num_feats=2)
    torch.testing.assert_close(enc, torch.tensor([[0.0, -1.0, 1.0, 0.0]]), atol=1e-6, rtol=0)
    box = coordinate_to_encoding(torch.tensor([[0.25, 0.5, 0.5, 0.25]]), num_feats=2)
    torch.testing.assert_close(box[:, 4:], torch.tensor([[0.0, -1.0, 1.0, 0.0]]), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="2 or 4"):
        coordinate_to_encoding(torch.zeros(1, 3))


def test_sine_encoding_is_mask_aware() -> None:
    pe = SinePositionalEncoding(8, temperature=20, normalize=True)
    mask = torch.ones(1, 5, 7, dtype=torch.bool)
    mask[:, :3, :4] = False
    padded = pe(mask)
    alone = pe(torch.zeros(1, 3, 4, dtype=torch.bool))
    assert padded.shape == (1, 16, 5, 7)
    torch.testing.assert_close(padded[:, :, :3, :4], alone)
    # normalised: the last valid row and column reach 2 * pi (y channels first)
    torch.testing.assert_close(
        alone[0, 0, -1, 0], torch.tensor(math.sin(2 * math.pi)), atol=1e-4, rtol=0
    )


def test_channel_mapper_extra_level_from_the_last_input() -> None:
    neck = ChannelMapper([8, 16, 32], 32, num_groups=4, num_outs=4)
    keys = set(neck.state_dict())
    assert "convs.2.conv.weight" in keys and "convs.2.conv.bias" not in keys
    assert {"extra_convs.0.conv.weight", "extra_convs.0.gn.weight", "extra_convs.0.gn.bias"} <= keys
    assert neck.extra_convs[0].conv.in_channels == 32 and neck.extra_convs[0].conv.stride == (2, 2)
    outs = neck([torch.randn(2, c, 16 // 2**i, 16 // 2**i) for i, c in enumerate([8, 16, 32])])
    assert [tuple(o.shape[-2:]) for o in outs] == [(16, 16), (8, 8), (4, 4), (2, 2)]


def test_decoder_self_attention_mask_blocks_queries() -> None:
    torch.manual_seed(0)
    dec = DinoTransformerDecoder(2, embed_dims=32, feedforward_channels=32, num_levels=1).eval()
    reg = torch.nn.ModuleList(torch.nn.Linear(32, 4) for _ in range(2))
    query, value = torch.randn(1, 4, 32), torch.randn(1, 16, 32)
    ref = torch.rand(1, 4, 4) * 0.5 + 0.25
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[:2, 2:] = True  # queries 0, 1 may not look at 2, 3
    ratios = torch.ones(1, 1, 2)
    args = (None, mask, ref, [(4, 4)], ratios, reg)
    out, refs = dec(query, value, *args)
    assert out.shape == (2, 1, 4, 32) and refs.shape == (3, 1, 4, 4)
    changed = query.clone()
    changed[0, 3] += 1.0
    out2, _ = dec(changed, value, *args)
    torch.testing.assert_close(out2[:, :, :2], out[:, :, :2])
    assert not torch.allclose(out2[:, :, 2:], out[:, :, 2:])
    unmasked, _ = dec(changed, value, None, None, ref, [(4, 4)], ratios, reg)
    assert not torch.allclose(unmasked[:, :, :2], out[:, :, :2])


def test_decoder_refines_boxes_and_looks_forward_twice() -> None:
    torch.manual_seed(0)
    dec = DinoTransformerDecoder(2, embed_dims=32, feedforward_channels=32, num_levels=1)
    reg = torch.nn.ModuleList(torch.nn.Linear(32, 4) for _ in range(2))
    query, value = torch.randn(1, 3, 32), torch.randn(1, 16, 32)
    ref = torch.rand(1, 3, 4) * 0.5 + 0.25
    layer_out = {}
    dec.layers[1].register_forward_hook(lambda m, a, o: layer_out.update(q=o))
    _, refs = dec(query, value, None, None, ref, [(4, 4)], torch.ones(1, 1, 2), reg)
    torch.testing.assert_close(refs[0], ref)
    # layer 1's box: its delta (from its un-normalised output) on layer 0's box
    want = (reg[1](layer_out["q"]) + inverse_sigmoid(refs[1], 1e-3)).sigmoid()
    torch.testing.assert_close(refs[2], want)
    refs[2].sum().backward()
    # the refined box carries its own layer's gradient; the next layer's input is detached
    assert reg[1].weight.grad.abs().sum() > 0
    assert reg[0].weight.grad is None or not reg[0].weight.grad.any()


def test_padding_masks_and_valid_ratios() -> None:
    model = _tiny().eval()
    images = torch.randn(2, 3, 64, 96)
    feats = model(images)["feats"]
    enc = model._flatten(feats, (64, 96), [(64, 96), (32, 48)])
    # the second image fills the top-left half: rows >= 4, columns >= 6 of level 0 (8x12)
    sizes = enc["spatial_shapes"]
    assert sizes == [(8, 12), (4, 6), (2, 3), (1, 2)]
    level0 = enc["mask"][:, : 8 * 12].view(2, 8, 12)
    expected = torch.ones(8, 12, dtype=torch.bool)
    expected[:4, :6] = False
    assert not level0[0].any() and torch.equal(level0[1], expected)
    torch.testing.assert_close(enc["valid_ratios"][0], torch.ones(4, 2))
    # nearest sampling of the 64x96 mask: level 2 (2x3) reads rows 0, 32 and columns 0, 32,
    # 64 (valid: rows < 32, columns < 48); level 3 (1x2) reads row 0, columns 0 and 48
    want = torch.tensor([[0.5, 0.5], [0.5, 0.5], [2 / 3, 0.5], [0.5, 1.0]])
    torch.testing.assert_close(enc["valid_ratios"][1], want)
    assert enc["mask"][1, -2:].tolist() == [False, True]
    same = model._flatten(feats, (64, 96), [(64, 96), (64, 96)])
    assert same["mask"] is None


def test_encoder_proposals_disable_borders_and_padding() -> None:
    model = _tiny()
    memory = torch.randn(1, 4 + 100, 64)
    mask = torch.zeros(1, 104, dtype=torch.bool)
    mask[0, 3] = True
    out, props = model.gen_encoder_output_proposals(memory, mask, [(2, 2), (10, 10)])
    # level 0, 2x2: centres 0.25 / 0.75, side 0.05
    want = inverse_sigmoid(torch.tensor([0.25, 0.25, 0.05, 0.05]), eps=0.0)
    torch.testing.assert_close(props[0, 0], want)
    assert torch.isinf(props[0, 3]).all()  # padded
    # level 1, 10x10: side 0.1, centres 0.05 .. 0.95: all valid
    torch.testing.assert_close(props[0, 4, 2:], inverse_sigmoid(torch.tensor([0.1, 0.1]), eps=0.0))
    assert torch.isfinite(props[0, 4:]).all()
    _, wide = model.gen_encoder_output_proposals(torch.randn(1, 200, 64), None, [(1, 200)])
    # x centre 0.5 / 200 = 0.0025 < 0.01: disabled
    assert torch.isinf(wide[0, 0]).all() and torch.isfinite(wide[0, 100]).all()
    assert out.shape == (1, 104, 64)


def test_mixed_query_selection() -> None:
    model = _tiny().eval()
    captured = {}
    model.encoder.register_forward_hook(lambda m, a, o: captured.update(memory=o))
    model.decoder.layers[0].register_forward_pre_hook(
        lambda m, a: captured.update(query=a[0]), with_kwargs=False
    )
    images = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        head = model._transformer(model(images), [(64, 96), (64, 96)], None)
        out_memory, props = model.gen_encoder_output_proposals(
            captured["memory"], None, [(8, 12), (4, 6), (2, 3), (1, 2)]
        )
        scores = model.bbox_head.cls_branches[2](out_memory)
        coords = model.bbox_head.reg_branches[2](out_memory) + props
    q = TINY["num_queries"]
    assert head["hidden_states"].shape == (2, 2, q, 64)
    assert head["references"].shape == (3, 2, q, 4)
    assert head["enc_outputs_class"].shape == (2, q, 3)
    index = scores.max(-1).values.topk(q, dim=1).indices
    want = coords.gather(1, index[..., None].expand(-1, -1, 4)).sigmoid()
    # positional part: the selected proposals; content part: the learnt query embedding
    torch.testing.assert_close(head["references"][0], want)
    torch.testing.assert_close(head["enc_outputs_coord"], want)
    torch.testing.assert_close(captured["query"], model.query_embedding.weight.expand(2, -1, -1))


def test_denoising_queries_come_first_in_training() -> None:
    model = _tiny()
    captured = {}
    model.decoder.register_forward_pre_hook(lambda m, a: captured.update(args=a))
    targets = [
        {"boxes": torch.tensor([[4.0, 4.0, 40.0, 30.0]]), "labels": torch.tensor([1])},
        {
            "boxes": torch.tensor([[8.0, 2.0, 60.0, 50.0], [1.0, 1.0, 9.0, 9.0]]),
            "labels": torch.tensor([0, 2]),
        },
    ]
    losses = model.loss(model(torch.randn(2, 3, 64, 96)), targets, (64, 96))
    query, _, _, attn_mask, ref = captured["args"][:5]
    num_dn = 2 * 3 * 2  # 6 // 2 = 3 groups of (2 positives + 2 negatives)
    assert query.shape == (2, num_dn + 12, 64) and ref.shape == (2, num_dn + 12, 4)
    assert attn_mask.shape == (num_dn + 12, num_dn + 12) and attn_mask[num_dn:, :num_dn].all()
    assert {"enc_loss_cls", "dn_loss_bbox", "d0.loss_iou"} <= set(losses)
    sum(losses.values()).backward()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert trainable == []


def test_too_few_encoder_positions_is_a_clear_error() -> None:
    model = _tiny(num_queries=200).eval()
    with pytest.raises(ValueError, match="fewer than the 200 queries"):
        model.predict(model(torch.randn(1, 3, 64, 96)), [(64, 96)])


def test_predict_returns_the_head_detections() -> None:
    model = _tiny().eval()
    with torch.no_grad():
        results = model.predict(model(torch.randn(2, 3, 64, 96)), [(64, 96), (40, 50)])
    assert len(results) == 2 and results[0]["boxes"].shape == (12 * 3, 4)
    assert results[1]["boxes"][:, 0::2].max() <= 50 and results[1]["boxes"][:, 1::2].max() <= 40


def _mmdet_dino_keys(num_classes: int = 80, layers: int = 6, branches: int = 7) -> set[str]:
    """The non-backbone keys of mmdetection's DINO (dino-4scale config), from its modules."""
    wb = (".weight", ".bias")
    keys = {"level_embed", "query_embedding.weight", "dn_query_generator.label_embedding.weight"}
    keys |= {f"memory_trans_{m}{s}" for m in ("fc", "norm") for s in wb}
    for i in range(3):
        keys |= {f"neck.convs.{i}.conv.weight"} | {f"neck.convs.{i}.gn{s}" for s in wb}
    keys |= {"neck.extra_convs.0.conv.weight"} | {f"neck.extra_convs.0.gn{s}" for s in wb}
    msda = ("sampling_offsets", "attention_weights", "value_proj", "output_proj")
    ffn = ("ffn.layers.0.0", "ffn.layers.1")
    for i in range(layers):
        enc = f"encoder.layers.{i}."
        keys |= {enc + f"self_attn.{m}{s}" for m in msda for s in wb}
        keys |= {enc + f"{m}{s}" for m in (*ffn, "norms.0", "norms.1") for s in wb}
        dec = f"decoder.layers.{i}."
        keys |= {dec + f"cross_attn.{m}{s}" for m in msda for s in wb}
        keys |= {dec + f"{m}{s}" for m in (*ffn, "norms.0", "norms.1", "norms.2") for s in wb}
        keys |= {dec + f"self_attn.attn.in_proj_{p}" for p in ("weight", "bias")}
        keys |= {dec + f"self_attn.attn.out_proj{s}" for s in wb}
    keys |= {
        f"decoder.{m}{s}"
        for m in ("ref_point_head.layers.0", "ref_point_head.layers.1", "norm")
        for s in wb
    }
    for b in range(branches):
        keys |= {f"bbox_head.cls_branches.{b}{s}" for s in wb}
        keys |= {f"bbox_head.reg_branches.{b}.{j}{s}" for j in (0, 2, 4) for s in wb}
    return keys


def _dino_r50_parameters(num_classes: int = 80) -> int:
    """Parameters of dino-4scale_r50, counted from the config's sizes."""
    d, ff, heads, levels, points, q = 256, 2048, 8, 4, 4, 900
    linear = lambda i, o: i * o + o  # noqa: E731
    resnet50 = 25_557_032 - linear(2048, 1000)  # torchvision's count without the fc
    neck = d * (512 + 1024 + 2048) + 9 * 2048 * d + 4 * 2 * d  # bias-free convs + 4 GN
    msda = linear(d, heads * levels * points * 2) + linear(d, heads * levels * points)
    msda += 2 * linear(d, d)
    ffn_params = linear(d, ff) + linear(ff, d)
    encoder = 6 * (msda + ffn_params + 2 * 2 * d)
    self_attn = 3 * d * d + 3 * d + linear(d, d)
    decoder = 6 * (self_attn + msda + ffn_params + 3 * 2 * d)
    decoder += linear(2 * d, d) + linear(d, d) + 2 * d  # ref_point_head and the final norm
    extras = levels * d + linear(d, d) + 2 * d + q * d + num_classes * d
    head = 7 * (linear(d, num_classes) + 2 * linear(d, d) + linear(d, 4))
    return resnet50 + neck + encoder + decoder + extras + head


def test_dino_r50_keys_and_size_are_mmdetections() -> None:
    with torch.device("meta"):
        model = build_dino(50)
    keys = set(model.state_dict())
    own = {k for k in keys if not k.startswith("backbone.")}
    assert own == _mmdet_dino_keys()
    assert {"backbone.layer4.2.conv3.weight", "backbone.layer1.0.downsample.1.running_mean"} <= keys
    assert not any(k.startswith("backbone.fc") for k in keys)
    assert sum(p.numel() for p in model.parameters()) == _dino_r50_parameters()
    frozen = {n.split(".")[1] for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"conv1", "bn1", "layer1", "layer2", "layer3", "layer4"}  # frozen BNs
    assert [i["name"] for i in model.feature_info] == ["C3", "C4", "C5", "P3", "P4", "P5", "P6"]
    assert model.feature_info[3]["module"] == "neck.convs.0"
