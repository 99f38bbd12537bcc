"""Grounding DINO's fusion, text layers, query selection, head targets and detector keys
(mmdetection 3.x ``GroundingDINO``); the tiny BERT comes from tests/conftest.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from kdforge.data.shapes import SHAPE_CLASSES
from kdforge.errors import ConfigError
from kdforge.models import create_model
from kdforge.models.detection.grounding_dino import build_grounding_dino, select_queries
from kdforge.models.detection.grounding_dino_head import binary_focal_loss_cost
from kdforge.models.detection.grounding_fusion import SingleScaleBiAttentionBlock
from kdforge.models.detection.grounding_text import sub_sentence_mask
from kdforge.models.detection.grounding_transformer import (
    GroundingDinoTransformerEncoder,
    text_position_encoding,
)

TINY = {
    "num_queries": 12,
    "embed_dims": 64,
    "num_encoder_layers": 1,
    "num_decoder_layers": 2,
    "feedforward_channels": 64,
    "text_feedforward_channels": 32,
    "fusion_embed_dim": 64,
    "max_text_len": 16,
    "num_dn_queries": 6,
}


def _tiny(folder: Path, **kwargs):
    torch.manual_seed(0)
    names = list(SHAPE_CLASSES)
    return build_grounding_dino(18, 4, class_names=names, text_folder=folder, **TINY, **kwargs)


def test_fusion_block_matches_the_formula_and_masks() -> None:
    torch.manual_seed(0)
    block = SingleScaleBiAttentionBlock(8, 6, embed_dim=4, num_heads=1, init_values=0.5).eval()
    vision, lang = torch.randn(2, 5, 8), torch.randn(2, 3, 6)
    pad_v = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    pad_l = torch.tensor([[False] * 3, [False, False, True]])
    out_v, out_l = block(vision, lang, pad_v, pad_l)
    assert out_v.shape == (2, 5, 8) and out_l.shape == (2, 3, 6)
    # one head by hand: shared scores, softmax over tokens (image) and over positions (text)
    a, v, l_ = block.attn, block.layer_norm_v(vision), block.layer_norm_l(lang)
    scores = a.v_proj(v) @ a.l_proj(l_).transpose(1, 2) / 2.0  # head_dim 4: sqrt = 2
    to_v = scores.masked_fill(pad_l[:, None], -math.inf).softmax(-1) @ a.values_l_proj(l_)
    to_l = scores.transpose(1, 2).masked_fill(pad_v[:, None], -math.inf).softmax(-1)
    to_l = to_l @ a.values_v_proj(v)
    torch.testing.assert_close(out_v, v + 0.5 * a.out_v_proj(to_v))
    torch.testing.assert_close(out_l, l_ + 0.5 * a.out_l_proj(to_l))
    # a padded token changes no image position; a padded position changes no token
    lang2, vision2 = lang.clone(), vision.clone()
    lang2[1, 2] += 10.0
    vision2[1, 4] -= 10.0
    out_v2, out_l2 = block(vision2, lang2, pad_v, pad_l)
    torch.testing.assert_close(out_v2[1, :3], out_v[1, :3])
    torch.testing.assert_close(out_l2[1, :2], out_l[1, :2])


def test_fusion_gamma_starts_at_init_values() -> None:
    block = SingleScaleBiAttentionBlock(8, 6, embed_dim=16, num_heads=4)
    assert torch.equal(block.gamma_v, torch.full((8,), 1e-4))
    assert block.attn.embed_dim == 16 and block.attn.head_dim == 4


def test_text_position_encoding_hand_values() -> None:
    enc = text_position_encoding(torch.tensor([[0, 3]]), num_feats=8)
    assert enc.shape == (1, 2, 8)
    torch.testing.assert_close(enc[0, 0], torch.tensor([0.0, 1.0] * 4))
    # feature 2: sin(2 pi p / 10000 ** (2 / 8)), feature 5: cos(2 pi p / 10000 ** (4 / 8))
    torch.testing.assert_close(enc[0, 1, 2], torch.tensor(math.sin(6 * math.pi / 10)))
    torch.testing.assert_close(enc[0, 1, 5], torch.tensor(math.cos(6 * math.pi / 100)))


def test_encoder_text_layers_keep_phrases_apart_per_image() -> None:
    """One encoder layer: a token's text memory depends on its own phrase only (fusion reads
    the image, the text layer the phrase), with a different mask in each image."""
    torch.manual_seed(0)
    encoder = GroundingDinoTransformerEncoder(
        1, embed_dims=32, feedforward_channels=32, num_levels=1, num_heads=4
    ).eval()
    ids = torch.tensor([[101, 7, 1, 8, 9, 1, 102], [101, 7, 8, 1, 9, 1, 102]])  # '.' is 1
    masks, positions = sub_sentence_mask(ids, [101, 102, 1])
    image, pos, text = torch.randn(2, 6, 32), torch.randn(2, 6, 32), torch.randn(2, 7, 32)
    ratios, no_pad = torch.ones(2, 1, 2), torch.zeros(2, 7, dtype=torch.bool)

    def run(t):
        return encoder(image, pos, None, [(2, 3)], ratios, t, no_pad, positions, masks)[1]

    base = run(text)
    changed = text.clone()
    changed[:, 4] = torch.randn(2, 32)  # token 4: 2nd phrase of image 0 (3-5), of image 1 (4-5)
    out = run(changed)
    torch.testing.assert_close(out[0, :3], base[0, :3])  # image 0's first phrase: 1-2
    torch.testing.assert_close(out[1, :4], base[1, :4])  # image 1's first phrase: 1-3
    assert not torch.allclose(out[0, 3], base[0, 3]) and not torch.allclose(out[1, 5], base[1, 5])


def test_query_selection_by_the_best_token_logit() -> None:
    inf = math.inf
    enc_class = torch.tensor(
        [[[0.0, -inf, 1.0], [3.0, -inf, -5.0], [-1.0, -inf, 2.5], [0.5, -inf, 0.2]]]
    )
    coords = torch.arange(16.0).view(1, 4, 4)
    scores, boxes = select_queries(enc_class, coords, 2)
    # best token logits 1.0, 3.0, 2.5, 0.5 -> positions 1 then 2 (not by the first token)
    torch.testing.assert_close(scores, enc_class[:, [1, 2]])
    torch.testing.assert_close(boxes, coords[:, [1, 2]])


def test_binary_focal_cost_by_hand() -> None:
    logits = torch.tensor([[0.0, 2.0, -1.0]])
    maps = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    p = logits.sigmoid()[0]
    pos = -(p + 1e-12).log() * 0.25 * (1 - p) ** 2
    neg = -(1 - p + 1e-12).log() * 0.75 * p**2
    want = torch.tensor([[pos[0] + pos[1] + neg[2], neg[0] + neg[1] + pos[2]]])
    torch.testing.assert_close(binary_focal_loss_cost(logits, maps), want)


def test_loss_targets_are_binary_token_maps(tiny_bert: Path) -> None:
    model = _tiny(tiny_bert).train()
    prompt = model.prompt  # "rectangle. ellipse. triangle. star. ": tokens 1, 3, 5, 7
    assert prompt.caption == "rectangle. ellipse. triangle. star. "
    assert model.positive_map.shape == (4, 16)
    assert model.positive_map.nonzero()[:, 1].tolist() == [1, 3, 5, 7]
    seen = {}
    original = model.bbox_head.loss

    def spy(*args):
        seen["targets"], seen["text_mask"] = args[6], args[3]
        return original(*args)

    model.bbox_head.loss = spy
    targets = [
        {
            "boxes": torch.tensor([[4.0, 4, 40, 30], [50, 10, 90, 60]]),
            "labels": torch.tensor([2, 0]),
        }
    ]
    losses = model.loss(model(torch.randn(1, 3, 64, 96)), targets, (64, 96))
    maps = seen["targets"][0]["token_maps"]
    assert maps.tolist() == [[float(i == 5) for i in range(16)], [float(i == 1) for i in range(16)]]
    assert seen["text_mask"].tolist() == [[True] * 10]  # [CLS] 4 x (name .) [SEP]
    assert all(torch.isfinite(v) for v in losses.values())
    assert len(losses) == 3 * (2 + 1 + 2)  # per decoder layer, encoder, denoising per layer


def test_predict_scores_classes_by_their_tokens(tiny_bert: Path) -> None:
    model = _tiny(tiny_bert).eval()
    with torch.no_grad():
        results = model.predict(model(torch.randn(2, 3, 64, 96)), [(64, 96), (40, 50)])
    assert len(results) == 2 and results[0]["boxes"].shape == (12 * 4, 4)  # 48 < 300
    assert results[0]["labels"].max() < 4
    assert results[1]["boxes"][:, 0::2].max() <= 50 and results[1]["boxes"][:, 1::2].max() <= 40


def test_missing_names_or_folder_are_clear_errors(tiny_bert: Path) -> None:
    with pytest.raises(ConfigError, match="class_names"):
        create_model("grounding_dino_r18", num_classes=4, text_folder=tiny_bert)
    with pytest.raises(ConfigError, match="text_folder"):
        create_model("grounding_dino_r18", num_classes=4, class_names=list(SHAPE_CLASSES))
    with pytest.raises(ConfigError, match="3 class names for a 4-class"):
        build_grounding_dino(
            18, 4, class_names=["rectangle", "star", "ellipse"], text_folder=tiny_bert
        )


def _mmdet_grounding_keys(layers: int = 6, branches: int = 7) -> set[str]:
    """Non-backbone, non-BERT keys of mmdetection's GroundingDINO, from its modules."""
    wb = (".weight", ".bias")
    keys = {"level_embed", "query_embedding.weight", "dn_query_generator.label_embedding.weight"}
    keys |= {
        f"{m}{s}" for m in ("memory_trans_fc", "memory_trans_norm", "text_feat_map") for s in wb
    }
    for conv in ("convs.0", "convs.1", "convs.2", "extra_convs.0"):  # bias=True in the config
        keys |= {f"neck.{conv}.{m}{s}" for m in ("conv", "gn") for s in wb}
    msda = ("sampling_offsets", "attention_weights", "value_proj", "output_proj")
    ffn = ("ffn.layers.0.0", "ffn.layers.1")
    attn = {
        "attn.in_proj_weight",
        "attn.in_proj_bias",
        "attn.out_proj.weight",
        "attn.out_proj.bias",
    }
    fusion = ("v_proj", "l_proj", "values_v_proj", "values_l_proj", "out_v_proj", "out_l_proj")
    for i in range(layers):
        enc, text, fuse = (
            f"encoder.layers.{i}.",
            f"encoder.text_layers.{i}.",
            f"encoder.fusion_layers.{i}.",
        )
        keys |= {enc + f"self_attn.{m}{s}" for m in msda for s in wb}
        keys |= {enc + f"{m}{s}" for m in (*ffn, "norms.0", "norms.1") for s in wb}
        keys |= {text + "self_attn." + a for a in attn}
        keys |= {text + f"{m}{s}" for m in (*ffn, "norms.0", "norms.1") for s in wb}
        keys |= {fuse + f"attn.{m}{s}" for m in fusion for s in wb}
        keys |= {fuse + f"layer_norm_{m}{s}" for m in "vl" for s in wb}
        keys |= {fuse + "gamma_v", fuse + "gamma_l"}
        dec = f"decoder.layers.{i}."
        keys |= {dec + f"cross_attn.{m}{s}" for m in msda for s in wb}
        keys |= {dec + f"{m}{s}" for m in (*ffn, *(f"norms.{n}" for n in range(4))) for s in wb}
        keys |= {dec + f"{m}." + a for m in ("self_attn", "cross_attn_text") for a in attn}
    keys |= {
        f"decoder.{m}{s}"
        for m in ("ref_point_head.layers.0", "ref_point_head.layers.1", "norm")
        for s in wb
    }
    for b in range(branches):
        keys |= {f"bbox_head.cls_branches.{b}.bias"}  # ContrastiveEmbed: bias only ('auto' scale)
        keys |= {f"bbox_head.reg_branches.{b}.{j}{s}" for j in (0, 2, 4) for s in wb}
    return keys


def _bert_base_parameters() -> int:
    """bert-base-uncased without the pooler, from its config (30522 x 768, 12 layers)."""
    d, ff, linear = 768, 3072, lambda i, o: i * o + o
    embeddings = (30522 + 512 + 2) * d + 2 * d
    layer = 4 * linear(d, d) + 2 * d + linear(d, ff) + linear(ff, d) + 2 * d
    return embeddings + 12 * layer


def _grounding_r50_parameters(num_classes: int = 80) -> int:
    """Parameters of grounding_dino_r50_scratch, counted from the config's sizes."""
    d, ff, levels, points, q = 256, 2048, 4, 4, 900
    linear = lambda i, o: i * o + o  # noqa: E731
    resnet50 = 25_557_032 - linear(2048, 1000)
    neck = d * (512 + 1024 + 2048) + 9 * 2048 * d + 4 * d + 4 * 2 * d  # biased convs + GN
    msda = linear(d, 8 * levels * points * 2) + linear(d, 8 * levels * points) + 2 * linear(d, d)
    self_attn = 3 * d * d + 3 * d + linear(d, d)
    image = msda + linear(d, ff) + linear(ff, d) + 2 * 2 * d
    text = self_attn + linear(d, 1024) + linear(1024, d) + 2 * 2 * d
    fusion = 2 * 2 * d + 4 * linear(d, 1024) + 2 * linear(1024, d) + 2 * d
    decoder = 6 * (2 * self_attn + msda + linear(d, ff) + linear(ff, d) + 4 * 2 * d)
    decoder += linear(2 * d, d) + linear(d, d) + 2 * d
    extras = levels * d + linear(d, d) + 2 * d + q * d + num_classes * d + linear(768, d)
    head = 7 * (1 + 2 * linear(d, d) + linear(d, 4))
    return resnet50 + neck + 6 * (image + text + fusion) + decoder + extras + head


def test_grounding_dino_r50_keys_and_size_are_mmdetections(tmp_path: Path, tiny_bert: Path) -> None:
    folder = tmp_path / "bert-base"
    folder.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_text((tiny_bert / name).read_text())
    config = {"model_type": "bert", "vocab_size": 30522, "hidden_size": 768}
    config |= {"num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072}
    (folder / "config.json").write_text(json.dumps(config))
    names = list(SHAPE_CLASSES) * 20  # 80 names
    with torch.device("meta"):
        model = build_grounding_dino(
            50, 80, class_names=names, text_folder=folder, load_text_weights=False
        )
    keys = set(model.state_dict())
    bert = "language_model.language_backbone.body.model."
    own = {k for k in keys if not k.startswith(("backbone.", bert))}
    assert own == _mmdet_grounding_keys()
    assert {
        bert + "encoder.layer.11.output.LayerNorm.weight",
        bert + "embeddings.word_embeddings.weight",
    } <= keys
    assert not any("pooler" in k for k in keys)
    assert (
        sum(p.numel() for p in model.parameters())
        == _grounding_r50_parameters() + _bert_base_parameters()
    )
    assert model.feature_info[3]["module"] == "neck.convs.0"
