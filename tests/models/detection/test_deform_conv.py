"""Deformable convolution in plain torch and the DCN ResNet/ResNeXt backbone (#18)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdforge.models.detection import build_detector
from kdforge.models.detection.backbone import ResNetBackbone
from kdforge.models.detection.deform_conv import DeformConv2d, deform_conv2d

DCN = {"type": "DCN", "deform_groups": 1, "fallback_on_stride": False}
C3_C5 = (False, True, True, True)


def _offset_shape(n, dg, k, h, w, stride, pad, dil):
    out = [(s + 2 * pad - dil * (k - 1) - 1) // stride + 1 for s in (h, w)]
    return (n, 2 * dg * k * k, *out)


@pytest.mark.parametrize(
    "stride, padding, dilation, groups, deform_groups",
    [(1, 1, 1, 1, 1), (2, 1, 1, 2, 2), (1, 2, 2, 1, 4), (2, 0, 1, 4, 1)],
)
def test_zero_offsets_equal_conv2d(stride, padding, dilation, groups, deform_groups) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 9, 11, generator=g)
    weight = torch.randn(12, 8 // groups, 3, 3, generator=g)
    bias = torch.randn(12, generator=g)
    shape = _offset_shape(2, deform_groups, 3, 9, 11, stride, padding, dilation)
    args = (stride, padding, dilation, groups)
    ours = deform_conv2d(x, torch.zeros(shape), weight, bias, *args, deform_groups)
    torch.testing.assert_close(ours, F.conv2d(x, weight, bias, *args), rtol=1e-5, atol=1e-5)


def test_integer_offset_is_a_shifted_convolution() -> None:
    """dy = +1, dx = -2 on every kernel point moves the window one row down and two columns
    left: output (oh, ow) is the plain convolution's window at (oh + 1, ow - 2) of the
    zero-padded map (reads outside the map give 0)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 3, 7, 8, generator=g)
    weight = torch.randn(4, 3, 3, 3, generator=g)
    offset = torch.zeros(1, 18, 7, 8)
    offset[:, 0::2], offset[:, 1::2] = 1.0, -2.0
    ours = deform_conv2d(x, offset, weight, padding=1)
    # with 3 pixels of zero padding, window (oh + 1, ow - 2) of padding 1 starts at
    # padded row oh + 1 - 1 + 3 and padded column ow - 2 - 1 + 3
    windows = F.conv2d(F.pad(x, (3, 3, 3, 3)), weight)  # (1, 4, 11, 12)
    torch.testing.assert_close(ours, windows[:, :, 3:10, 0:8], rtol=1e-5, atol=1e-5)


def test_bilinear_samples_by_hand() -> None:
    """A 1x1 kernel on a 2x3 map: a half-pixel move averages two pixels, a quarter move
    weights them 3:1, a sample half a pixel outside keeps half the border pixel, and one
    a whole pixel or more outside reads 0 (mmcv's and torchvision's rule)."""
    x = torch.tensor([[[[1.0, 2.0, 4.0], [8.0, 16.0, 32.0]]]])
    moves = {  # output pixel (row, col) -> (dy, dx), expected value
        (0, 0): ((0.0, 0.5), 1.5),
        (0, 1): ((0.25, 0.0), 0.75 * 2 + 0.25 * 16),
        (0, 2): ((0.0, 0.5), 0.5 * 4),
        (1, 0): ((0.0, -1.0), 0.0),
        (1, 1): ((1.0, 0.0), 0.0),
        (1, 2): ((-0.5, -0.5), 0.25 * (2 + 4 + 16 + 32)),
    }
    offset = torch.zeros(1, 2, 2, 3)
    expected = torch.zeros(1, 1, 2, 3)
    for (row, col), ((dy, dx), value) in moves.items():
        offset[0, :, row, col] = torch.tensor([dy, dx])
        expected[0, 0, row, col] = value
    torch.testing.assert_close(deform_conv2d(x, offset, torch.ones(1, 1, 1, 1)), expected)


def _random_case(dtype, seed=0, n=2, c=4, h=5, w=6, groups=2, dg=2, stride=1, dil=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g, dtype=dtype)
    weight = torch.randn(6, c // groups, 3, 3, generator=g, dtype=dtype) / 3
    bias = torch.randn(6, generator=g, dtype=dtype)
    shape = _offset_shape(n, dg, 3, h, w, stride, 1, dil)
    offset = torch.randn(shape, generator=g, dtype=dtype) * 1.5  # some samples leave the map
    tensors = [t.requires_grad_() for t in (x, offset, weight, bias)]
    return tensors, (stride, 1, dil, groups, dg)


@pytest.mark.parametrize("max_bytes", [None, 1])
def test_gradcheck_float64(max_bytes) -> None:
    """Autograd's backward against finite differences, one chunk and (max_bytes=1) one
    output row per chunk, recomputed in the backward pass."""
    tensors, args = _random_case(torch.float64, n=1, h=4, w=5)

    def fn(x, offset, weight, bias):
        return deform_conv2d(x, offset, weight, bias, *args, max_bytes=max_bytes)

    assert torch.autograd.gradcheck(fn, tensors)


@pytest.mark.parametrize("max_bytes", [1, 4 * 9 * 6 * 4 * 3, 4 * 9 * 6 * 5 * 4 + 1])
def test_chunked_equals_unchunked(max_bytes) -> None:
    """Row chunks (1 and 3 rows of one image) and image chunks (1 image of 5 rows) give
    the values and gradients of a single pass."""
    tensors, args = _random_case(torch.float32, seed=3, n=3)
    upstream = torch.randn(3, 6, 5, 6, generator=torch.Generator().manual_seed(4))
    results = []
    for budget in (None, max_bytes):
        out = deform_conv2d(*tensors, *args, max_bytes=budget)
        grads = torch.autograd.grad((out * upstream).sum(), tensors)
        results.append((out, *grads))
    for single, chunked in zip(*results, strict=True):
        torch.testing.assert_close(chunked, single, rtol=1e-6, atol=1e-6)


def test_no_grad_chunks_are_not_checkpointed() -> None:
    tensors, args = _random_case(torch.float32, seed=5)
    with torch.no_grad():
        out = deform_conv2d(*tensors, *args, max_bytes=1)
    assert out.grad_fn is None
    torch.testing.assert_close(out, deform_conv2d(*tensors, *args).detach())


@pytest.mark.parametrize(
    "change, message",
    [
        ({"offset": torch.zeros(1, 18, 4, 4)}, "offset must have shape"),
        ({"weight": torch.zeros(2, 3, 3, 3)}, "does not fit 4 input channels"),
        ({"deform_groups": 3}, "deform_groups=3 must divide 4"),
        ({"bias": torch.zeros(3)}, r"bias must have shape \(2,\)"),
        ({"input": torch.zeros(4, 5, 5)}, "input must be 4-D"),
    ],
)
def test_bad_arguments_are_named(change, message) -> None:
    kwargs = {
        "input": torch.zeros(1, 4, 5, 5),
        "offset": torch.zeros(1, 18, 5, 5),
        "weight": torch.zeros(2, 4, 3, 3),
        "padding": 1,
        **change,
    }
    with pytest.raises(ValueError, match=message):
        deform_conv2d(**kwargs)


def test_module_keys_and_zero_initial_offsets() -> None:
    torch.manual_seed(0)
    layer = DeformConv2d(8, 16, 3, stride=2, padding=1, groups=2, deform_groups=2)
    shapes = {k: tuple(v.shape) for k, v in layer.state_dict().items()}
    assert shapes == {
        "weight": (16, 4, 3, 3),
        "conv_offset.weight": (36, 8, 3, 3),  # 2 deform groups x 9 points x (dy, dx)
        "conv_offset.bias": (36,),
    }
    x = torch.randn(2, 8, 9, 9)
    expected = F.conv2d(x, layer.weight, None, 2, 1, 1, 2)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="deform_groups=3"):
        DeformConv2d(8, 16, 3, deform_groups=3)


def _resnext_offset_params(widths_blocks, deform_groups=1) -> int:
    """mmcv's DeformConv2dPack adds conv_offset = Conv2d(width, dg * 2 * 9, 3, bias=True)
    to each DCN Bottleneck of mmdetection's ResNet/ResNeXt (its conv2 weight keeps the
    plain grouped shape)."""
    return sum(b * (w * deform_groups * 18 * 9 + deform_groups * 18) for w, b in widths_blocks)


@pytest.mark.parametrize(
    "groups, plain_with_fc, total",
    [
        # RepPoints' X101 DCN teacher (reppoints-moment_x101-dconv-c3-c5_fpn-gn_head-gn_2x:
        # ResNeXt-101 32x4d); timm's resnext101_32x4d: 44,177,704 parameters with its fc
        (32, 44_177_704, 44_700_508),
        # ResNeXt-101 64x4d; torchvision documents 83,455,272 parameters with its fc
        (64, 83_455_272, 86_549_340),
    ],
)
def test_x101_dcn_c3_c5_keys_and_parameter_count(groups, plain_with_fc, total) -> None:
    """mmdetection's ResNeXt-101 with dcn=DCN, stage_with_dcn=(F, T, T, T): keys and size."""
    with torch.device("meta"):
        backbone = ResNetBackbone(101, groups=groups, base_width=4, dcn=DCN, stage_with_dcn=C3_C5)
    # stage widths floor(64 * 2**i * 4 / 64) * groups for stages 2-4 (i = 1, 2, 3)
    widths = [64 * 2**i * 4 // 64 * groups for i in (1, 2, 3)]
    state = {k: tuple(v.shape) for k, v in backbone.state_dict().items()}
    assert state["layer2.0.conv2.weight"] == (widths[0], 4 * 2, 3, 3)
    assert state["layer2.0.conv2.conv_offset.weight"] == (18, widths[0], 3, 3)
    assert state["layer4.2.conv2.conv_offset.bias"] == (18,)
    assert "layer1.0.conv2.conv_offset.weight" not in state
    assert sum(".conv_offset.weight" in k for k in state) == 4 + 23 + 3
    plain = plain_with_fc - (2048 * 1000 + 1000)
    offsets = _resnext_offset_params(zip(widths, (4, 23, 3), strict=True))
    assert sum(p.numel() for p in backbone.parameters()) == plain + offsets == total
    assert backbone.arch == f"ResNeXt-101 {groups}x4d DCN"


def test_dcn_backbone_keeps_plain_keys_and_starts_as_the_plain_one() -> None:
    """Same keys as the plain ResNet-50 plus the offsets; with zero offsets and the same
    weights both compute the same features; ImageNet weights load (offsets stay 0)."""
    torch.manual_seed(0)
    plain = ResNetBackbone(50, frozen_stages=-1).eval()
    dcn = ResNetBackbone(50, frozen_stages=-1, dcn=DCN, stage_with_dcn=C3_C5).eval()
    extra = set(dcn.state_dict()) - set(plain.state_dict())
    assert not set(plain.state_dict()) - set(dcn.state_dict())
    assert extra and all(".conv2.conv_offset." in k for k in extra)
    assert all(dcn.state_dict()[k].abs().sum() == 0 for k in extra)
    assert isinstance(dcn.layer1[0].conv2, nn.Conv2d)
    assert isinstance(dcn.layer2[0].conv2, DeformConv2d) and dcn.layer2[0].conv2.stride == (2, 2)
    dcn.load_torchvision(plain.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(dcn(x), plain(x), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_fallback_on_stride_keeps_plain_convolutions() -> None:
    """mmdetection builds a plain conv2 whenever fallback_on_stride is True."""
    with torch.device("meta"):
        backbone = ResNetBackbone(50, dcn={**DCN, "fallback_on_stride": True}, stage_with_dcn=C3_C5)
    assert not any(isinstance(m, DeformConv2d) for m in backbone.modules())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"stage_with_dcn": C3_C5}, "needs dcn"),
        ({"dcn": DCN, "stage_with_dcn": (True, False)}, "4 booleans"),
        ({"dcn": {**DCN, "type": "DCNv2"}, "stage_with_dcn": C3_C5}, "'DCNv2' is not supported"),
        ({"dcn": {"deform_group": 1}, "stage_with_dcn": C3_C5}, "keys among"),
        ({"dcn": {"deform_groups": 0}, "stage_with_dcn": C3_C5}, "positive integer"),
        ({"dcn": DCN, "stage_with_dcn": C3_C5, "depth": 18}, "Bottleneck"),
    ],
)
def test_bad_dcn_settings_are_named(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message), torch.device("meta"):
        ResNetBackbone(**kwargs)


def test_build_detector_passes_dcn_to_the_backbone() -> None:
    with torch.device("meta"):
        model = build_detector("retinanet", 50, dcn=DCN, stage_with_dcn=(False, False, True, True))
    kinds = [
        isinstance(getattr(model.backbone, f"layer{i}")[0].conv2, DeformConv2d)
        for i in (1, 2, 3, 4)
    ]
    assert kinds == [False, False, True, True]


def test_bfloat16_autocast_samples_at_float32_positions() -> None:
    """Under CPU bf16 autocast the offsets arrive in bf16; positions and sampling run in
    float32 (a bf16 position near 40 would be off by up to 0.125 pixel), the matmul in bf16."""
    torch.manual_seed(0)
    layer = DeformConv2d(8, 8, 3, padding=1)
    nn.init.normal_(layer.conv_offset.weight, std=0.1)
    x = torch.randn(1, 8, 48, 48, requires_grad=True)
    reference = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    torch.testing.assert_close(out.float(), reference, rtol=0.05, atol=0.05)
