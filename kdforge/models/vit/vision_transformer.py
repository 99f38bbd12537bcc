"""Vision Transformers (Dosovitskiy et al., ICLR 2021) with torchvision-identical state dicts.

Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for Image Recognition at
Scale", ICLR 2021. Module paths, parameter shapes, initialisation and the forward pass follow
torchvision's ``VisionTransformer`` (``conv_proj``, ``class_token``, ``encoder.pos_embedding``,
``encoder.layers.encoder_layer_{i}.{ln_1, self_attention, ln_2, mlp.0, mlp.3}``,
``encoder.ln``, ``heads.head``), so torchvision ImageNet checkpoints (e.g.
``vit_b_16-c867db91.pth``) load strictly. ViT-S/16 and ViT-Ti/16 use the DeiT widths
(Touvron et al., ICML 2021) in the same layout. ``forward`` returns the logits only; the
attention maps are read with :mod:`kdforge.models.vit.attention`.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import Tensor, nn

from kdforge.models._registry import register_model
from kdforge.models.vit.attention import SelfAttention

__all__ = ["EncoderBlock", "VisionTransformer", "vit_b_16", "vit_s_16", "vit_ti_16"]


def _layer_norm(dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=1e-6)


class MLPBlock(nn.Sequential):
    """Linear → GELU → Dropout → Linear → Dropout (keys ``0`` and ``3``), as torchvision's."""

    def __init__(self, dim: int, mlp_dim: int, dropout: float) -> None:
        layers = [nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(dropout)]
        super().__init__(*layers, nn.Linear(mlp_dim, dim), nn.Dropout(dropout))
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.normal_(m.bias, std=1e-6)


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: ``x + attn(ln_1(x))``, then ``+ mlp(ln_2(·))``."""

    def __init__(
        self, num_heads: int, dim: int, mlp_dim: int, dropout: float, attention_dropout: float
    ) -> None:
        super().__init__()
        self.ln_1 = _layer_norm(dim)
        self.self_attention = SelfAttention(dim, num_heads, attention_dropout)
        self.dropout = nn.Dropout(dropout)
        self.ln_2 = _layer_norm(dim)
        self.mlp = MLPBlock(dim, mlp_dim, dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.dropout(self.self_attention(self.ln_1(x)))
        return x + self.mlp(self.ln_2(x))


class Encoder(nn.Module):
    """Position embedding, ``num_layers`` blocks and a final LayerNorm ``ln``."""

    def __init__(
        self,
        seq_length: int,
        num_layers: int,
        num_heads: int,
        dim: int,
        mlp_dim: int,
        dropout: float,
        attention_dropout: float,
    ) -> None:
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.empty(1, seq_length, dim).normal_(std=0.02))
        self.dropout = nn.Dropout(dropout)
        blocks = OrderedDict(
            (
                f"encoder_layer_{i}",
                EncoderBlock(num_heads, dim, mlp_dim, dropout, attention_dropout),
            )
            for i in range(num_layers)
        )
        self.layers = nn.Sequential(blocks)
        self.ln = _layer_norm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.ln(self.layers(self.dropout(x + self.pos_embedding)))


class VisionTransformer(nn.Module):
    """ViT classifier: patchify conv, class token, encoder, linear head on the class token.

    Args:
        image_size: input height and width (fixed, as in torchvision).
        patch_size: side of the square patches (the stride of ``conv_proj``).
        num_layers, num_heads, hidden_dim, mlp_dim: encoder size.
        dropout, attention_dropout: dropout rates (torchvision ImageNet models: 0).
        num_classes: outputs of ``heads.head``.

    Attributes:
        classifier_name: ``"heads.head"``; ``num_features``: ``hidden_dim``.
        attention_paths: module paths of the blocks' ``self_attention``, in order.
    """

    classifier_name = "heads.head"

    def __init__(
        self,
        image_size: int,
        patch_size: int,
        num_layers: int,
        num_heads: int,
        hidden_dim: int,
        mlp_dim: int,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch {patch_size}")
        self.image_size, self.patch_size, self.hidden_dim = image_size, patch_size, hidden_dim
        self.num_features = hidden_dim
        self.conv_proj = nn.Conv2d(3, hidden_dim, kernel_size=patch_size, stride=patch_size)
        self.class_token = nn.Parameter(torch.zeros(1, 1, hidden_dim))
        seq_length = (image_size // patch_size) ** 2 + 1
        self.encoder = Encoder(
            seq_length, num_layers, num_heads, hidden_dim, mlp_dim, dropout, attention_dropout
        )
        self.heads = nn.Sequential(OrderedDict(head=nn.Linear(hidden_dim, num_classes)))
        self.attention_paths = [
            f"encoder.layers.encoder_layer_{i}.self_attention" for i in range(num_layers)
        ]
        fan_in = 3 * patch_size * patch_size
        nn.init.trunc_normal_(self.conv_proj.weight, std=math.sqrt(1 / fan_in))
        nn.init.zeros_(self.conv_proj.bias)
        nn.init.zeros_(self.heads.head.weight)
        nn.init.zeros_(self.heads.head.bias)

    def get_classifier(self) -> nn.Module:
        """Return the final linear layer."""
        return self.heads.head

    def forward_features(self, x: Tensor) -> Tensor:
        """``(N, 3, H, W)`` -> final-LayerNorm tokens ``(N, 1 + (H/p)·(W/p), hidden_dim)``."""
        n, _, h, w = x.shape
        if (h, w) != (self.image_size, self.image_size):
            raise ValueError(
                f"{type(self).__name__} takes {self.image_size}x{self.image_size} images, "
                f"got {h}x{w}"
            )
        x = self.conv_proj(x).flatten(2).transpose(1, 2)  # (N, D, h, w) -> (N, h·w, D)
        x = torch.cat([self.class_token.expand(n, -1, -1), x], dim=1)  # (N, 1 + h·w, D)
        return self.encoder(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.heads(self.forward_features(x)[:, 0])


def _vit(
    depth: int, heads: int, dim: int, mlp_dim: int, num_classes: int, **kw
) -> VisionTransformer:
    return VisionTransformer(224, 16, depth, heads, dim, mlp_dim, num_classes=num_classes, **kw)


@register_model("vit_b_16", input_size=(3, 224, 224), family="imagenet", num_classes=1000)
def vit_b_16(num_classes: int = 1000, **kwargs: float) -> VisionTransformer:
    """ViT-B/16: 12 layers, 12 heads, width 768, MLP 3072; 86,567,656 parameters."""
    return _vit(12, 12, 768, 3072, num_classes, **kwargs)


@register_model("vit_s_16", input_size=(3, 224, 224), family="imagenet", num_classes=1000)
def vit_s_16(num_classes: int = 1000, **kwargs: float) -> VisionTransformer:
    """ViT-S/16 (DeiT-S widths): 12 layers, 6 heads, width 384, MLP 1536; 22,050,664 parameters."""
    return _vit(12, 6, 384, 1536, num_classes, **kwargs)


@register_model("vit_ti_16", input_size=(3, 224, 224), family="imagenet", num_classes=1000)
def vit_ti_16(num_classes: int = 1000, **kwargs: float) -> VisionTransformer:
    """ViT-Ti/16 (DeiT-Ti widths): 12 layers, 3 heads, width 192, MLP 768; 5,717,416 parameters."""
    return _vit(12, 3, 192, 768, num_classes, **kwargs)
