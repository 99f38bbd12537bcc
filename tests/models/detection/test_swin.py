"""Swin Transformer backbone: sizes of mmdetection's Swin-T/S/B, the shifted-window mask and
relative position index on small hand-checked cases, padding, freezing, activation
checkpointing, bf16 autocast, and RetinaNet Swin-T FPN in the zoo."""

from __future__ import annotations

import pytest
import torch

from kdforge import FeatureTaps
from kdforge.models import create_model
from kdforge.models.detection.swin import (
    SWIN_ARCHS,
    SwinTransformer,
    relative_position_index,
    shifted_window_mask,
)

# Parameters of mmdetection's SwinTransformer (default out_indices=(0, 1, 2, 3)), counted from
# its code with C the stage width, h its heads, window 7 (a (2*7-1)^2 = 169-row bias table):
#   patch embed: conv 4x4 3->C0 + bias, LayerNorm        48*C0 + C0 + 2*C0 = 51*C0
#   block: norm1 2C, table 169h, qkv 3C*C+3C, proj C*C+C, norm2 2C, fc1 4C*C+4C, fc2 4C*C+C
#        = 12*C^2 + 13*C + 169*h
#   merging C -> 2C: LayerNorm(4C) 8C, reduction 4C*2C without bias = 8*C^2 + 8*C
#   output norms norm0..3: 2*(C0 + C1 + C2 + C3)
# Swin-T (C0 96, depths 2 2 6 2, heads 3 6 12 24):
#   51*96 = 4896; blocks 2*112347 + 2*445878 + 6*1776492 + 2*7091928
#   = 224694 + 891756 + 10658952 + 14183856; merging 74496 + 296448 + 1182720;
#   norms 2*1440 = 2880; total 27520698
# Swin-S (depths 2 2 18 2): stage 2 is 18*1776492 = 31976856 instead of 10658952: 48838602
# Swin-B (C0 128, heads 4 8 16 32): 51*128 = 6528; blocks 2*198948 + 2*791112 + 18*3155088
#   + 2*12601632 = 397896 + 1582224 + 56791584 + 25203264; merging 132096 + 526336 + 2101248;
#   norms 2*1920 = 3840; total 86745016
SIZES = {"swin_t": 27_520_698, "swin_s": 48_838_602, "swin_b": 86_745_016}


@pytest.mark.parametrize("arch", SIZES)
def test_parameter_counts_equal_mmdetection(arch: str) -> None:
    model = SwinTransformer(**SWIN_ARCHS[arch])
    assert sum(p.numel() for p in model.parameters()) == SIZES[arch]


def test_relative_position_index_on_a_2x2_window() -> None:
    # tokens (y, x): 0=(0,0) 1=(0,1) 2=(1,0) 3=(1,1); index (dy+1)*3 + (dx+1), d = a - b
    expected = torch.tensor([[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]])
    assert torch.equal(relative_position_index(2), expected)
    assert relative_position_index(7).max() == 13 * 13 - 1


def test_shifted_window_mask_on_a_4x4_map() -> None:
    # window 2, shift 1: row/column bands [0, 2) -> 0, [2, 3) -> 1, [3, 4) -> 2; region 3*r + c
    #   0 0 1 2
    #   0 0 1 2
    #   3 3 4 5
    #   6 6 7 8
    # windows (row-major) hold regions [0,0,0,0], [1,2,1,2], [3,3,6,6], [4,5,7,8]
    mask = shifted_window_mask(4, 4, 2, 1)
    x = -100.0
    expected = torch.tensor(
        [
            [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]],
            [[0, x, 0, x], [x, 0, x, 0], [0, x, 0, x], [x, 0, x, 0]],
            [[0, 0, x, x], [0, 0, x, x], [x, x, 0, 0], [x, x, 0, 0]],
            [[0, x, x, x], [x, 0, x, x], [x, x, 0, x], [x, x, x, 0]],
        ]
    )
    assert torch.equal(mask, expected)


def _tiny(**kwargs) -> SwinTransformer:
    torch.manual_seed(0)
    kwargs.setdefault("out_indices", (0, 1))
    return SwinTransformer(embed_dims=16, depths=(2, 2), num_heads=(2, 4), window_size=3, **kwargs)


def test_inputs_not_divisible_are_padded_at_the_bottom_right() -> None:
    model = _tiny(drop_path_rate=0.0).eval()
    x = torch.randn(1, 3, 21, 26)  # patches: 6x7 (26 -> 28 padded); windows of 3 pad 7 -> 9
    with torch.no_grad():
        outs = model(x)
        padded = model(torch.nn.functional.pad(x, (0, 2)))  # the patch padding, by hand
    assert [o.shape for o in outs] == [(1, 16, 6, 7), (1, 32, 3, 4)]  # ceil(7 / 2) = 4
    torch.testing.assert_close(outs[0], padded[0])
    # each token's output depends on its own window only: a change at the bottom-right
    # corner leaves the top-left window of the first (unshifted) block's output unchanged
    block = model.stages[0].blocks[0]
    tokens = torch.randn(1, 6 * 7, 16)
    changed = tokens.clone()
    changed[0, -1] += 1.0
    with torch.no_grad():
        a, b = block(tokens, (6, 7)).view(6, 7, 16), block(changed, (6, 7)).view(6, 7, 16)
    torch.testing.assert_close(a[:3, :3], b[:3, :3])
    assert not torch.allclose(a[3:, 6:], b[3:, 6:])


def test_frozen_stages_stay_frozen_in_train_mode() -> None:
    model = _tiny(frozen_stages=1, out_indices=(0, 1)).train()
    frozen = [model.patch_embed, model.stages[0], model.norm0]
    assert all(not p.requires_grad for m in frozen for p in m.parameters())
    assert all(not m.training for f in frozen for m in f.modules())
    assert all(p.requires_grad for p in model.stages[1].parameters())
    assert model.stages[1].training and model.norm1.training
    assert all(p.requires_grad for p in _tiny().parameters())  # -1: nothing frozen


def test_activation_checkpointing_gives_the_same_outputs_and_gradients() -> None:
    plain = _tiny(drop_path_rate=0.0).train()
    ckpt = _tiny(drop_path_rate=0.0, with_cp=True).train()
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 24, 28, requires_grad=True)
    grads = []
    for model in (plain, ckpt):
        outs = model(x)
        sum(o.square().mean() for o in outs).backward()
        grads.append(({n: p.grad.clone() for n, p in model.named_parameters()}, outs))
    for name, grad in grads[0][0].items():
        torch.testing.assert_close(grads[1][0][name], grad, msg=name)
    for a, b in zip(grads[0][1], grads[1][1], strict=True):
        torch.testing.assert_close(a, b)


def test_drop_path_is_stochastic_in_training_only() -> None:
    model = _tiny(drop_path_rate=0.5)
    x = torch.randn(4, 3, 24, 24)
    with torch.no_grad():
        model.eval()
        torch.testing.assert_close(model(x)[0], model(x)[0])
        model.train()
        torch.manual_seed(1)
        first = model(x)[0]
        assert not torch.allclose(first, model(x)[0])


def test_bf16_autocast_runs_the_detector() -> None:
    model = create_model("retinanet_swin_t_fpn", num_classes=3).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(1, 3, 64, 64))
    assert all(t.dtype == torch.bfloat16 for t in out["cls"])
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0]]), "labels": torch.tensor([1])}]
    losses = model.loss(out, targets, (64, 64))
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert model.backbone.patch_embed.projection.weight.grad is not None


def test_retinanet_swin_t_follows_the_mmdetection_config() -> None:
    model = create_model("retinanet_swin_t_fpn", num_classes=3).eval()
    backbone, neck = model.backbone, model.neck
    assert backbone.out_indices == (1, 2, 3) and backbone.frozen_stages == -1
    rates = [b.attn.drop_path_rate for s in backbone.stages for b in s.blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.2) and len(rates) == 12
    assert neck.in_channels == (192, 384, 768) and neck.start_level == 0
    assert neck.add_extra_convs == "on_input" and neck.fpn_convs[3].conv.in_channels == 768
    info = model.feature_info
    assert [i["name"] for i in info] == ["C3", "C4", "C5", "P3", "P4", "P5", "P6", "P7"]
    with FeatureTaps(model, [i["module"] for i in info]) as taps, torch.no_grad():
        model(torch.randn(2, 3, 64, 96))
        for entry in info:
            h, w = -(-64 // entry["reduction"]), -(-96 // entry["reduction"])
            assert taps.outputs[entry["module"]].shape == (2, entry["num_chs"], h, w), entry
