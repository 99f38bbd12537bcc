"""mmdetection's RetinaNet Swin-T checkpoints convert strictly; official ImageNet Swin weights
load into the backbone with the patch-merging order permuted.

The mmdetection keys are written here from its naming (``SwinTransformer``, mmcv's ``FFN``,
``PatchEmbed``/``PatchMerging``), not read from our model, so a renamed parameter fails.
"""

from __future__ import annotations

import pytest
import torch

from kdforge.errors import CheckpointError
from kdforge.models import create_model
from kdforge.models.detection import convert_mmdet
from kdforge.models.detection.swin import SwinTransformer, convert_official_swin


def _mmdet_swin_t() -> dict[str, tuple]:
    """Keys and shapes of mmdetection's Swin-T with ``out_indices=(1, 2, 3)``."""
    keys = {
        "backbone.patch_embed.projection.weight": (96, 3, 4, 4),
        "backbone.patch_embed.projection.bias": (96,),
        "backbone.patch_embed.norm.weight": (96,),
        "backbone.patch_embed.norm.bias": (96,),
    }
    for i, (depth, heads) in enumerate(zip((2, 2, 6, 2), (3, 6, 12, 24), strict=True)):
        c = 96 * 2**i
        for j in range(depth):
            p = f"backbone.stages.{i}.blocks.{j}"
            keys |= {f"{p}.norm1.weight": (c,), f"{p}.norm1.bias": (c,)}
            keys[f"{p}.attn.w_msa.relative_position_bias_table"] = (13 * 13, heads)
            keys[f"{p}.attn.w_msa.relative_position_index"] = (49, 49)  # persistent buffer
            keys |= {f"{p}.attn.w_msa.qkv.weight": (3 * c, c), f"{p}.attn.w_msa.qkv.bias": (3 * c,)}
            keys |= {f"{p}.attn.w_msa.proj.weight": (c, c), f"{p}.attn.w_msa.proj.bias": (c,)}
            keys |= {f"{p}.norm2.weight": (c,), f"{p}.norm2.bias": (c,)}
            keys |= {f"{p}.ffn.layers.0.0.weight": (4 * c, c), f"{p}.ffn.layers.0.0.bias": (4 * c,)}
            keys |= {f"{p}.ffn.layers.1.weight": (c, 4 * c), f"{p}.ffn.layers.1.bias": (c,)}
        if i < 3:
            p = f"backbone.stages.{i}.downsample"
            keys |= {f"{p}.norm.weight": (4 * c,), f"{p}.norm.bias": (4 * c,)}
            keys[f"{p}.reduction.weight"] = (2 * c, 4 * c)  # bias=False
        if i > 0:
            keys |= {f"backbone.norm{i}.weight": (c,), f"backbone.norm{i}.bias": (c,)}
    for i, c in enumerate((192, 384, 768)):  # FPN start_level=0
        keys |= {f"neck.lateral_convs.{i}.conv.weight": (256, c, 1, 1)}
        keys |= {f"neck.lateral_convs.{i}.conv.bias": (256,)}
    for i in range(5):  # fpn_convs.3: on_input, from the 768-channel stage 3
        keys[f"neck.fpn_convs.{i}.conv.weight"] = (256, 768 if i == 3 else 256, 3, 3)
        keys[f"neck.fpn_convs.{i}.conv.bias"] = (256,)
    for tower in ("cls_convs", "reg_convs"):
        for i in range(4):
            keys[f"bbox_head.{tower}.{i}.conv.weight"] = (256, 256, 3, 3)
            keys[f"bbox_head.{tower}.{i}.conv.bias"] = (256,)
    for name, out in (("retina_cls", 9 * 80), ("retina_reg", 36)):
        keys |= {f"bbox_head.{name}.weight": (out, 256, 3, 3), f"bbox_head.{name}.bias": (out,)}
    return keys


def _checkpoint() -> dict[str, torch.Tensor]:
    state = {}
    for i, (key, shape) in enumerate(_mmdet_swin_t().items()):
        state[key] = torch.full(shape, float(i))
        if key.endswith("relative_position_index"):  # mmdetection's values
            state[key] = create_model("retinanet_swin_t_fpn").state_dict()[key]
    return state


def test_mmdet_retinanet_swin_t_converts_strictly() -> None:
    state = _checkpoint()
    conversion = convert_mmdet(state, config="retinanet_swin-t-p4-w7_fpn_1x_coco_20210903.pth")
    assert conversion.name == "retinanet_swin_t_fpn"
    assert conversion.kwargs == {"num_classes": 80, "fpn_channels": 256, "feat_channels": 256,
                                 "stacked_convs": 4}  # fmt: skip
    model = create_model(conversion.name, **conversion.kwargs)
    assert set(conversion.state) == set(model.state_dict()) == set(state)
    model.load_state_dict(conversion.state)  # strict
    for key, value in state.items():
        assert torch.equal(model.state_dict()[key], value), key


def test_mmdet_swin_without_a_config_name_needs_no_style() -> None:
    assert convert_mmdet(_checkpoint()).name == "retinanet_swin_t_fpn"


def test_unsupported_swin_depths_are_refused() -> None:
    state = {k: v for k, v in _checkpoint().items() if ".stages.2.blocks.5." not in k}
    with pytest.raises(CheckpointError, match="unsupported Swin backbone"):
        convert_mmdet(state)


def test_official_patch_merging_order_is_permuted_to_the_unfold_order() -> None:
    # official: [x(0,0), x(1,0), x(0,1), x(1,1)] (dy, dx) blocks of C; unfold: c * 4 + dy * 2 + dx
    c = 2
    official = torch.arange(4 * c, dtype=torch.float)  # position p, channel k -> p * c + k
    converted = convert_official_swin({"layers.0.downsample.norm.weight": official})
    # unfold index c*4 + dy*2 + dx holds the official value of (dy, dx) = position
    # (0,0)->0, (0,1)->2, (1,0)->1, (1,1)->3 of channel c
    expected = torch.tensor([0, 4, 2, 6, 1, 5, 3, 7], dtype=torch.float)
    assert torch.equal(converted["stages.0.downsample.norm.weight"], expected)


def test_official_imagenet_weights_load_and_refuse_a_mismatch() -> None:
    torch.manual_seed(0)
    source = SwinTransformer(
        embed_dims=8, depths=(2, 2), num_heads=(1, 2), window_size=3, out_indices=(1,)
    )
    official = {}  # the same weights in the official layout and names
    for key, value in source.state_dict().items():
        if key.startswith("norm"):
            continue
        key = (
            key.replace("stages.", "layers.").replace(".w_msa.", ".").replace("projection", "proj")
        )
        key = key.replace("ffn.layers.0.0", "mlp.fc1").replace("ffn.layers.1", "mlp.fc2")
        if ".downsample." in key:  # back to position-major: unfold index c*4+dy*2+dx -> p*C+c
            value = value.reshape(*value.shape[:-1], -1, 2, 2).transpose(-1, -2)
            value = value.flatten(-2).transpose(-1, -2).flatten(-2)
        official[key] = value
    official |= {"head.weight": torch.zeros(5, 16), "norm.weight": torch.ones(16)}
    target = SwinTransformer(
        embed_dims=8, depths=(2, 2), num_heads=(1, 2), window_size=3, out_indices=(1,)
    )
    target.load_official(official)
    for key, value in source.state_dict().items():
        if not key.startswith("norm"):
            assert torch.equal(target.state_dict()[key], value), key
    with pytest.raises(CheckpointError, match="does not fit"):
        SwinTransformer(
            embed_dims=8, depths=(2, 4), num_heads=(1, 2), out_indices=(1,)
        ).load_official(official)
