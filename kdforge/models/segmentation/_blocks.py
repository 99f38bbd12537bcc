"""Conv-BN-ReLU with mmcv ``ConvModule`` parameter names, and mmsegmentation's initialisation."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["ConvBNReLU", "init_weights"]


class ConvBNReLU(nn.Module):
    """Conv (no bias) -> BatchNorm -> ReLU, named ``conv``, ``bn``, ``activate`` as in mmcv.

    mmsegmentation builds every head layer as ``ConvModule(..., norm_cfg=SyncBN)``, whose
    state-dict keys are ``conv.weight`` and ``bn.{weight,bias,running_mean,...}``. The
    ReLU (ReLU6 for MobileNetV2) is in place; ``act=None`` leaves it out (the linear
    projection of an inverted residual).
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 1,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        act: type[nn.Module] | None = nn.ReLU,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_chs, out_chs, kernel_size, stride, padding, dilation, groups, bias=False
        )
        self.bn = nn.BatchNorm2d(out_chs)
        self.activate = act(inplace=True) if act is not None else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn(self.conv(x))
        return self.activate(x) if self.activate is not None else x


def init_weights(module: nn.Module) -> None:
    """mmsegmentation's default init: Kaiming-normal convs (fan_out, ReLU), BN at (1, 0).

    The pixel classifiers (``conv_seg``) are re-initialised by their heads afterwards.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
