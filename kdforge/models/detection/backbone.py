"""ResNet and ResNeXt backbones for detection with mmdetection's training defaults.

He et al., "Deep Residual Learning for Image Recognition", CVPR 2016; Xie et al.,
"Aggregated Residual Transformations for Deep Neural Networks", CVPR 2017 (ResNeXt:
``groups`` and ``base_width``, mmdetection's ``ResNeXt``). Parameter names are
torchvision's (``conv1``, ``bn1``, ``layer1.0.conv1`` ...), which are also mmdetection's
``ResNet``/``ResNeXt`` names, so torchvision ImageNet weights and mmdetection detector
checkpoints both load. As in every mmdetection config of RetinaNet, FCOS, ATSS
and GFL: ``frozen_stages=1`` (stem and ``layer1`` never train and stay in eval mode) and
``norm_eval=True`` (every BatchNorm keeps its running statistics: eval mode even while
the detector trains).
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from kdforge.models.factory import read_state_dict
from kdforge.models.imagenet.resnet import BasicBlock, Bottleneck

__all__ = ["ResNetBackbone"]

_SPECS: dict[int, tuple[type[BasicBlock | Bottleneck], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
}


class ResNetBackbone(nn.Module):
    """ResNet (or ResNeXt) stem and four stages returning the stage outputs ``C2..C5``.

    Args:
        depth: 18, 34, 50 or 101.
        style: ``"pytorch"`` (stride on the 3x3 conv of a Bottleneck, torchvision) or
            ``"caffe"`` (stride on its first 1x1 conv, the Detectron/MSRA weights).
        frozen_stages: freeze the stem and ``layer1..layer{frozen_stages}`` (parameters
            ``requires_grad=False``, modules in eval mode); -1 freezes nothing.
        norm_eval: keep every BatchNorm in eval mode when the model is set to train.
        norm_requires_grad: train the BatchNorm affine parameters (mmdetection's
            ``norm_cfg=dict(type="BN", requires_grad=...)``: True for RetinaNet/ATSS/GFL,
            False in the caffe FCOS configs).
        out_indices: which of ``C2..C5`` (0..3) ``forward`` returns.
        zero_init_residual: start each block's last BN at 0 (mmdetection's default).
        groups: ResNeXt cardinality of each Bottleneck's 3x3 conv (1: plain ResNet).
        base_width: ResNeXt width per group at the first stage (the "4d" of 64x4d).

    Attributes:
        feature_info: ``module``, ``num_chs`` and ``reduction`` of each returned stage.
    """

    def __init__(
        self,
        depth: int = 50,
        style: str = "pytorch",
        frozen_stages: int = 1,
        norm_eval: bool = True,
        norm_requires_grad: bool = True,
        out_indices: tuple[int, ...] = (0, 1, 2, 3),
        zero_init_residual: bool = True,
        groups: int = 1,
        base_width: int = 4,
    ) -> None:
        super().__init__()
        if depth not in _SPECS:
            raise ValueError(f"depth must be one of {sorted(_SPECS)}, got {depth}")
        if groups != 1 and _SPECS[depth][0] is not Bottleneck:
            raise ValueError(f"ResNeXt (groups={groups}) needs depth 50 or 101, got {depth}")
        if style not in ("pytorch", "caffe"):
            raise ValueError(f"style must be 'pytorch' or 'caffe', got {style!r}")
        block, depths = _SPECS[depth]
        self.depth, self.style, self.groups, self.base_width = depth, style, groups, base_width
        self.frozen_stages, self.norm_eval, self.out_indices = frozen_stages, norm_eval, out_indices
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        extra: dict[str, bool | int] = {}
        if block is Bottleneck:
            extra = {"stride_in_1x1": style == "caffe", "groups": groups, "base_width": base_width}
        self.feature_info: list[dict] = []
        in_chs = 64
        for i, n in enumerate(depths):
            width, stride = 64 * 2**i, 1 if i == 0 else 2
            blocks = []
            for j in range(n):
                blocks.append(block(in_chs, width, stride if j == 0 else 1, **extra))
                in_chs = width * block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            if i in out_indices:
                self.feature_info.append(
                    {"module": f"layer{i + 1}", "num_chs": in_chs, "reduction": 4 * 2**i}
                )
        self._init_weights(zero_init_residual)
        if not norm_requires_grad:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.requires_grad_(False)
        self._freeze_stages()

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        stages = [getattr(self, f"layer{i}") for i in range(1, self.frozen_stages + 1)]
        return [self.conv1, self.bn1, *stages]

    def _freeze_stages(self) -> None:
        for module in self._frozen_modules():
            module.eval()
            module.requires_grad_(False)

    def train(self, mode: bool = True) -> ResNetBackbone:
        """Set train/eval mode, keeping frozen stages and (with ``norm_eval``) BN in eval."""
        super().train(mode)
        for module in self._frozen_modules():
            module.eval()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        """``(N, 3, H, W)`` -> the selected stage outputs, strides 4, 8, 16, 32."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for i in range(4):
            x = getattr(self, f"layer{i + 1}")(x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)

    @property
    def arch(self) -> str:
        """``"ResNet-50"``, ``"ResNeXt-101 64x4d"`` ..."""
        if self.groups == 1:
            return f"ResNet-{self.depth}"
        return f"ResNeXt-{self.depth} {self.groups}x{self.base_width}d"

    def load_torchvision(self, path_or_state: str | Path | dict[str, Tensor]) -> ResNetBackbone:
        """Load an ImageNet ResNet/ResNeXt checkpoint (torchvision keys; ``fc.*`` dropped)."""
        state = path_or_state
        if not isinstance(state, dict):
            state = read_state_dict(path_or_state)
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        missing, unexpected = self.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"ImageNet weights do not fit {self.arch}: missing {missing[:8]}, "
                f"unexpected {unexpected[:8]}"
            )
        return self
