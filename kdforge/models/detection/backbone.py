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

Deformable convolution (Dai et al., ICCV 2017): with mmdetection's
``dcn=dict(type="DCN", deform_groups=1, fallback_on_stride=False)`` and ``stage_with_dcn``,
the 3x3 ``conv2`` of every Bottleneck in the chosen stages is a
:class:`~kdforge.models.detection.deform_conv.DeformConv2d` (keys ``conv2.weight``,
``conv2.conv_offset.weight``, ``conv2.conv_offset.bias``, as mmcv's ``DeformConv2dPack``);
its offsets start at zero, as mmdetection's ``ResNet.init_weights`` leaves them.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from torch import Tensor, nn

from kdforge.models.detection.deform_conv import DeformConv2d
from kdforge.models.factory import read_state_dict
from kdforge.models.imagenet.resnet import BasicBlock, Bottleneck

__all__ = ["ResNetBackbone"]

_SPECS: dict[int, tuple[type[BasicBlock | Bottleneck], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
}
_DCN_KEYS = {"type", "deform_groups", "fallback_on_stride"}


def _dcn_deform_groups(
    dcn: dict | None, stage_with_dcn: tuple[bool, ...] | list[bool], depth: int
) -> int | None:
    """The deform groups of the DCN stages, or None when no stage uses DCN; bad values
    raise ``ValueError`` naming the fix."""
    if (
        not isinstance(stage_with_dcn, tuple | list)
        or len(stage_with_dcn) != 4
        or not all(isinstance(v, bool) for v in stage_with_dcn)
    ):
        raise ValueError(f"stage_with_dcn must be 4 booleans (one per stage), got {stage_with_dcn}")
    if dcn is None:
        if any(stage_with_dcn):
            raise ValueError(
                f"stage_with_dcn={stage_with_dcn} needs dcn, e.g. dcn=dict(type='DCN', "
                "deform_groups=1, fallback_on_stride=False)"
            )
        return None
    if not isinstance(dcn, dict) or set(dcn) - _DCN_KEYS:
        raise ValueError(f"dcn must be a dict with keys among {sorted(_DCN_KEYS)}, got {dcn!r}")
    if dcn.get("type", "DCN") != "DCN":
        raise ValueError(
            f"dcn type {dcn['type']!r} is not supported: only 'DCN' (deformable convolution "
            "v1, mmcv's DeformConv2dPack)"
        )
    groups = dcn.get("deform_groups", 1)
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"dcn deform_groups must be a positive integer, got {groups!r}")
    fallback = dcn.get("fallback_on_stride", False)
    if not isinstance(fallback, bool):
        raise ValueError(f"dcn fallback_on_stride must be a boolean, got {fallback!r}")
    if _SPECS[depth][0] is not Bottleneck:
        raise ValueError(f"DCN needs Bottleneck blocks (depth 50 or 101), got depth {depth}")
    # as mmdetection's Bottleneck: fallback_on_stride=True keeps every conv2 plain
    return None if fallback or not any(stage_with_dcn) else groups


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
        dcn: mmdetection's DCN settings (``type`` ``"DCN"``, ``deform_groups``,
            ``fallback_on_stride``; True there keeps plain convolutions, as in
            mmdetection), or None.
        stage_with_dcn: which of the four stages get deformable ``conv2`` layers.

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
        dcn: dict | None = None,
        stage_with_dcn: tuple[bool, bool, bool, bool] = (False, False, False, False),
    ) -> None:
        super().__init__()
        if depth not in _SPECS:
            raise ValueError(f"depth must be one of {sorted(_SPECS)}, got {depth}")
        deform_groups = _dcn_deform_groups(dcn, stage_with_dcn, depth)
        if groups != 1 and _SPECS[depth][0] is not Bottleneck:
            raise ValueError(f"ResNeXt (groups={groups}) needs depth 50 or 101, got {depth}")
        if style not in ("pytorch", "caffe"):
            raise ValueError(f"style must be 'pytorch' or 'caffe', got {style!r}")
        block, depths = _SPECS[depth]
        self.depth, self.style, self.groups, self.base_width = depth, style, groups, base_width
        self.frozen_stages, self.norm_eval, self.out_indices = frozen_stages, norm_eval, out_indices
        self.stage_with_dcn = tuple(deform_groups is not None and s for s in stage_with_dcn)
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        extra: dict[str, object] = {}
        if block is Bottleneck:
            extra = {"stride_in_1x1": style == "caffe", "groups": groups, "base_width": base_width}
        self.feature_info: list[dict] = []
        in_chs = 64
        for i, n in enumerate(depths):
            width, stride = 64 * 2**i, 1 if i == 0 else 2
            blocks, kwargs = [], dict(extra)
            if self.stage_with_dcn[i]:
                kwargs["conv2_layer"] = partial(DeformConv2d, deform_groups=deform_groups)
            for j in range(n):
                blocks.append(block(in_chs, width, stride if j == 0 else 1, **kwargs))
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
        for m in self.modules():  # after the loop above gave each conv_offset Kaiming weights
            if isinstance(m, DeformConv2d):
                m.reset_offset()
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
        name = f"ResNet-{self.depth}"
        if self.groups > 1:
            name = f"ResNeXt-{self.depth} {self.groups}x{self.base_width}d"
        return name + (" DCN" if any(self.stage_with_dcn) else "")

    def load_torchvision(self, path_or_state: str | Path | dict[str, Tensor]) -> ResNetBackbone:
        """Load an ImageNet ResNet/ResNeXt checkpoint (torchvision keys; ``fc.*`` dropped;
        DCN offsets, absent there, stay zero as in mmdetection)."""
        state = path_or_state
        if not isinstance(state, dict):
            state = read_state_dict(path_or_state)
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if ".conv_offset." not in k]
        if missing or unexpected:
            raise ValueError(
                f"ImageNet weights do not fit {self.arch}: missing {missing[:8]}, "
                f"unexpected {unexpected[:8]}"
            )
        return self
