"""Grounding DINO's text handling (Liu et al., 2023, "Grounding DINO: Marrying DINO with
Grounded Pre-Training for Open-Set Object Detection"), as mmdetection 3.x does it.

The class names become one caption, ``"person. traffic light. dog. "`` (each name cleaned,
then ``". "`` appended; GLIP's ``" . "`` is not Grounding DINO's); each class owns the
character span of its name and, once the caption is tokenized, the tokens that cover that
span (its row of the *positive map*). BERT reads the
caption with a *sub-sentence* attention mask: a token attends only to the tokens of its own
phrase (the tokens after one special token up to and including the next), and position ids
restart at 0 in each phrase. Pure torch; the tokenizer is passed in (``grounding_bert``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from kdforge.errors import ConfigError

__all__ = [
    "SEPARATOR",
    "ClassPrompt",
    "build_caption",
    "clean_label_name",
    "positive_map",
    "sub_sentence_mask",
]

SEPARATOR = ". "  # what follows each class name in the caption (mmdetection's _special_tokens)

Span = tuple[int, int]  # [begin, end) character offsets into the caption


class _Encoding(Protocol):
    """What :func:`positive_map` needs of a tokenized caption (a fast tokenizer's output)."""

    def char_to_token(self, char_index: int) -> int | None: ...


def clean_label_name(name: str) -> str:
    """A class name as mmdetection puts it in the caption: ``(...)`` dropped, ``_`` -> space,
    double spaces -> single (``"stop_sign"`` -> ``"stop sign"``)."""
    name = re.sub(r"\(.*\)", "", name)
    return name.replace("_", " ").replace("  ", " ")


def build_caption(class_names: Sequence[str]) -> tuple[str, list[list[Span]]]:
    """The caption for a class list and each class's character spans (one span per class).

    Raises:
        ConfigError: the list is empty or a name is empty once cleaned.
    """
    names = [clean_label_name(n) for n in class_names]
    if not names or not all(n.strip() for n in names):
        raise ConfigError(
            f"Grounding DINO needs a non-empty name for every class, got {list(class_names)!r}; "
            "give the data set's class names"
        )
    caption, spans = "", []
    for name in names:
        spans.append([(len(caption), len(caption) + len(name))])
        caption += name + SEPARATOR
    return caption, spans


def _token_at(encoding: _Encoding, chars: Sequence[int]) -> int | None:
    """The token of the first of ``chars`` that maps to one (mmdetection's +-1, +-2 retries)."""
    for char in chars:
        if char >= 0:
            token = encoding.char_to_token(char)
            if token is not None:
                return token
    return None


def positive_map(
    encoding: _Encoding,
    spans: Sequence[Sequence[Span]],
    max_text_len: int = 256,
    names: Sequence[str] | None = None,
) -> Tensor:
    """Which tokens each entity covers, each row normalised to sum 1 (mmdetection's
    ``create_positive_map``): ``(num_entities, max_text_len)`` float.

    A span's first token is that of its first character (else of the next one or two), its
    last token that of its last character (else of the one or two before).

    Raises:
        ConfigError: an entity covers no token (its name was cut off by the token limit).
    """
    out = torch.zeros(len(spans), max_text_len)
    for row, entity_spans in enumerate(spans):
        for begin, end in entity_spans:
            first = _token_at(encoding, (begin, begin + 1, begin + 2))
            last = _token_at(encoding, (end - 1, end - 2, end - 3))
            if first is not None and last is not None:
                out[row, first : last + 1] = 1.0
        if not out[row].any():
            name = names[row] if names is not None else f"entity {row}"
            raise ConfigError(
                f"{name!r} has no token among the caption's first {max_text_len} tokens "
                "(cut off by the token limit?); use fewer or shorter class names"
            )
    return out / (out.sum(-1, keepdim=True) + 1e-6)


@dataclass(frozen=True)
class ClassPrompt:
    """A class list as Grounding DINO reads it.

    Attributes:
        caption: the text given to the language model.
        spans: each class's character spans in ``caption``.
        positive_map: ``(num_classes, max_text_len)``, each row the class's tokens, summing to 1.
    """

    caption: str
    spans: list[list[Span]]
    positive_map: Tensor

    def label_to_tokens(self) -> dict[int, list[int]]:
        """``{label: token indices}`` with labels from 1, as mmdetection's
        ``create_positive_map_label_to_token(..., plus=1)``."""
        return {i + 1: row.nonzero().flatten().tolist() for i, row in enumerate(self.positive_map)}


def sub_sentence_mask(input_ids: Tensor, special_ids: Sequence[int]) -> tuple[Tensor, Tensor]:
    """The attention mask between tokens and their position ids within each phrase.

    A special token at column ``c`` (not the first or last column) closes the phrase that
    began after the previous special token: those tokens attend to each other and count
    positions 0, 1, ... A special token in the first or last column, and any token no phrase
    covers (padding), attends only to itself with position 0. (Each row starts afresh;
    mmdetection carries the last boundary over from the row before, which is the same
    whenever column 0 holds ``[CLS]``, as BERT's tokenizer puts it.)

    Args:
        input_ids: ``(B, T)`` token ids.
        special_ids: the ids of ``[CLS]``, ``[SEP]``, ``.``, ``?`` (phrase boundaries).

    Returns:
        ``(B, T, T)`` bool attention mask (True: may attend) and ``(B, T)`` long position ids.
    """
    batch, length = input_ids.shape
    is_special = torch.isin(input_ids, torch.as_tensor(list(special_ids), device=input_ids.device))
    mask = torch.eye(length, dtype=torch.bool, device=input_ids.device).repeat(batch, 1, 1)
    positions = torch.zeros(batch, length, dtype=torch.long, device=input_ids.device)
    for b in range(batch):
        previous = 0
        for col in is_special[b].nonzero().flatten().tolist():
            if 0 < col < length - 1:
                mask[b, previous + 1 : col + 1, previous + 1 : col + 1] = True
                positions[b, previous + 1 : col + 1] = torch.arange(
                    col - previous, device=input_ids.device
                )
            previous = col
    return mask, positions
