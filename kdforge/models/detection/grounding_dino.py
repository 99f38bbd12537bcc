"""Grounding DINO (Liu et al., 2023, "Grounding DINO: Marrying DINO with Grounded Pre-Training
for Open-Set Object Detection") as mmdetection 3.x's ``GroundingDINO`` with
``grounding_dino_r50_scratch_8xb2_1x_coco``.

DINO (:mod:`~kdforge.models.detection.dino`) with a text side: the class names become one
caption (``"person. bicycle. ... "``) that BERT reads (:mod:`grounding_bert`), projected to
the transformer width by ``text_feat_map``. The encoder fuses image and text (feature
enhancer); query selection keeps the encoder positions whose best token logit is highest
(language-guided); every decoder layer reads the text; the head scores each query against
each token (:mod:`grounding_dino_head`). Parameter names are mmdetection's (BERT under
``language_model.language_backbone.body.model``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor

from kdforge.errors import ConfigError
from kdforge.models.detection._dino_build import (
    dino_backbone_and_neck,
    dino_positional_encoding,
    dino_query_generator,
)
from kdforge.models.detection.channel_mapper import ChannelMapper
from kdforge.models.detection.dino import DINO, select_queries
from kdforge.models.detection.dino_denoising import CdnQueryGenerator, target_img_shapes
from kdforge.models.detection.grounding_bert import BertLanguageModel, TextFeatures, text_feat_map
from kdforge.models.detection.grounding_dino_head import GroundingDINOHead
from kdforge.models.detection.grounding_transformer import (
    GroundingDinoTransformerDecoder,
    GroundingDinoTransformerEncoder,
)
from kdforge.models.detection.positional_encoding import SinePositionalEncoding

__all__ = ["GroundingDINO", "build_grounding_dino", "select_queries"]


class GroundingDINO(DINO):
    """Grounding DINO for a fixed class list; ``forward`` stops after the neck (as DINO).

    Args:
        backbone, neck, positional_encoding, dn_query_generator, num_queries: as :class:`DINO`.
        encoder: the feature enhancer.
        decoder: the cross-modality decoder.
        bbox_head: a :class:`GroundingDINOHead`.
        language_model: the BERT text encoder.
        class_names: the classes, in label order; their caption is the text prompt.

    Raises:
        ConfigError: the class list is empty, a name is empty, the caption is too long, or
            its length differs from the denoising generator's ``num_classes``.
    """

    def __init__(
        self,
        backbone,
        neck: ChannelMapper,
        positional_encoding: SinePositionalEncoding,
        encoder: GroundingDinoTransformerEncoder,
        decoder: GroundingDinoTransformerDecoder,
        dn_query_generator: CdnQueryGenerator,
        bbox_head: GroundingDINOHead,
        language_model: BertLanguageModel,
        class_names: Sequence[str],
        num_queries: int = 900,
    ) -> None:
        super().__init__(
            backbone,
            neck,
            positional_encoding,
            encoder,
            decoder,
            dn_query_generator,
            bbox_head,
            num_queries,
        )
        if len(class_names) != dn_query_generator.num_classes:
            raise ConfigError(
                f"{len(class_names)} class names for a {dn_query_generator.num_classes}-class "
                "model; give one name per class"
            )
        self.language_model = language_model
        self.text_feat_map = text_feat_map(language_model.language_dim, encoder.embed_dims)
        self.class_names = list(class_names)
        with torch.device("cpu"):  # data, not weights: made on the CPU under any default device
            self.prompt = language_model.prompt(class_names, bbox_head.max_text_len)
        # (K, L) each class's tokens, normalised rows; not saved (rebuilt from the names)
        self.register_buffer("positive_map", self.prompt.positive_map, persistent=False)

    def encode_text(self, batch: int) -> TextFeatures:
        """The caption's BERT features for ``batch`` images, projected to the transformer
        width (``embedded`` ``(B, T, C)``)."""
        text = self.language_model([self.prompt.caption] * batch)
        text.embedded = self.text_feat_map(text.embedded)
        return text

    def _transformer(
        self,
        outputs: dict,
        img_shapes: list[tuple[int, int]],
        targets: Sequence[Mapping[str, Tensor]] | None,
    ) -> dict:
        """Text encoder, feature enhancer, language-guided query selection, (denoising when
        ``targets`` are given) and the cross-modality decoder."""
        text = self.encode_text(outputs["feats"][0].shape[0])
        text_padding = ~text.text_token_mask
        enc = self._encoder_inputs(outputs, img_shapes)
        memory, memory_text = self.encoder(
            enc["feat"],
            enc["pos"],
            enc["mask"],
            enc["spatial_shapes"],
            enc["valid_ratios"],
            text.embedded,
            text_padding,
            text.position_ids,
            text.masks,
        )
        head = self._decode(
            memory,
            enc,
            img_shapes,
            targets,
            cls_extras=(memory_text, text.text_token_mask),  # -> (B, S, L) token logits
            decoder_extras=(memory_text, text_padding),
        )
        return {**head, "memory_text": memory_text, "text_token_mask": text.text_token_mask}

    def loss(
        self,
        outputs: dict,
        targets: Sequence[dict[str, Tensor]],
        image_size: tuple[int, int] | Sequence[tuple[int, int]],
    ) -> dict[str, Tensor]:
        """The head's losses, as :meth:`DINO.loss`; each box's token target is its class's row
        of the positive map, made binary (mmdetection's ``positive_map.bool().float()``)."""
        shapes = target_img_shapes(targets, image_size)
        token_maps = (self.positive_map > 0).float()
        targets = [
            {**t, "token_maps": token_maps[t["labels"].to(token_maps.device).long()]}
            for t in targets
        ]
        head = self._transformer(outputs, shapes, targets)
        return self.bbox_head.loss(
            head["hidden_states"],
            head["references"],
            head["memory_text"],
            head["text_token_mask"],
            head["enc_outputs_class"],
            head["enc_outputs_coord"],
            targets,
            head["dn_meta"],
            shapes,
        )

    def predict(self, outputs: dict, image_sizes: Sequence[tuple[int, int]]) -> list[dict]:
        """Per image ``{"boxes", "scores", "labels"}`` in input pixels: the best 300 (query,
        class) pairs by class score (mean token score) for images of ``image_sizes``."""
        shapes = [tuple(int(v) for v in s) for s in image_sizes]
        head = self._transformer(outputs, shapes, None)
        return self.bbox_head.predict(
            head["hidden_states"],
            head["references"],
            head["memory_text"],
            head["text_token_mask"],
            self.positive_map,
            shapes,
        )


def build_grounding_dino(
    depth: int = 50,
    num_classes: int = 80,
    *,
    class_names: Sequence[str] | None = None,
    text_folder: str | Path | None = None,
    load_text_weights: bool = True,
    num_queries: int = 900,
    frozen_stages: int = 1,
    backbone_pretrained: str | Path | None = None,
    embed_dims: int = 256,
    num_encoder_layers: int = 6,
    num_decoder_layers: int = 6,
    feedforward_channels: int = 2048,
    text_feedforward_channels: int = 1024,
    fusion_embed_dim: int = 1024,
    num_cp: int = 6,
    max_text_len: int = 256,
    num_dn_queries: int = 100,
    **head_kwargs,
) -> GroundingDINO:
    """Grounding DINO on a ResNet with ``grounding_dino_r50_scratch_8xb2_1x_coco``'s settings.

    Args:
        depth: ResNet depth (18, 34, 50, 101).
        num_classes: classes (the length of ``class_names``).
        class_names: the class names, in label order (COCO's 80 for the recipes).
        text_folder: a local ``bert-base-uncased`` folder (config, tokenizer, weights).
        load_text_weights: read BERT's weights from the folder (False when a detector
            checkpoint brings them).
        num_queries: matching queries (900).
        frozen_stages, backbone_pretrained: as :func:`~kdforge.models.detection.dino.build_dino`.
        embed_dims, num_encoder_layers, num_decoder_layers, feedforward_channels: 256, 6, 6,
            2048.
        text_feedforward_channels: FFN width of the text layers (1024).
        fusion_embed_dim: attention width of the fusion layers (1024).
        num_cp: encoder layers that recompute activations in the backward pass (6).
        max_text_len: token slots (256).
        num_dn_queries: denoising queries (dynamic groups of at most 100).
        **head_kwargs: further :class:`GroundingDINOHead` keywords.

    Raises:
        ConfigError: ``class_names`` or ``text_folder`` is missing.
    """
    if not class_names:
        raise ConfigError(
            "Grounding DINO needs the class names: set student.kwargs.class_names (or the "
            "teacher's) to the data set's names, in label order"
        )
    if text_folder is None:
        raise ConfigError(
            "Grounding DINO needs a local BERT folder: set kwargs.text_folder to a "
            "bert-base-uncased folder written by save_pretrained"
        )
    backbone, neck = dino_backbone_and_neck(
        depth, embed_dims, frozen_stages, backbone_pretrained, neck_bias=True
    )
    layer = {"embed_dims": embed_dims, "feedforward_channels": feedforward_channels}
    encoder = GroundingDinoTransformerEncoder(
        num_encoder_layers,
        text_layer={"feedforward_channels": text_feedforward_channels},
        fusion_layer={"embed_dim": fusion_embed_dim},
        num_cp=num_cp,
        **layer,
    )
    generator = dino_query_generator(num_classes, embed_dims, num_queries, num_dn_queries)
    head = GroundingDINOHead(
        num_classes,
        embed_dims,
        num_pred_layer=num_decoder_layers + 1,
        max_text_len=max_text_len,
        **head_kwargs,
    )
    language_model = BertLanguageModel(text_folder, load_weights=load_text_weights)
    return GroundingDINO(
        backbone,
        neck,
        dino_positional_encoding(embed_dims),
        encoder,
        GroundingDinoTransformerDecoder(num_decoder_layers, return_intermediate=True, **layer),
        generator,
        head,
        language_model,
        class_names,
        num_queries,
    )
