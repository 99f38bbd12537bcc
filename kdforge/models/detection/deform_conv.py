"""Deformable convolution v1 (Dai et al., "Deformable Convolutional Networks", ICCV 2017)
in plain PyTorch, with mmcv's ``DeformConv2d``/``DeformConv2dPack`` semantics.

Each kernel point ``(i, j)`` of output pixel ``(oh, ow)`` samples the input at
``(oh * stride_h - pad_h + i * dil_h + dy, ow * stride_w - pad_w + j * dil_w + dx)`` by
bilinear interpolation; a neighbour outside the map counts as 0, so a sample at or beyond
one pixel outside gives 0 (mmcv's and torchvision's kernels alike). The sampled columns
then meet the weight in one matrix product; autograd gives the backward pass.

Offset layout (mmcv and ``torchvision.ops.deform_conv2d`` share it): ``offset`` is
``(N, 2 * deform_groups * kh * kw, out_h, out_w)``; channel ``g * 2 * kh * kw + 2 * k``
is ``dy`` and ``+ 1`` is ``dx`` of kernel point ``k = i * kw + j`` in deform group ``g``,
and deform group ``g`` moves input channels ``[g * C / deform_groups, (g + 1) * C /
deform_groups)``.

Memory: the sampled columns of one call, ``(N, C * kh * kw, out_h * out_w)``, are built
in chunks of images (or of output rows, for a large image) of at most :data:`CHUNK_BYTES`;
with several chunks and autograd recording, each chunk is recomputed in the backward pass
(``torch.utils.checkpoint``) instead of being kept, as mmcv's kernel recomputes its columns.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair
from torch.utils.checkpoint import checkpoint

__all__ = ["CHUNK_BYTES", "DeformConv2d", "deform_conv2d"]

CHUNK_BYTES = 256 * 2**20  # most bytes of sampled columns built at once (256 MiB)

IntPair = int | tuple[int, int]


def _output_size(size: int, kernel: int, stride: int, pad: int, dilation: int) -> int:
    return (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1


def _check(
    x: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None, groups: int, dg: int
) -> None:
    for name, t in (("input", x), ("offset", offset), ("weight", weight)):
        if t.dim() != 4:
            raise ValueError(f"deform_conv2d: {name} must be 4-D, got shape {tuple(t.shape)}")
    channels, out_c = x.shape[1], weight.shape[0]
    if groups < 1 or channels % groups or out_c % groups or weight.shape[1] * groups != channels:
        raise ValueError(
            f"deform_conv2d: weight {tuple(weight.shape)} with groups={groups} does not fit "
            f"{channels} input channels (need weight.shape[1] * groups == channels)"
        )
    if dg < 1 or channels % dg:
        raise ValueError(f"deform_conv2d: deform_groups={dg} must divide {channels} channels")
    if bias is not None and tuple(bias.shape) != (out_c,):
        raise ValueError(f"deform_conv2d: bias must have shape ({out_c},), got {tuple(bias.shape)}")


def _columns_to_output(
    x: Tensor,
    offset: Tensor,
    weight: Tensor,
    row0: int,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
    dg: int,
) -> Tensor:
    """Output rows ``row0 .. row0 + offset.shape[2]`` of the images in ``x`` (no bias)."""
    n, c, h, w = x.shape
    out_c, _, kh, kw = weight.shape
    k, rows, out_w = kh * kw, offset.shape[2], offset.shape[3]
    # positions in float32 at least: a bf16 position is off by up to half a pixel at 100
    dtype = torch.promote_types(offset.dtype, torch.float32)
    dev = x.device
    off = offset.to(dtype).view(n, dg, k, 2, rows, out_w)
    ki = torch.arange(kh, device=dev, dtype=dtype).repeat_interleave(kw) * dilation[0]  # (k,)
    kj = torch.arange(kw, device=dev, dtype=dtype).repeat(kh) * dilation[1]
    oy = (torch.arange(rows, device=dev, dtype=dtype) + row0) * stride[0] - padding[0]
    ox = torch.arange(out_w, device=dev, dtype=dtype) * stride[1] - padding[1]
    ys = (ki[:, None] + oy)[:, :, None] + off[:, :, :, 0]  # (n, dg, k, rows, out_w)
    xs = (kj[:, None] + ox)[:, None, :] + off[:, :, :, 1]
    # pixel p -> grid_sample's normalised (2p + 1) / size - 1 (align_corners=False);
    # its zero padding gives 0 to the neighbours outside the map, as mmcv does
    grid = torch.stack([(2 * xs + 1) / w - 1, (2 * ys + 1) / h - 1], -1)
    sampled = F.grid_sample(
        x.to(dtype).reshape(n * dg, c // dg, h, w),
        grid.view(n * dg, k * rows, out_w, 2),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    )  # (n * dg, c / dg, k * rows, out_w)
    columns = sampled.to(x.dtype).view(n, groups, c // groups * k, rows * out_w)
    out = torch.matmul(weight.view(groups, out_c // groups, -1), columns)  # (n, g, O/g, L)
    return out.reshape(n, out_c, rows, out_w)


def deform_conv2d(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    groups: int = 1,
    deform_groups: int = 1,
    *,
    max_bytes: int | None = None,
) -> Tensor:
    """Deformable convolution v1 (offset layout in the module docstring).

    Args:
        input: ``(N, C, H, W)``.
        offset: ``(N, 2 * deform_groups * kh * kw, out_h, out_w)``, ``(dy, dx)`` pairs.
        weight: ``(O, C / groups, kh, kw)``.
        bias: ``(O,)`` or None.
        stride, padding, dilation, groups: as :func:`torch.nn.functional.conv2d`.
        deform_groups: channel groups that share one offset field.
        max_bytes: chunk budget for the sampled columns (default :data:`CHUNK_BYTES`).

    Returns:
        ``(N, O, out_h, out_w)``.
    """
    _check(input, offset, weight, bias, groups, deform_groups)
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    n, c, h, w = input.shape
    kh, kw = weight.shape[2:]
    out_h = _output_size(h, kh, stride[0], padding[0], dilation[0])
    out_w = _output_size(w, kw, stride[1], padding[1], dilation[1])
    expected = (n, 2 * deform_groups * kh * kw, out_h, out_w)
    if out_h < 1 or out_w < 1 or tuple(offset.shape) != expected:
        raise ValueError(
            f"deform_conv2d: offset must have shape {expected} for input {tuple(input.shape)}, "
            f"kernel {kh}x{kw}, stride {stride}, padding {padding}, dilation {dilation}; "
            f"got {tuple(offset.shape)}"
        )
    args = (stride, padding, dilation, groups, deform_groups)
    itemsize = max(input.element_size(), 4)  # sampling runs in float32 at least
    row_bytes = c * kh * kw * out_w * itemsize
    budget = CHUNK_BYTES if max_bytes is None else max_bytes
    rows = max(1, budget // row_bytes)
    images = max(1, rows // out_h) if rows >= out_h else 1
    rows = min(rows, out_h)
    if images >= n and rows == out_h:  # one chunk: nothing to recompute
        out = _columns_to_output(input, offset, weight, 0, *args)
    else:
        recompute = torch.is_grad_enabled() and any(
            t.requires_grad for t in (input, offset, weight)
        )
        parts = []
        for i in range(0, n, images):
            x_i, row_parts = input[i : i + images], []
            for r in range(0, out_h, rows):
                off = offset[i : i + images, :, r : r + rows]
                if recompute:
                    part = checkpoint(
                        _columns_to_output, x_i, off, weight, r, *args, use_reentrant=False
                    )
                else:
                    part = _columns_to_output(x_i, off, weight, r, *args)
                row_parts.append(part)
            parts.append(torch.cat(row_parts, 2))
        out = torch.cat(parts)
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out


class DeformConv2d(nn.Module):
    """Deformable convolution whose offsets come from its own ``conv_offset`` (mmcv's
    ``DeformConv2dPack``, registered there as ``"DCN"``).

    ``conv_offset`` is a plain ``nn.Conv2d`` with the same kernel, stride, padding and
    dilation, ``2 * deform_groups * kh * kw`` outputs and a bias, both zero at
    construction (so the layer starts as an ordinary convolution); ``weight`` starts
    Kaiming-uniform as mmcv's. Parameter names are mmcv's (``weight``,
    ``conv_offset.weight``, ``conv_offset.bias``), so mmdetection DCN checkpoints load.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups: as
            ``nn.Conv2d``.
        deform_groups: channel groups sharing one offset field.
        bias: add a learnable bias (mmcv's ``DeformConv2d`` has none).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair,
        stride: IntPair = 1,
        padding: IntPair = 0,
        dilation: IntPair = 1,
        groups: int = 1,
        deform_groups: int = 1,
        bias: bool = False,
    ) -> None:
        super().__init__()
        if groups < 1 or in_channels % groups or out_channels % groups:
            raise ValueError(
                f"DeformConv2d: groups={groups} must divide in_channels={in_channels} and "
                f"out_channels={out_channels}"
            )
        if deform_groups < 1 or in_channels % deform_groups:
            raise ValueError(
                f"DeformConv2d: deform_groups={deform_groups} must be a positive divisor of "
                f"in_channels={in_channels}"
            )
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = _pair(kernel_size), _pair(stride)
        self.padding, self.dilation = _pair(padding), _pair(dilation)
        self.groups, self.deform_groups = groups, deform_groups
        self.weight = nn.Parameter(
            torch.empty(out_channels, in_channels // groups, *self.kernel_size)
        )
        self.register_parameter("bias", nn.Parameter(torch.zeros(out_channels)) if bias else None)
        kh, kw = self.kernel_size
        self.conv_offset = nn.Conv2d(
            in_channels,
            2 * deform_groups * kh * kw,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            bias=True,
        )
        nn.init.kaiming_uniform_(self.weight, nonlinearity="relu")
        self.reset_offset()

    def reset_offset(self) -> None:
        """Zero ``conv_offset``: every kernel point back on its regular grid position."""
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C, H, W)`` -> ``(N, O, out_h, out_w)``."""
        return deform_conv2d(
            x,
            self.conv_offset(x),
            self.weight,
            self.bias,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            self.deform_groups,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
            f"groups={self.groups}, deform_groups={self.deform_groups}, "
            f"bias={self.bias is not None}"
        )
