"""CAKD's learnable parts (Liu et al., ACCV 2022), laid out as in the released code.

Parameter names, shapes and registration order follow ``yufanLIU/CrossArch_KD``
(``Attention``/``GLProj`` in ``cakd_modified_files/resnet.py``, ``NLayerDiscriminator`` in
``new_utils.py``), all with PyTorch's default initialisation, so released weights map
one-to-one (``pca_proj.*``, ``gl_proj.*``, ``cls_proj.*`` of ``resnet50_cakd``).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn

from kdforge.models.vit.attention import attention_logits, split_heads

__all__ = [
    "GroupLinearProjector",
    "PartialCrossAttentionProjector",
    "PatchDiscriminator",
    "token_groups",
]

# Token count -> side of the square token grid that the released code splits into 4x4 blocks.
_GROUPED_GRIDS = {196: 14, 49: 7}
_BLOCK = 4


class PartialCrossAttentionProjector(nn.Module):
    """PCA projector: the student's head-averaged pre-softmax ``q·kᵀ`` and ``v·vᵀ``.

    ``q, k, v = chunk(tokens @ W_qkvᵀ, 3)`` split into ``heads`` of ``dim_head``;
    ``A_qk = mean_h(q kᵀ)·dim_head^-½`` and ``A_vv = mean_h(v vᵀ)·dim_head^-½``, each
    ``(N, L, L)``, no softmax. ``to_out`` (Linear + Dropout) is kept for checkpoint
    compatibility only: the released code builds it but discards its output, so it never
    gets a gradient; here it is frozen (``requires_grad=False``, so DDP needs no
    ``find_unused_parameters``) and not computed.

    Args:
        dim: token width ``C`` (1024 for ResNet-50 ``layer3``).
        heads: number of heads (16).
        dim_head: width per head (64; the released student uses ``C / 16``).
        dropout: dropout of ``to_out`` (0).
    """

    def __init__(
        self, dim: int = 1024, heads: int = 16, dim_head: int = 64, dropout: float = 0.0
    ) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_qkv = nn.Linear(dim, 3 * inner, bias=False)
        project_out = not (heads == 1 and dim_head == dim)
        self.to_out = (
            nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))
            if project_out
            else nn.Identity()
        )
        self.to_out.requires_grad_(False)

    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """``(N, L, dim)`` -> ``(A_qk, A_vv)``, each ``(N, L, L)``."""
        q, k, v = split_heads(self.to_qkv(tokens), self.heads)  # each (N, h, L, d)
        return attention_logits(q, k, v, scale_vv=True)


def token_groups(num_tokens: int) -> list[Tensor]:
    """Token indices of each group of :class:`GroupLinearProjector` (row-major, ``14·row + col``).

    196 tokens (14x14): 16 blocks with row/col ranges {0–3, 4–7, 8–11, 12–13}, block
    ``i`` = row block ``i // 4``, col block ``i % 4``. 49 tokens (7x7): 4 blocks over
    {0–3, 4–6}². Any other count: one group of all tokens.
    """
    side = _GROUPED_GRIDS.get(num_tokens)
    if side is None:
        return [torch.arange(num_tokens)]
    grid = torch.arange(num_tokens).view(side, side)
    starts = range(0, side, _BLOCK)
    return [grid[r : r + _BLOCK, c : c + _BLOCK].flatten() for r in starts for c in starts]


class GroupLinearProjector(nn.Module):
    """GL projector: one ``Linear(in_dim, out_dim)`` per spatial block of tokens.

    Linears are ``layers.fc_layer_{i}`` (16 for 196 tokens, 4 for 49, else 1 shared), each
    applied to its block's tokens (see :func:`token_groups`). Output ``(N, L, out_dim)``.

    Args:
        in_dim: student token width (1024).
        out_dim: teacher token width (768).
        num_tokens: tokens per image (196).
    """

    def __init__(self, in_dim: int = 1024, out_dim: int = 768, num_tokens: int = 196) -> None:
        super().__init__()
        groups = token_groups(num_tokens)
        self.num_tokens, self.out_dim = num_tokens, out_dim
        fcs = OrderedDict((f"fc_layer_{i}", nn.Linear(in_dim, out_dim)) for i in range(len(groups)))
        self.layers = nn.Sequential(fcs)
        for i, index in enumerate(groups):
            self.register_buffer(f"_group_{i}", index, persistent=False)  # not in state_dict

    def forward(self, tokens: Tensor) -> Tensor:
        """``(N, L, in_dim)`` -> ``(N, L, out_dim)``."""
        if tokens.shape[1] != self.num_tokens:
            raise ValueError(f"expected {self.num_tokens} tokens, got {tokens.shape[1]}")
        if len(self.layers) == 1:
            return self.layers[0](tokens)
        out = tokens.new_empty(tokens.shape[0], self.num_tokens, self.out_dim)
        for i, fc in enumerate(self.layers):
            index = getattr(self, f"_group_{i}")
            out[:, index] = fc(tokens[:, index])
        return out


class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator (pix2pix ``NLayerDiscriminator``) pooled to one logit per map.

    ``model``: Conv(k4, s2) + LeakyReLU(0.2); ``n_layers - 1`` × [Conv(k4, s2, no bias) + BN +
    LeakyReLU]; Conv(k4, s1, no bias) + BN + LeakyReLU; Conv(k4, s1) to 1 channel;
    AdaptiveAvgPool2d(1). Widths ``ndf·min(2^i, 8)``. Input ``(N, input_nc, L, L)``, output
    ``(N, 1, 1, 1)`` logits. CAKD: ``input_nc=1, ndf=8, n_layers=3``.
    """

    def __init__(self, input_nc: int = 1, ndf: int = 8, n_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(input_nc, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, 4, stride, 1, bias=False),
                nn.BatchNorm2d(ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        layers += [nn.Conv2d(ndf * mult, 1, 4, 1, 1), nn.AdaptiveAvgPool2d(1)]
        self.model = nn.Sequential(*layers)
        self.n_layers = n_layers

    def min_input_size(self) -> int:
        """Smallest input side every convolution still has an output for (24 for 3 layers)."""
        # two stride-1 k4 convs need 3 pixels; each stride-2 k4 conv needs twice its output
        return 3 * 2**self.n_layers

    def forward(self, maps: Tensor) -> Tensor:
        return self.model(maps)
