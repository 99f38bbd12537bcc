"""ViT zoo: torchvision keys, counts and logits; attention taps on zoo and third-party blocks."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from kdforge.models import create_model
from kdforge.models.vit import (
    AttentionTaps,
    VisionTransformer,
    attention_logits,
    attention_tap,
    find_attention_modules,
)

PARAMS = {"vit_b_16": 86_567_656, "vit_s_16": 22_050_664, "vit_ti_16": 5_717_416}
# torchvision EncoderBlock keys in state_dict order, with shapes (D width, M MLP width).
BLOCK_KEYS = """ln_1.weight D; ln_1.bias D; self_attention.in_proj_weight 3D,D;
self_attention.in_proj_bias 3D; self_attention.out_proj.weight D,D; self_attention.out_proj.bias D;
ln_2.weight D; ln_2.bias D; mlp.0.weight M,D; mlp.0.bias M; mlp.3.weight D,M; mlp.3.bias D"""


class TVEncoderBlock(nn.Module):
    """Stand-in for torchvision's ``EncoderBlock``: the same modules and forward, from torch."""

    def __init__(self, heads: int, dim: int, mlp_dim: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=1e-6)
        self.self_attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.dropout = nn.Dropout(0.0)
        self.ln_2 = nn.LayerNorm(dim, eps=1e-6)
        hidden = [nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(0.0)]
        self.mlp = nn.Sequential(*hidden, nn.Linear(mlp_dim, dim), nn.Dropout(0.0))

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        x = self.ln_1(inp)
        x, _ = self.self_attention(x, x, x, need_weights=False)
        x = self.dropout(x) + inp
        return x + self.mlp(self.ln_2(x))


class TVViT(nn.Module):
    """Stand-in for torchvision's ``VisionTransformer`` (``vision_transformer.py``) layout."""

    def __init__(self, image: int, patch: int, layers: int, heads: int, dim: int, mlp: int, k: int):
        super().__init__()
        self.patch = patch
        self.conv_proj = nn.Conv2d(3, dim, patch, patch)
        self.class_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.encoder = nn.Module()
        self.encoder.pos_embedding = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, dim))
        self.encoder.dropout = nn.Dropout(0.0)
        blocks = OrderedDict(
            (f"encoder_layer_{i}", TVEncoderBlock(heads, dim, mlp)) for i in range(layers)
        )
        self.encoder.layers = nn.Sequential(blocks)
        self.encoder.ln = nn.LayerNorm(dim, eps=1e-6)
        self.heads = nn.Sequential(OrderedDict(head=nn.Linear(dim, k)))

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = self.conv_proj(img).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_token.expand(len(x), -1, -1), x], 1) + self.encoder.pos_embedding
        x = self.encoder.ln(self.encoder.layers(self.encoder.dropout(x)))
        return self.heads(x[:, 0])


class TimmAttention(nn.Module):
    """Stand-in for timm's ``Attention``: fused ``qkv`` linear, ``num_heads``, q/k norms."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm, self.k_norm = nn.LayerNorm(self.head_dim), nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, dim = x.shape
        q, k, v = self.qkv(x).reshape(n, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        out = nn.functional.scaled_dot_product_attention(self.q_norm(q), self.k_norm(k), v)
        return self.proj(out.transpose(1, 2).reshape(n, length, dim))


def _tiny() -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(32, 8, 2, 4, 64, 128, num_classes=10).eval()


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_torchvision_keys_shapes_and_counts(name: str) -> None:
    model = create_model(name)
    dim, mlp, depth = model.hidden_dim, 4 * model.hidden_dim, len(model.encoder.layers)
    sizes = {"D": dim, "3D": 3 * dim, "M": mlp}
    expected = [("class_token", (1, 1, dim)), ("conv_proj.weight", (dim, 3, 16, 16))]
    expected += [("conv_proj.bias", (dim,)), ("encoder.pos_embedding", (1, 197, dim))]
    for i in range(depth):
        for key, shape in (item.split() for item in BLOCK_KEYS.split(";")):
            dims = tuple(sizes[s] for s in shape.split(","))
            expected.append((f"encoder.layers.encoder_layer_{i}.{key}", dims))
    expected += [("encoder.ln.weight", (dim,)), ("encoder.ln.bias", (dim,))]
    expected += [("heads.head.weight", (1000, dim)), ("heads.head.bias", (1000,))]
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == expected
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name]
    assert model.get_classifier() is model.get_submodule(model.classifier_name)


def test_torchvision_checkpoint_loads_and_gives_the_same_logits(tmp_path) -> None:
    torch.manual_seed(0)
    reference = TVViT(224, 16, 12, 3, 192, 768, 1000).eval()  # ViT-Ti/16 in torchvision layout
    torch.save(reference.state_dict(), tmp_path / "vit_ti.pth")
    model = create_model("vit_ti_16", pretrained=tmp_path / "vit_ti.pth").eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="224x224"):
        model(torch.randn(1, 3, 64, 64))


def test_init_follows_torchvision() -> None:
    model = _tiny()
    assert not model.class_token.any() and not model.heads.head.weight.any()
    assert not model.conv_proj.bias.any()
    block = model.encoder.layers.encoder_layer_0
    assert not block.self_attention.in_proj_bias.any()
    assert not block.self_attention.out_proj.bias.any()
    assert block.mlp[0].bias.abs().max() < 1e-4  # normal(std=1e-6)
    assert [type(m) for m in block.mlp] == [nn.Linear, nn.GELU, nn.Dropout, nn.Linear, nn.Dropout]


def test_zoo_tap_logits_match_a_direct_computation() -> None:
    model, x = _tiny(), torch.randn(2, 3, 32, 32)
    normed = {}
    block = model.encoder.layers.encoder_layer_1
    handle = block.ln_1.register_forward_hook(lambda m, i, out: normed.update(x=out))
    with torch.no_grad(), AttentionTaps(model) as taps:
        model(x)
        logits = taps.logits()
    handle.remove()
    assert list(logits) == model.attention_paths
    attn = block.self_attention
    q, k, v = (normed["x"] @ attn.in_proj_weight.T + attn.in_proj_bias).chunk(3, dim=-1)
    heads, d = 4, 16
    qk = torch.zeros(2, 17, 17)
    vv = torch.zeros(2, 17, 17)
    for h in range(heads):
        sl = slice(h * d, (h + 1) * d)
        qk += (q[..., sl] / d**0.5) @ k[..., sl].transpose(1, 2) / heads
        vv += v[..., sl] @ v[..., sl].transpose(1, 2) / heads
    got_qk, got_vv = logits[model.attention_paths[1]]
    torch.testing.assert_close(got_qk, qk, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_vv, vv, atol=1e-5, rtol=1e-5)
    with torch.no_grad(), AttentionTaps(model, [model.attention_paths[1]]) as one:
        model(x)
        _, scaled = attention_logits(*one.qkv()[model.attention_paths[1]], scale_vv=True)
    torch.testing.assert_close(scaled, vv / d**0.5, atol=1e-5, rtol=1e-5)


def test_torchvision_block_recomputed_from_its_input_agrees_with_the_zoo_tap() -> None:
    zoo = _tiny()
    tv = TVViT(32, 8, 2, 4, 64, 128, 10).eval()
    tv.load_state_dict(zoo.state_dict())
    x = torch.randn(2, 3, 32, 32)
    assert find_attention_modules(tv) == zoo.attention_paths
    tap = attention_tap(tv)
    assert tap.tap == "encoder.layers.encoder_layer_1.self_attention:input"
    assert attention_tap(zoo).tap == "encoder.layers.encoder_layer_1.self_attention.qkv"
    with torch.no_grad(), AttentionTaps(zoo) as a, AttentionTaps(tv) as b:
        torch.testing.assert_close(zoo(x), tv(x), atol=1e-5, rtol=1e-5)
        for path in zoo.attention_paths:
            for mine, theirs in zip(a.logits()[path], b.logits()[path], strict=True):
                torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)
    assert not any(m._forward_hooks for m in tv.modules())  # removed on exit


def test_timm_style_attention_is_recomputed_with_its_norms() -> None:
    torch.manual_seed(0)
    block = nn.Sequential(OrderedDict(norm=nn.LayerNorm(32), attn=TimmAttention(32, 4)))
    x = torch.randn(2, 5, 32)
    with torch.no_grad(), AttentionTaps(block) as taps:
        block(x)
        (qk, vv) = taps.logits()["attn"]
    attn = block.attn
    q, k, v = attn.qkv(block.norm(x)).reshape(2, 5, 3, 4, 8).permute(2, 0, 3, 1, 4)
    q = attn.q_norm(q)
    torch.testing.assert_close(qk, (q @ k.transpose(-2, -1) / 8**0.5).mean(1))
    torch.testing.assert_close(vv, (v @ v.transpose(-2, -1)).mean(1))


def test_attention_tap_errors_name_the_blocks() -> None:
    model = _tiny()
    with pytest.raises(TypeError, match="encoder_layer_0.self_attention"):
        attention_tap(model, "encoder.ln")
    with pytest.raises(ValueError, match="no self-attention block"):
        attention_tap(nn.Linear(2, 2))
