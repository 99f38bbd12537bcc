"""Vision Transformers with torchvision-identical state dicts, and attention taps.

Importing this package registers ``vit_b_16``, ``vit_s_16`` and ``vit_ti_16`` under the
``"imagenet"`` family (224x224 inputs, 1000 classes by default).
"""

from kdforge.models.vit.attention import (
    QKV,
    AttentionTap,
    AttentionTaps,
    SelfAttention,
    attention_logits,
    attention_tap,
    find_attention_modules,
    split_heads,
)
from kdforge.models.vit.vision_transformer import (
    EncoderBlock,
    VisionTransformer,
    vit_b_16,
    vit_s_16,
    vit_ti_16,
)

__all__ = [
    "QKV",
    "AttentionTap",
    "AttentionTaps",
    "EncoderBlock",
    "SelfAttention",
    "VisionTransformer",
    "attention_logits",
    "attention_tap",
    "find_attention_modules",
    "split_heads",
    "vit_b_16",
    "vit_s_16",
    "vit_ti_16",
]
