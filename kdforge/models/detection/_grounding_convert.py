"""What :mod:`~kdforge.models.detection.convert` needs to read mmdetection DINO and Grounding
DINO checkpoints: their sizes from the weights (the transformer's alike), the Grounding DINO
keywords the weights cannot carry, and the BERT entries that ``transformers`` 5 no longer
has."""

from __future__ import annotations

import re
from typing import Any

from torch import Tensor

from kdforge.errors import CheckpointError
from kdforge.models._registry import list_models

__all__ = [
    "BERT_PREFIX",
    "GROUNDING_FLAGS",
    "dino_kwargs",
    "drop_unkept_bert_keys",
    "grounding_dino_kwargs",
]

BERT_PREFIX = "language_model.language_backbone.body.model."
# the builder keywords a checkpoint cannot carry (the refusal message shows these values)
GROUNDING_FLAGS = {
    "text_folder": "<local bert-base-uncased folder>",
    "class_names": "[<names, in label order>]",
}
# BERT's position_ids buffer (saved by transformers 4, not a buffer in 5) and the pooler
# (mmdetection builds BERT without it; older checkpoints may still hold it)
_UNKEPT = re.compile(re.escape(BERT_PREFIX) + r"(embeddings\.position_ids$|pooler\.)")


def drop_unkept_bert_keys(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """``state`` without BERT's ``embeddings.position_ids`` and ``pooler.*`` entries."""
    return {k: v for k, v in state.items() if not _UNKEPT.match(k)}


def _count(state: dict[str, Tensor], pattern: str) -> int:
    return len({m.group(1) for k in state if (m := re.match(pattern, k))})


def _transformer_kwargs(
    state: dict[str, Tensor], name: str, family: str, classes_key: str
) -> dict[str, Any]:
    """Classes (rows of ``classes_key``), queries, width, layer counts and FFN width of a
    DINO-family state dict, refused unless ``name`` is registered (the message names the
    ``family`` and lists the registered names starting with its lower-case, ``_``-joined
    form)."""
    registered = list_models("detection")
    if name not in registered:
        prefix = family.lower().replace(" ", "_")
        raise CheckpointError(
            f"no registered {family} detector {name!r} for this checkpoint; registered: "
            + ", ".join(n for n in registered if n.startswith(prefix))
        )
    queries = state["query_embedding.weight"]
    return {
        "num_classes": state[classes_key].shape[0],
        "num_queries": queries.shape[0],
        "embed_dims": queries.shape[1],
        "num_encoder_layers": _count(state, r"encoder\.layers\.(\d+)\."),
        "num_decoder_layers": _count(state, r"decoder\.layers\.(\d+)\."),
        "feedforward_channels": state["encoder.layers.0.ffn.layers.0.0.weight"].shape[0],
    }


def dino_kwargs(state: dict[str, Tensor], backbone: str) -> tuple[str, dict[str, Any]]:
    """The registered name and sizes of a DINO-4scale state dict on ResNet ``backbone``.

    Raises:
        CheckpointError: no DINO is registered for that backbone.
    """
    name = f"dino_4scale_{backbone}"
    return name, _transformer_kwargs(state, name, "DINO", "bbox_head.cls_branches.0.weight")


def grounding_dino_kwargs(state: dict[str, Tensor], backbone: str) -> tuple[str, dict[str, Any]]:
    """The registered name and sizes of a Grounding DINO state dict on ResNet ``backbone``
    (``"r50"``); BERT's weights come from the checkpoint (``load_text_weights=False``).

    Raises:
        CheckpointError: no Grounding DINO is registered for that backbone.
    """
    name = f"grounding_dino_{backbone}"
    classes = "dn_query_generator.label_embedding.weight"
    return name, {
        **_transformer_kwargs(state, name, "Grounding DINO", classes),
        "text_feedforward_channels": state["encoder.text_layers.0.ffn.layers.0.0.weight"].shape[0],
        "fusion_embed_dim": state["encoder.fusion_layers.0.attn.v_proj.weight"].shape[0],
        "load_text_weights": False,
    }
