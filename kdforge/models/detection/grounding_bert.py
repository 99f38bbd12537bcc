"""Grounding DINO's text encoder: BERT through Hugging Face ``transformers``, read from a
local folder, with mmdetection 3.x's ``BertModel`` semantics and parameter names.

mmdetection (``language_model=dict(type='BertModel', name='bert-base-uncased',
pad_to_max=False, use_sub_sentence_represent=True, special_tokens_list=['[CLS]', '[SEP]',
'.', '?'], add_pooling_layer=False)``, ``max_tokens`` 256): captions are tokenized (cut at
256 tokens, padded to the longest), BERT runs with the sub-sentence attention mask and
position ids (:func:`~kdforge.models.detection.grounding_text.sub_sentence_mask`), and the
text features are the last layer's hidden states. The weights sit under
``language_backbone.body.model.*`` (so ``language_model.language_backbone.body.model.*`` in a
detector), and the detector projects the features with ``text_feat_map``
(:func:`text_feat_map`). Nothing here downloads: the folder is one written by
``save_pretrained`` (config, tokenizer and, unless the weights come from a detector
checkpoint, the weights).
"""

from __future__ import annotations

import importlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor, nn

from kdforge.errors import ConfigError, MissingDependencyError
from kdforge.models.detection.grounding_text import (
    ClassPrompt,
    build_caption,
    positive_map,
    sub_sentence_mask,
)

__all__ = ["BertEncoder", "BertLanguageModel", "TextFeatures", "text_feat_map"]

SPECIAL_TOKENS = ("[CLS]", "[SEP]", ".", "?")


def _transformers() -> ModuleType:
    try:
        return importlib.import_module("transformers")
    except ImportError as err:
        raise MissingDependencyError(
            f"Grounding DINO's text encoder needs transformers, which does not import ({err}); "
            "`pip install kdforge[grounding]`"
        ) from None


@dataclass
class TextFeatures:
    """What the language model gives Grounding DINO (mmdetection's ``text_dict``).

    Attributes:
        embedded: ``(B, T, C)`` token features (C = BERT's width; 256 after ``text_feat_map``).
        masks: ``(B, T, T)`` bool sub-sentence attention mask (True: may attend).
        position_ids: ``(B, T)`` position of each token within its phrase.
        text_token_mask: ``(B, T)`` bool, True for real tokens, False for padding.
    """

    embedded: Tensor
    masks: Tensor
    position_ids: Tensor
    text_token_mask: Tensor


class BertEncoder(nn.Module):
    """mmdetection's ``language_backbone.body``: a Hugging Face ``BertModel`` as ``model``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.language_dim: int = model.config.hidden_size

    def forward(
        self, input_ids: Tensor, masks: Tensor, position_ids: Tensor, token_type_ids: Tensor
    ) -> Tensor:
        """``(B, T, language_dim)`` last-layer features; ``masks`` is ``(B, T, T)`` bool."""
        dtype = next(self.model.parameters()).dtype
        # (B, T, T) bool -> (B, 1, T, T) additive: 0 where allowed, the dtype's min elsewhere
        additive = torch.zeros(masks.shape, dtype=dtype, device=masks.device)
        additive = additive.masked_fill(~masks, torch.finfo(dtype).min)[:, None]
        out = self.model(
            input_ids=input_ids,
            attention_mask=additive,
            position_ids=position_ids,
            token_type_ids=token_type_ids,
        )
        return out.last_hidden_state


def _check_folder(folder: Path, load_weights: bool) -> None:
    if not (folder / "config.json").is_file():
        raise ConfigError(
            f"{folder} is not a BERT folder (no config.json); give a folder written by "
            "save_pretrained, e.g. bert-base-uncased's (the hub is not used)"
        )
    if not ((folder / "tokenizer.json").is_file() or (folder / "vocab.txt").is_file()):
        raise ConfigError(
            f"{folder} holds no tokenizer (tokenizer.json or vocab.txt); save the tokenizer "
            "into the same folder with save_pretrained"
        )
    has_weights = any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))
    if load_weights and not has_weights:
        raise ConfigError(
            f"{folder} holds no BERT weights (*.safetensors or *.bin); add them, or pass "
            "load_weights=False when the weights come from a detector checkpoint"
        )


class BertLanguageModel(nn.Module):
    """BERT text encoder of Grounding DINO (mmdetection's ``BertModel``, sub-sentence mode).

    Args:
        folder: a local folder with ``config.json``, the tokenizer and (when ``load_weights``)
            the weights, e.g. ``bert-base-uncased`` saved with ``save_pretrained``.
        max_tokens: captions are cut at this many tokens.
        pad_to_max: pad every caption to ``max_tokens`` (else to the longest in the batch).
        special_tokens_list: the tokens that close a phrase.
        add_pooling_layer: keep BERT's pooler (unused by Grounding DINO).
        load_weights: read the folder's weights; False builds a new BERT of that
            configuration, for weights that come from a detector checkpoint.

    Raises:
        MissingDependencyError: transformers does not import.
        ConfigError: the folder lacks a file it needs, or a special token is not in the
            tokenizer's vocabulary.
    """

    def __init__(
        self,
        folder: str | Path,
        *,
        max_tokens: int = 256,
        pad_to_max: bool = False,
        special_tokens_list: Sequence[str] = SPECIAL_TOKENS,
        add_pooling_layer: bool = False,
        load_weights: bool = True,
    ) -> None:
        super().__init__()
        transformers = _transformers()
        folder = Path(folder).expanduser()
        _check_folder(folder, load_weights)
        self.max_tokens = max_tokens
        self.pad_to_max = pad_to_max
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
        unknown = [t for t in special_tokens_list if t not in self.tokenizer.get_vocab()]
        if unknown:
            raise ConfigError(
                f"special tokens {unknown} are not in the vocabulary of {folder}; "
                "give tokens of that vocabulary in special_tokens_list"
            )
        self.special_ids: list[int] = self.tokenizer.convert_tokens_to_ids(
            list(special_tokens_list)
        )
        bert_cls = transformers.BertModel
        if load_weights:
            bert = bert_cls.from_pretrained(
                folder, local_files_only=True, add_pooling_layer=add_pooling_layer
            )
        else:
            config = transformers.BertConfig.from_pretrained(folder, local_files_only=True)
            bert = bert_cls(config, add_pooling_layer=add_pooling_layer)
        self.language_backbone = nn.Sequential(OrderedDict(body=BertEncoder(bert)))

    @property
    def language_dim(self) -> int:
        """BERT's hidden width (768 for bert-base)."""
        return self.language_backbone.body.language_dim

    def tokenize(self, captions: Sequence[str]):  # -> transformers.BatchEncoding
        """The captions tokenized as the model reads them (cut at ``max_tokens``)."""
        return self.tokenizer(
            list(captions),
            max_length=self.max_tokens,
            padding="max_length" if self.pad_to_max else "longest",
            truncation=True,
            return_tensors="pt",
        )

    def prompt(self, class_names: Sequence[str], max_text_len: int = 256) -> ClassPrompt:
        """The caption of a class list, its spans and its ``(C, max_text_len)`` positive map."""
        caption, spans = build_caption(class_names)
        encoding = self.tokenize([caption])
        pmap = positive_map(encoding, spans, max_text_len, names=list(class_names))
        return ClassPrompt(caption=caption, spans=spans, positive_map=pmap)

    def forward(self, captions: Sequence[str]) -> TextFeatures:
        """BERT features of a batch of captions, with the sub-sentence mask and positions."""
        device = next(self.parameters()).device
        tokens = self.tokenize(captions).to(device)
        masks, position_ids = sub_sentence_mask(tokens["input_ids"], self.special_ids)
        embedded = self.language_backbone.body(
            tokens["input_ids"], masks, position_ids, tokens["token_type_ids"]
        )  # (B, T, language_dim)
        return TextFeatures(
            embedded=embedded,
            masks=masks,
            position_ids=position_ids,
            text_token_mask=tokens["attention_mask"].bool(),
        )


def text_feat_map(language_dim: int = 768, embed_dims: int = 256) -> nn.Linear:
    """Grounding DINO's ``text_feat_map`` (BERT width -> transformer width), initialised as
    mmdetection does: Xavier-uniform weight, zero bias."""
    linear = nn.Linear(language_dim, embed_dims)
    nn.init.xavier_uniform_(linear.weight)
    nn.init.zeros_(linear.bias)
    return linear
