"""DINO (Zhang et al., "DINO: DETR with Improved DeNoising Anchor Boxes for End-to-End Object
Detection", ICLR 2023) as mmdetection 3.x's ``DINO`` with ``dino-4scale_r50_8xb2-12e_coco``.

ResNet ``C3..C5`` (``frozen_stages=1``, frozen BN) -> ``ChannelMapper`` to 256 channels
plus a stride-64 level (GN, no activation) -> sine positional encoding (temperature 20,
normalised, offset 0) plus a learnt ``level_embed`` -> 6 deformable encoder layers -> two-
stage query selection -> 6 decoder layers with contrastive denoising queries -> ``DINOHead``.

Query selection (mixed, DINO section 3.3): every encoder position is a proposal box centred
on its pixel with side ``0.05 * 2**level`` (positions within 0.01 of the border, or padded,
are disabled); ``memory_trans_fc``/``memory_trans_norm`` then the head's last
``cls_branches``/``reg_branches`` score and refine them, and the ``num_queries`` best by
their highest class score become the decoder's initial boxes (detached), while the content
queries come from ``query_embedding``. Parameter names are mmdetection's, so its checkpoints
load as they are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdforge.models.detection._dino_build import (
    dino_backbone_and_neck,
    dino_positional_encoding,
    dino_query_generator,
)
from kdforge.models.detection.channel_mapper import ChannelMapper
from kdforge.models.detection.deformable_transformer import (
    DeformableDetrTransformerEncoder,
    DinoTransformerDecoder,
)
from kdforge.models.detection.dino_denoising import CdnQueryGenerator, target_img_shapes
from kdforge.models.detection.dino_head import DINOHead
from kdforge.models.detection.ms_deform_attn import MultiScaleDeformableAttention
from kdforge.models.detection.positional_encoding import SinePositionalEncoding

__all__ = ["DINO", "build_dino", "select_queries"]


def select_queries(enc_class: Tensor, enc_coord: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Query selection: the ``k`` encoder positions whose highest logit is largest (DINO's
    class logits; Grounding DINO's token logits, language-guided).

    Args:
        enc_class: ``(N, S, K)`` logits of every encoder position (``-inf`` where masked).
        enc_coord: ``(N, S, 4)`` inverse-sigmoid proposal boxes.

    Returns:
        The selected ``(N, k, K)`` logits and ``(N, k, 4)`` boxes, best first.
    """
    topk = enc_class.max(-1).values.topk(k, dim=1).indices  # (N, k)
    scores = enc_class.gather(1, topk[..., None].expand(-1, -1, enc_class.shape[-1]))
    return scores, enc_coord.gather(1, topk[..., None].expand(-1, -1, 4))


def _valid_ratio(mask: Tensor) -> Tensor:
    """``(N, h, w)`` padding mask -> ``(N, 2)`` valid ``(w, h)`` fractions."""
    _, h, w = mask.shape
    valid_h = (~mask[:, :, 0]).sum(1).float() / h
    valid_w = (~mask[:, 0, :]).sum(1).float() / w
    return torch.stack([valid_w, valid_h], -1)


class DINO(nn.Module):
    """DINO whose ``forward`` stops after the neck.

    ``forward`` returns the neck's levels, so distillation hooks them (CanKD distils
    ``neck.convs.0..2``) and a teacher truncated after the neck skips the transformer;
    ``loss`` and ``predict`` run the transformer and the head (the denoising queries are
    made from the targets, so they cannot run in ``forward``).

    Args:
        backbone: ResNet returning ``C3..C5``.
        neck: a :class:`ChannelMapper` with one extra level.
        positional_encoding: the sine encoding of each level.
        encoder: the deformable encoder.
        decoder: the DINO decoder.
        dn_query_generator: the contrastive denoising queries.
        bbox_head: a head with ``decoder.num_layers + 1`` ``cls_branches``/``reg_branches``
            (the last one scores the encoder's proposals).
        num_queries: matching queries (900).

    Attributes:
        feature_info: ``module``, ``num_chs``, ``reduction`` and ``name`` of the backbone
            stages (``C3..C5``) then of the neck levels (``neck.convs.0..2``: ``P3..P5``,
            ``neck.extra_convs.0``: ``P6``).
    """

    def __init__(
        self,
        backbone: nn.Module,
        neck: ChannelMapper,
        positional_encoding: SinePositionalEncoding,
        encoder: DeformableDetrTransformerEncoder,
        decoder: DinoTransformerDecoder,
        dn_query_generator: CdnQueryGenerator,
        bbox_head: nn.Module,
        num_queries: int = 900,
    ) -> None:
        super().__init__()
        dims = encoder.embed_dims
        if positional_encoding.num_feats * 2 != dims:
            raise ValueError(f"positional num_feats must be {dims // 2} for {dims} channels")
        if len(bbox_head.cls_branches) != decoder.num_layers + 1:
            raise ValueError("the head needs one branch per decoder layer plus the encoder's")
        if dn_query_generator.num_matching_queries != num_queries:
            raise ValueError("dn_query_generator.num_matching_queries must equal num_queries")
        self.num_queries = num_queries
        self.num_feature_levels = len(neck.convs) + len(neck.extra_convs)
        self.backbone = backbone
        self.neck = neck
        self.positional_encoding = positional_encoding
        self.encoder = encoder
        self.decoder = decoder
        self.query_embedding = nn.Embedding(num_queries, dims)
        self.level_embed = nn.Parameter(torch.empty(self.num_feature_levels, dims))
        self.memory_trans_fc = nn.Linear(dims, dims)
        self.memory_trans_norm = nn.LayerNorm(dims)
        self.dn_query_generator = dn_query_generator
        self.bbox_head = bbox_head
        self._init_transformer()
        self.feature_info: list[dict] = []
        for info in backbone.feature_info:
            level = info["reduction"].bit_length() - 1
            self.feature_info.append(
                {**info, "module": f"backbone.{info['module']}", "name": f"C{level}"}
            )
        modules = [f"neck.convs.{i}" for i in range(len(neck.convs))]
        modules += [f"neck.extra_convs.{i}" for i in range(len(neck.extra_convs))]
        stride = backbone.feature_info[0]["reduction"]
        for i, module in enumerate(modules):
            s = stride * 2**i
            self.feature_info.append(
                {
                    "module": module,
                    "num_chs": dims,
                    "reduction": s,
                    "name": f"P{s.bit_length() - 1}",
                }
            )

    @torch.no_grad()
    def _init_transformer(self) -> None:
        # mmdetection's DINO.init_weights (the backbone, neck and head init themselves)
        for coder in (self.encoder, self.decoder):
            for p in coder.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MultiScaleDeformableAttention):
                m.init_weights()
        nn.init.xavier_uniform_(self.memory_trans_fc.weight)
        nn.init.xavier_uniform_(self.query_embedding.weight)
        nn.init.normal_(self.level_embed)

    def forward(self, images: Tensor) -> dict:
        """``(N, 3, H, W)`` normalised, padded images -> ``{"feats": [P3..P6],
        "batch_input_shape": (H, W)}``."""
        feats = list(self.neck(self.backbone(images)))
        return {"feats": feats, "batch_input_shape": tuple(images.shape[-2:])}

    def _flatten(self, feats: list[Tensor], batch_shape: tuple[int, int], shapes: list) -> dict:
        """Padding masks, positional encodings and the flattened levels."""
        n = feats[0].shape[0]
        masks = feats[0].new_ones((n, *batch_shape))
        for i, (h, w) in enumerate(shapes):
            masks[i, :h, :w] = 0
        flat, pos, mask_flat, ratios, sizes = [], [], [], [], []
        for level, feat in enumerate(feats):
            # (N, H, W) -> (N, h, w): nearest, as mmdetection
            mask = F.interpolate(masks[None], size=feat.shape[-2:])[0].bool()
            embed = self.positional_encoding(mask).to(feat.dtype)
            flat.append(feat.flatten(2).transpose(1, 2))  # (N, h*w, C)
            pos.append(embed.flatten(2).transpose(1, 2) + self.level_embed[level])
            mask_flat.append(mask.flatten(1))
            ratios.append(_valid_ratio(mask))
            sizes.append(tuple(feat.shape[-2:]))
        mask = torch.cat(mask_flat, 1)
        return {
            "feat": torch.cat(flat, 1),
            "pos": torch.cat(pos, 1),
            "mask": mask if bool(mask.any()) else None,  # no padding: masks are skipped
            "valid_ratios": torch.stack(ratios, 1),  # (N, levels, 2)
            "spatial_shapes": sizes,
        }

    def gen_encoder_output_proposals(
        self, memory: Tensor, memory_mask: Tensor | None, spatial_shapes: Sequence
    ) -> tuple[Tensor, Tensor]:
        """One proposal per encoder position, and the memory that scores it.

        Returns:
            ``output_memory`` ``(N, S, C)`` (zeroed at padded or disabled positions, then
            ``memory_trans_fc`` and ``memory_trans_norm``) and ``output_proposals`` ``(N, S,
            4)`` inverse-sigmoid ``(cx, cy, w, h)`` (``inf`` at padded or disabled positions).
        """
        n = memory.shape[0]
        proposals, start = [], 0
        for level, (h, w) in enumerate(spatial_shapes):
            if memory_mask is not None:
                m = memory_mask[:, start : start + h * w].view(n, h, w)
                scale = torch.stack([(~m[:, 0, :]).sum(1), (~m[:, :, 0]).sum(1)], -1)
                scale = scale.view(n, 1, 1, 2).to(memory.dtype)  # valid (w, h)
            else:
                scale = memory.new_tensor([w, h]).view(1, 1, 1, 2)
            ys = torch.linspace(0, h - 1, h, dtype=torch.float32, device=memory.device)
            xs = torch.linspace(0, w - 1, w, dtype=torch.float32, device=memory.device)
            grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
            grid = torch.stack([grid_x, grid_y], -1)  # (h, w, 2)
            grid = (grid[None].expand(n, -1, -1, -1) + 0.5) / scale
            wh = torch.full_like(grid, 0.05 * 2.0**level)
            proposals.append(torch.cat((grid, wh), -1).view(n, -1, 4))
            start += h * w
        proposals = torch.cat(proposals, 1)
        valid = ((proposals > 0.01) & (proposals < 0.99)).all(-1, keepdim=True)
        proposals = torch.log(proposals / (1 - proposals))
        disabled = ~valid
        if memory_mask is not None:
            disabled = disabled | memory_mask[..., None]
        proposals = proposals.masked_fill(disabled, float("inf"))
        output = memory.masked_fill(disabled, 0.0)
        return self.memory_trans_norm(self.memory_trans_fc(output)), proposals

    def _encoder_inputs(self, outputs: dict, img_shapes: list[tuple[int, int]]) -> dict:
        """:meth:`_flatten` of ``forward``'s outputs (the padded batch shape is taken from
        ``img_shapes`` when the outputs do not carry it)."""
        batch_shape = outputs.get("batch_input_shape")
        if batch_shape is None:
            batch_shape = tuple(max(s[i] for s in img_shapes) for i in (0, 1))
        return self._flatten(outputs["feats"], batch_shape, img_shapes)

    def _transformer(
        self,
        outputs: dict,
        img_shapes: list[tuple[int, int]],
        targets: Sequence[dict[str, Tensor]] | None,
    ) -> dict:
        """Encoder, query selection, (denoising when ``targets`` are given) and decoder."""
        enc = self._encoder_inputs(outputs, img_shapes)
        memory = self.encoder(
            enc["feat"], enc["pos"], enc["mask"], enc["spatial_shapes"], enc["valid_ratios"]
        )
        return self._decode(memory, enc, img_shapes, targets)

    def _decode(
        self,
        memory: Tensor,
        enc: dict,
        img_shapes: list[tuple[int, int]],
        targets: Sequence[Mapping[str, Tensor]] | None,
        cls_extras: tuple[Tensor, ...] = (),
        decoder_extras: tuple[Tensor, ...] = (),
    ) -> dict:
        """Query selection from the encoder ``memory`` ``(N, S, C)``, the denoising queries
        (when ``targets`` are given) and the decoder; ``cls_extras`` and ``decoder_extras``
        are further inputs of the encoder's class branch and of the decoder (the text)."""
        shapes, mask, ratios = enc["spatial_shapes"], enc["mask"], enc["valid_ratios"]
        if memory.shape[1] < self.num_queries:
            raise ValueError(
                f"the images give {memory.shape[1]} encoder positions, fewer than the "
                f"{self.num_queries} queries: use larger images or a smaller num_queries"
            )
        output_memory, output_proposals = self.gen_encoder_output_proposals(memory, mask, shapes)
        last = self.decoder.num_layers
        enc_class = self.bbox_head.cls_branches[last](output_memory, *cls_extras)  # (N, S, K)
        enc_coord = self.bbox_head.reg_branches[last](output_memory) + output_proposals
        topk_score, topk_coord = select_queries(enc_class, enc_coord, self.num_queries)
        query = self.query_embedding.weight[None].expand(memory.shape[0], -1, -1)
        reference = topk_coord.detach()
        dn_mask, dn_meta = None, None
        if targets is not None:
            dn_label, dn_bbox, dn_mask, dn_meta = self.dn_query_generator(targets, img_shapes)
            query = torch.cat([dn_label.to(query.dtype), query], 1)
            reference = torch.cat([dn_bbox.to(reference.dtype), reference], 1)
        hidden_states, references = self.decoder(
            query,
            memory,
            mask,
            dn_mask,
            reference.sigmoid(),
            shapes,
            ratios,
            self.bbox_head.reg_branches,
            *decoder_extras,
        )
        return {
            "hidden_states": hidden_states,
            "references": references,
            "enc_outputs_class": topk_score,
            "enc_outputs_coord": topk_coord.sigmoid(),
            "dn_meta": dn_meta,
        }

    def loss(
        self,
        outputs: dict,
        targets: Sequence[dict[str, Tensor]],
        image_size: tuple[int, int] | Sequence[tuple[int, int]],
    ) -> dict[str, Tensor]:
        """The head's losses (every decoder layer, the encoder's top queries, denoising).

        Args:
            outputs: ``forward``'s outputs.
            targets: per image ``{"boxes": (M, 4) xyxy pixels, "labels": (M,) int64
                0-based, "img_shape": optional (H, W) before padding}``.
            image_size: the padded ``(H, W)`` of each image or one for the batch, the
                ``img_shape`` of targets without one.
        """
        shapes = target_img_shapes(targets, image_size)
        head_inputs = self._transformer(outputs, shapes, targets)
        return self.bbox_head.loss(
            head_inputs["hidden_states"],
            head_inputs["references"],
            head_inputs["enc_outputs_class"],
            head_inputs["enc_outputs_coord"],
            targets,
            head_inputs["dn_meta"],
            shapes,
        )

    def predict(self, outputs: dict, image_sizes: Sequence[tuple[int, int]]) -> list[dict]:
        """Per image ``{"boxes", "scores", "labels"}`` in input pixels (the head's top
        detections, 300 by default) for images of ``image_sizes`` ``(H, W)`` before padding."""
        shapes = [tuple(int(v) for v in s) for s in image_sizes]
        head_inputs = self._transformer(outputs, shapes, None)
        return self.bbox_head.predict(
            head_inputs["hidden_states"], head_inputs["references"], shapes
        )


def build_dino(
    depth: int = 50,
    num_classes: int = 80,
    *,
    num_queries: int = 900,
    frozen_stages: int = 1,
    backbone_pretrained: str | Path | None = None,
    embed_dims: int = 256,
    num_encoder_layers: int = 6,
    num_decoder_layers: int = 6,
    feedforward_channels: int = 2048,
    num_dn_queries: int = 100,
    label_noise_scale: float = 0.5,
    box_noise_scale: float = 1.0,
    **head_kwargs,
) -> DINO:
    """DINO-4scale on a ResNet with ``dino-4scale_r50_8xb2-12e_coco``'s settings.

    Args:
        depth: ResNet depth (18, 34, 50, 101).
        num_classes: object classes.
        num_queries: matching queries (900).
        frozen_stages: backbone stages frozen (1; CanKD's DINO student leaves it at -1).
        backbone_pretrained: a torchvision-keyed ImageNet ResNet checkpoint.
        embed_dims: transformer width (256; GroupNorm of the neck needs a multiple of 32).
        num_encoder_layers, num_decoder_layers: 6 each.
        feedforward_channels: FFN width (2048).
        num_dn_queries, label_noise_scale, box_noise_scale: the denoising queries
            (dynamic groups of at most 100 queries, 0.5, 1.0).
        **head_kwargs: further :class:`DINOHead` keywords.
    """
    backbone, neck = dino_backbone_and_neck(depth, embed_dims, frozen_stages, backbone_pretrained)
    layer = {"embed_dims": embed_dims, "feedforward_channels": feedforward_channels}
    generator = dino_query_generator(
        num_classes, embed_dims, num_queries, num_dn_queries, label_noise_scale, box_noise_scale
    )
    return DINO(
        backbone,
        neck,
        dino_positional_encoding(embed_dims),
        DeformableDetrTransformerEncoder(num_encoder_layers, **layer),
        DinoTransformerDecoder(num_decoder_layers, return_intermediate=True, **layer),
        generator,
        DINOHead(num_classes, embed_dims, num_pred_layer=num_decoder_layers + 1, **head_kwargs),
        num_queries,
    )
