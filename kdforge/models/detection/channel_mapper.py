"""``ChannelMapper`` neck (mmdetection's): backbone stages mapped to one width, plus extra
levels by stride-2 convs; the neck of Deformable DETR and DINO."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from kdforge.models.detection._dense_head import ConvModule

__all__ = ["ChannelMapper"]


class ChannelMapper(nn.Module):
    """One conv (+ GroupNorm) per input stage, then ``num_outs - len(in_channels)`` extra
    3x3 stride-2 convs (+ GroupNorm), the first on the last input, the others on the
    previous output. No activation (DINO's ``act_cfg=None``).

    Keys are mmdetection's: ``convs.{i}.conv.weight``, ``convs.{i}.gn.{weight,bias}``,
    ``extra_convs.{j}.conv.weight``, ``extra_convs.{j}.gn.{weight,bias}`` (no conv bias
    before a norm: mmcv's ``bias="auto"``). Convs start Xavier-uniform with zero bias (its
    ``init_cfg``).

    Args:
        in_channels: channels of each input stage.
        out_channels: channels of every output level.
        kernel_size: kernel of the per-stage convs (1 in DINO).
        num_groups: GroupNorm groups; ``None`` for no norm (the convs then have biases).
        num_outs: output levels (``len(in_channels)`` when None).
        bias: force the conv biases on (Grounding DINO's ``bias=True``) or off; None is
            mmcv's ``"auto"``.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: int = 256,
        kernel_size: int = 1,
        num_groups: int | None = 32,
        num_outs: int | None = None,
        bias: bool | None = None,
    ) -> None:
        super().__init__()
        num_outs = len(in_channels) if num_outs is None else num_outs
        if num_outs < len(in_channels):
            raise ValueError(f"num_outs {num_outs} is below the {len(in_channels)} inputs")
        self.in_channels, self.out_channels = list(in_channels), out_channels
        pad = (kernel_size - 1) // 2
        self.convs = nn.ModuleList(
            ConvModule(
                c,
                out_channels,
                kernel_size,
                padding=pad,
                norm_groups=num_groups,
                act=False,
                bias=bias,
            )
            for c in in_channels
        )
        extra = range(len(in_channels), num_outs)
        self.extra_convs = nn.ModuleList(
            ConvModule(
                in_channels[-1] if i == len(in_channels) else out_channels,
                out_channels,
                3,
                stride=2,
                padding=1,
                norm_groups=num_groups,
                act=False,
                bias=bias,
            )
            for i in extra
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, inputs: Sequence[Tensor]) -> tuple[Tensor, ...]:
        """Stage outputs ``[(N, C_i, H_i, W_i)]`` -> ``num_outs`` levels of ``out_channels``."""
        if len(inputs) != len(self.convs):
            raise ValueError(f"expected {len(self.convs)} inputs, got {len(inputs)}")
        outs = [conv(x) for conv, x in zip(self.convs, inputs, strict=True)]
        for i, conv in enumerate(self.extra_convs):
            outs.append(conv(inputs[-1] if i == 0 else outs[-1]))
        return tuple(outs)
