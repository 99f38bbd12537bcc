"""The detection Swin-T equals timm's ``swin_tiny_patch4_window7_224`` given the same weights.

Layouts: timm keeps the official parameter layout (patch merging concatenates the 2x2
neighbourhood position-major; each stage's merging sits at the start of the *next* stage,
``layers.{i+1}.downsample``), returns NHWC maps, and has one final ``norm`` instead of a
norm per output. The weights go through the official layout into
:func:`convert_official_swin`, so the ImageNet converter is checked too.

One genuine difference: by default timm (as the official code) switches the shift off in
a stage whose map is no larger than the window (7x7 at a 224 input: Swin-T's last stage),
while mmdetection still shifts and masks there. timm's ``always_partition=True`` keeps the
shift, and then every stage agrees.
"""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F

from kdforge.models.detection.swin import SWIN_ARCHS, SwinTransformer


def timm_to_official(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm's keys to the official release's: ``layers.{i}.downsample`` -> ``layers.{i-1}``."""
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "layers" and parts[2] == "downsample":
            parts[1] = str(int(parts[1]) - 1)
        out[".".join(parts)] = value
    return out


def pair(img_size: int, **timm_kwargs) -> tuple[torch.nn.Module, SwinTransformer]:
    torch.manual_seed(0)
    reference = timm.create_model(
        "swin_tiny_patch4_window7_224", img_size=img_size, **timm_kwargs
    ).eval()
    for p in reference.parameters():  # timm zero-initialises some; make every weight count
        p.data.normal_(0, 0.02)
    model = SwinTransformer(**SWIN_ARCHS["swin_t"]).eval()
    model.load_official(timm_to_official(reference.state_dict()))
    for i in range(4):  # the detection-only output norms: random, applied to timm's maps too
        getattr(model, f"norm{i}").weight.data.normal_(1, 0.1)
        getattr(model, f"norm{i}").bias.data.normal_(0, 0.1)
    return reference, model


def stage_differences(reference, model, size: int) -> list[float]:
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        ours = model(x)
        maps = [reference.patch_embed(x)]  # (N, H, W, C)
        for layer in reference.layers:
            maps.append(layer(maps[-1]))
    diffs = []
    for i, (out, ref) in enumerate(zip(ours, maps[1:], strict=True)):
        norm = getattr(model, f"norm{i}")
        ref = F.layer_norm(ref, ref.shape[-1:], norm.weight, norm.bias, norm.eps)
        diffs.append((out - ref.permute(0, 3, 1, 2)).abs().max().item())
    return diffs


@pytest.mark.parametrize("size", [224, 448])
def test_stage_outputs_equal_timm_with_the_shift_kept(size: int):
    reference, model = pair(size, always_partition=True)
    diffs = stage_differences(reference, model, size)
    assert max(diffs) <= 1e-5, diffs


def test_timm_default_differs_only_where_it_drops_the_shift():
    reference, model = pair(224)  # last stage 7x7 = one window: timm neither shifts nor masks
    diffs = stage_differences(reference, model, 224)
    assert max(diffs[:3]) <= 1e-5, diffs
    assert diffs[3] > 1e-4, diffs  # 10x the tolerance: a real difference, not rounding
