"""Feature Pyramid Network (Lin et al., 2017, "Feature Pyramid Networks for Object Detection").

mmdetection's ``FPN`` with ``start_level=1``, ``num_outs=5``: 1x1 lateral convs on
``C3..C5``, nearest-neighbour top-down sums, 3x3 output convs give ``P3..P5``, and two
stride-2 3x3 convs give ``P6`` (from ``C5`` with ``add_extra_convs="on_input"``,
RetinaNet; from ``P5`` with ``"on_output"``, FCOS/ATSS/GFL) and ``P7`` (from ``P6``, after
a ReLU with ``relu_before_extra_convs``, FCOS). No activation; no norm and conv biases, or
GroupNorm after every conv without biases (``norm_groups``, RepPoints' ``fpn-gn``).
Every pyramid level is the output of the module ``fpn_convs.{i}``, so forward hooks on
``neck.fpn_convs.0`` .. ``neck.fpn_convs.4`` read ``P3`` .. ``P7``. Faster R-CNN uses
``start_level=0`` and ``add_extra_convs=None``: ``P2..P5`` from ``fpn_convs.0..3`` and
``P6`` = 1x1 max-pool with stride 2 of ``P5`` (the parameter-free ``extra_pools.0``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from kdforge.models.detection._dense_head import ConvModule

__all__ = ["FPN"]


class FPN(nn.Module):
    """FPN with mmdetection's parameter names (``lateral_convs.{i}.conv``, ``fpn_convs.{i}.conv``).

    Args:
        in_channels: channels of every backbone output (``C2..C5``).
        out_channels: channels of every pyramid level.
        start_level: first backbone output used (1: ``C3``).
        num_outs: pyramid levels; those beyond the backbone come from extra convs.
        add_extra_convs: source of the first extra level: ``"on_input"`` (last backbone
            output), ``"on_lateral"`` (last lateral) or ``"on_output"`` (last pyramid level);
            ``None``: every extra level is a stride-2 max-pool of the previous one.
        relu_before_extra_convs: apply a (non in-place) ReLU before the second and later
            extra convs.
        norm_groups: GroupNorm groups after every conv (mmdetection's ``norm_cfg=dict(
            type="GN", num_groups=32)``, RepPoints); the convs then have no bias. ``None``: no
            norm, conv biases.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: int = 256,
        start_level: int = 1,
        num_outs: int = 5,
        add_extra_convs: str | None = "on_input",
        relu_before_extra_convs: bool = False,
        norm_groups: int | None = None,
    ) -> None:
        super().__init__()
        if add_extra_convs not in ("on_input", "on_lateral", "on_output", None):
            raise ValueError(f"unknown add_extra_convs {add_extra_convs!r}")
        self.in_channels = tuple(in_channels)
        self.start_level, self.num_outs = start_level, num_outs
        self.add_extra_convs = add_extra_convs
        self.relu_before_extra_convs = relu_before_extra_convs
        self.lateral_convs = nn.ModuleList()
        self.fpn_convs = nn.ModuleList()
        for chs in self.in_channels[start_level:]:
            self.lateral_convs.append(
                ConvModule(chs, out_channels, 1, norm_groups=norm_groups, act=False)
            )
            self.fpn_convs.append(
                ConvModule(
                    out_channels, out_channels, 3, padding=1, norm_groups=norm_groups, act=False
                )
            )
        num_extra = num_outs - len(self.lateral_convs)
        # mmdetection's F.max_pool2d(x, 1, stride=2), as modules so that hooks can read them
        self.extra_pools = nn.ModuleList(
            nn.MaxPool2d(1, stride=2) for _ in range(num_extra if add_extra_convs is None else 0)
        )
        for i in range(num_extra if add_extra_convs is not None else 0):
            chs = self.in_channels[-1] if i == 0 and add_extra_convs == "on_input" else out_channels
            self.fpn_convs.append(
                ConvModule(chs, out_channels, 3, 2, 1, norm_groups=norm_groups, act=False)
            )
        for m in self.modules():  # mmdetection: Xavier-uniform weights, zero biases
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, inputs: Sequence[Tensor]) -> tuple[Tensor, ...]:
        """Backbone outputs ``C2..C5`` -> ``num_outs`` levels (``P3..P7``, strides 8-128,
        for ``start_level=1``)."""
        if len(inputs) != len(self.in_channels):
            raise ValueError(f"FPN expects {len(self.in_channels)} inputs, got {len(inputs)}")
        laterals = [conv(inputs[i + self.start_level]) for i, conv in enumerate(self.lateral_convs)]
        for i in range(len(laterals) - 1, 0, -1):  # top-down: upsample and add
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[2:], mode="nearest"
            )
        used = len(laterals)
        outs = [self.fpn_convs[i](laterals[i]) for i in range(used)]
        for pool in self.extra_pools:
            outs.append(pool(outs[-1]))
        if self.num_outs > used and self.add_extra_convs is not None:
            source = {
                "on_input": inputs[-1],
                "on_lateral": laterals[-1],
                "on_output": outs[-1],
            }[self.add_extra_convs]
            outs.append(self.fpn_convs[used](source))
            for i in range(used + 1, self.num_outs):
                x = F.relu(outs[-1]) if self.relu_before_extra_convs else outs[-1]
                outs.append(self.fpn_convs[i](x))
        return tuple(outs)
