"""Grounding DINO's text side: caption and spans, positive map, sub-sentence mask and
positions, the BERT wrapper (mmdetection's key names, the mask really used), the
missing-dependency error. A tiny BERT and WordPiece vocabulary are built in tmp_path."""

from __future__ import annotations

import math
import sys

import pytest
import torch

from kdforge.errors import ConfigError, MissingDependencyError
from kdforge.models.detection.grounding_bert import BertLanguageModel, text_feat_map
from kdforge.models.detection.grounding_text import (
    build_caption,
    clean_label_name,
    positive_map,
    sub_sentence_mask,
)

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "?", "person", "traffic", "light"]
VOCAB += ["dog"]
ID = {w: i for i, w in enumerate(VOCAB)}
CLASSES = ["person", "traffic_light", "dog"]
LAYERS = 2


@pytest.fixture
def bert_folder(tmp_path):
    """A 2-layer, 32-wide BERT with its tokenizer, saved as bert-base-uncased's folder is."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    folder = tmp_path / "tiny-bert"
    transformers.BertTokenizerFast(vocab=dict(ID)).save_pretrained(folder)
    config = transformers.BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=32,
        num_hidden_layers=LAYERS,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
    )
    transformers.BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    return folder


def test_caption_and_spans():
    caption, spans = build_caption(CLASSES)
    assert caption == "person. traffic light. dog. "
    assert spans == [[(0, 6)], [(8, 21)], [(23, 26)]]
    assert [caption[b:e] for [(b, e)] in spans] == ["person", "traffic light", "dog"]
    assert clean_label_name("stop_sign (obj)") == "stop sign "
    with pytest.raises(ConfigError, match="non-empty name"):
        build_caption(["dog", "_"])


def test_positive_map_and_label_to_tokens(bert_folder):
    lm = BertLanguageModel(bert_folder)
    prompt = lm.prompt(CLASSES, max_text_len=12)
    # [CLS] person . traffic light . dog . [SEP]
    assert lm.tokenize([prompt.caption])["input_ids"].tolist() == [[2, 7, 5, 8, 9, 5, 10, 5, 3]]
    assert prompt.positive_map.shape == (3, 12)
    expected = torch.zeros(3, 12)
    expected[0, 1] = 1 / (1 + 1e-6)
    expected[1, 3:5] = 1 / (2 + 1e-6)
    expected[2, 6] = 1 / (1 + 1e-6)
    torch.testing.assert_close(prompt.positive_map, expected)
    assert prompt.label_to_tokens() == {1: [1], 2: [3, 4], 3: [6]}


def test_positive_map_retries_neighbouring_characters():
    class Encoding:  # characters 0 and 5 fall on whitespace: no token
        def char_to_token(self, char):
            return {1: 1, 2: 1, 3: 2, 4: 2}.get(char)

    pmap = positive_map(Encoding(), [[(0, 6)]], max_text_len=4)
    torch.testing.assert_close(pmap, torch.tensor([[0.0, 0.5, 0.5, 0.0]]), atol=1e-6, rtol=0)


def test_a_class_cut_off_by_the_token_limit_is_refused(bert_folder):
    lm = BertLanguageModel(bert_folder, max_tokens=6)  # [CLS] person . traffic light [SEP]
    with pytest.raises(ConfigError, match="'dog' has no token among the caption's first 256"):
        lm.prompt(CLASSES)


def _blocks(length, blocks):
    mask = torch.eye(length, dtype=torch.bool)
    for block in blocks:
        for i in block:
            for j in block:
                mask[i, j] = True
    return mask


def test_sub_sentence_mask_three_classes():
    # [CLS] person . traffic light . dog . [SEP]
    ids = torch.tensor([[2, 7, 5, 8, 9, 5, 10, 5, 3]])
    mask, positions = sub_sentence_mask(ids, [ID["[CLS]"], ID["[SEP]"], ID["."], ID["?"]])
    assert torch.equal(mask[0], _blocks(9, [(1, 2), (3, 4, 5), (6, 7)]))
    assert positions.tolist() == [[0, 0, 1, 0, 1, 2, 0, 1, 0]]
    assert positions.dtype == torch.long


def test_sub_sentence_mask_without_a_closing_period():
    # [CLS] person . dog [SEP]: [SEP] in the last column closes no phrase, so "dog" stays alone
    mask, positions = sub_sentence_mask(torch.tensor([[2, 7, 5, 10, 3]]), [2, 3, 5, 6])
    assert torch.equal(mask[0], _blocks(5, [(1, 2)]))
    assert positions.tolist() == [[0, 0, 1, 0, 0]]


def test_sub_sentence_mask_padded_batch():
    # [CLS] person . dog . [SEP] / [CLS] dog . [SEP] [PAD] [PAD]
    ids = torch.tensor([[2, 7, 5, 10, 5, 3], [2, 10, 5, 3, 0, 0]])
    mask, positions = sub_sentence_mask(ids, [2, 3, 5, 6])
    assert torch.equal(mask[0], _blocks(6, [(1, 2), (3, 4)]))
    assert torch.equal(mask[1], _blocks(6, [(1, 2)]))  # [SEP] and padding: themselves only
    assert positions.tolist() == [[0, 0, 1, 0, 1, 0], [0, 0, 1, 0, 0, 0]]


def test_language_model_keys_are_mmdetections(bert_folder):
    lm = BertLanguageModel(bert_folder)
    per_layer = [
        f"attention.self.{p}.{t}" for p in ("query", "key", "value") for t in ("weight", "bias")
    ]
    per_layer += [
        f"{m}.{t}"
        for m in (
            "attention.output.dense",
            "attention.output.LayerNorm",
            "intermediate.dense",
            "output.dense",
            "output.LayerNorm",
        )
        for t in ("weight", "bias")
    ]
    expected = [
        f"embeddings.{n}"
        for n in (
            "word_embeddings.weight",
            "position_embeddings.weight",
            "token_type_embeddings.weight",
            "LayerNorm.weight",
            "LayerNorm.bias",
        )
    ]
    expected += [f"encoder.layer.{i}.{k}" for i in range(LAYERS) for k in per_layer]
    keys = [f"language_model.{k}" for k in lm.state_dict()]
    assert sorted(keys) == sorted(
        f"language_model.language_backbone.body.model.{k}" for k in expected
    )
    assert "language_model.language_backbone.body.model.embeddings.word_embeddings.weight" in keys
    saved = pytest.importorskip("transformers").BertModel.from_pretrained(
        bert_folder, add_pooling_layer=False
    )
    torch.testing.assert_close(
        lm.language_backbone.body.model.embeddings.word_embeddings.weight,
        saved.embeddings.word_embeddings.weight,
    )


def test_each_phrase_is_encoded_alone(bert_folder):
    """With the sub-sentence mask and positions, a phrase's features are BERT's features of
    that phrase on its own (positions from 0)."""
    lm = BertLanguageModel(bert_folder).eval()
    caption, _ = build_caption(CLASSES)
    with torch.no_grad():
        feats = lm([caption, "dog. "])
        bert = lm.language_backbone.body.model
        alone = bert(input_ids=torch.tensor([[ID["traffic"], ID["light"], ID["."]]]))
    assert feats.embedded.shape == (2, 9, 32)
    torch.testing.assert_close(feats.embedded[0, 3:6], alone.last_hidden_state[0])
    torch.testing.assert_close(feats.embedded[1, 1:3], feats.embedded[0, 6:8])  # "dog ." either way
    assert feats.text_token_mask.tolist() == [[True] * 9, [True] * 4 + [False] * 5]
    mask, positions = sub_sentence_mask(
        lm.tokenize([caption, "dog. "])["input_ids"], lm.special_ids
    )
    assert torch.equal(feats.masks, mask) and torch.equal(feats.position_ids, positions)


def test_folder_errors(bert_folder, tmp_path):
    with pytest.raises(ConfigError, match="no config.json"):
        BertLanguageModel(tmp_path / "nowhere")
    (bert_folder / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match="no BERT weights"):
        BertLanguageModel(bert_folder)
    lm = BertLanguageModel(bert_folder, load_weights=False)  # weights from a detector later
    assert lm.language_dim == 32
    with pytest.raises(ConfigError, match=r"\['!'\] are not in the vocabulary"):
        BertLanguageModel(bert_folder, load_weights=False, special_tokens_list=["[CLS]", "!"])


def test_missing_transformers_is_named_before_any_work(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(MissingDependencyError, match=r"pip install kdforge\[grounding\]"):
        BertLanguageModel(tmp_path / "nowhere")  # the folder is not even looked at


def test_text_feat_map_init():
    torch.manual_seed(0)
    linear = text_feat_map(768, 256)
    assert linear.weight.shape == (256, 768)
    assert torch.equal(linear.bias, torch.zeros(256))
    bound = math.sqrt(6 / (768 + 256))  # Xavier-uniform
    assert linear.weight.abs().max() <= bound
    assert linear.weight.abs().max() > 0.9 * bound
