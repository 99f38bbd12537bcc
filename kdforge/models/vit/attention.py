"""Self-attention with a tap point, and attention taps that work on any ViT.

The zoo's :class:`SelfAttention` keeps ``nn.MultiheadAttention``'s parameter names
(``in_proj_weight``, ``in_proj_bias``, ``out_proj``) so torchvision checkpoints load, and
passes its per-head ``(q, k, v)`` through the parameter-free :class:`QKV` submodule: a forward
hook there (``"<block>.self_attention.qkv"``) records them at no extra cost. For a
third-party block — torchvision's ``nn.MultiheadAttention``, timm's ``Attention`` (``qkv``
linear + ``num_heads``) — the same ``(q, k, v)`` are recomputed from the block's recorded
input and its projection weights (``"<path>:input"``). Nothing in torch is patched.

``attention_logits`` turns ``(q, k, v)`` into the head-averaged pre-softmax maps that CAKD
(Liu et al., ACCV 2022) distils: ``mean_h((q/√d) kᵀ)`` and ``mean_h(v vᵀ)``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdforge.taps import FeatureTaps, unwrap_model

__all__ = [
    "QKV",
    "AttentionTap",
    "AttentionTaps",
    "SelfAttention",
    "attention_logits",
    "attention_tap",
    "find_attention_modules",
    "split_heads",
]

QKVTuple = tuple[Tensor, Tensor, Tensor]


def split_heads(qkv: Tensor, num_heads: int) -> QKVTuple:
    """``(N, L, 3·E)`` packed ``[q | k | v]`` -> ``q, k, v`` of shape ``(N, heads, L, E/heads)``."""
    n, length, three_e = qkv.shape
    parts = qkv.view(n, length, 3, num_heads, three_e // (3 * num_heads))
    q, k, v = parts.permute(2, 0, 3, 1, 4).unbind(0)
    return q, k, v


def attention_logits(
    q: Tensor, k: Tensor, v: Tensor, scale_vv: bool = False
) -> tuple[Tensor, Tensor]:
    """Head-averaged pre-softmax attention maps of ``(N, heads, L, d)`` queries, keys, values.

    ``qk = mean_h((q · d^-½) kᵀ)`` and ``vv = mean_h(v vᵀ)``, times ``d^-½`` if ``scale_vv``;
    both ``(N, L, L)``. CAKD's released teacher leaves ``vv`` unscaled; its student
    projector scales both.
    """
    scale = q.shape[-1] ** -0.5
    qk = ((q * scale) @ k.transpose(-2, -1)).mean(dim=1)
    vv = (v @ v.transpose(-2, -1)).mean(dim=1)
    return qk, vv * scale if scale_vv else vv


class QKV(nn.Module):
    """Identity on ``(q, k, v)``: a named point where a forward hook can record them."""

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> QKVTuple:
        return q, k, v


class SelfAttention(nn.Module):
    """Multi-head self-attention with ``nn.MultiheadAttention``'s parameters, init and math.

    Args:
        embed_dim: token width ``E``.
        num_heads: heads; ``E`` must divide evenly.
        dropout: dropout on the attention weights while training (torchvision ViT: 0).
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.dropout = num_heads, dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        self.qkv = QKV()
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        n, length, dim = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # (N, L, 3E)
        q, k, v = self.qkv(*split_heads(qkv, self.num_heads))  # each (N, h, L, d)
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)  # (N, h, L, d)
        return self.out_proj(out.transpose(1, 2).reshape(n, length, dim))


def _is_timm_attention(module: nn.Module) -> bool:
    return isinstance(getattr(module, "qkv", None), nn.Linear) and hasattr(module, "num_heads")


def _supported(module: nn.Module) -> bool:
    return isinstance(module, (SelfAttention, nn.MultiheadAttention)) or _is_timm_attention(module)


def find_attention_modules(model: nn.Module) -> list[str]:
    """Paths of the self-attention blocks :func:`attention_tap` can read, in forward order."""
    return [path for path, m in unwrap_model(model).named_modules() if _supported(m)]


@dataclass(frozen=True)
class AttentionTap:
    """Where to record one block's attention and how to turn the record into ``(q, k, v)``.

    ``tap`` is a :class:`~kdforge.FeatureTaps` path; :meth:`qkv` maps what it recorded to
    per-head ``(N, heads, L, d)`` tensors. Build it with :func:`attention_tap`.
    """

    path: str
    tap: str
    module: nn.Module

    def qkv(self, recorded: Any) -> QKVTuple:
        m = self.module
        if isinstance(m, SelfAttention):
            return recorded
        x = recorded  # the block's input (its query), (N, L, E)
        if isinstance(m, nn.MultiheadAttention):
            if not m.batch_first:
                x = x.transpose(0, 1)  # (L, N, E) -> (N, L, E)
            if m.in_proj_weight is not None:
                packed = F.linear(x, m.in_proj_weight, m.in_proj_bias)
            else:  # separate q/k/v projection weights
                weight = torch.cat([m.q_proj_weight, m.k_proj_weight, m.v_proj_weight])
                packed = F.linear(x, weight, m.in_proj_bias)
            return split_heads(packed, m.num_heads)
        q, k, v = split_heads(m.qkv(x), m.num_heads)  # timm Attention
        q_norm, k_norm = getattr(m, "q_norm", None), getattr(m, "k_norm", None)
        return (q_norm(q) if q_norm else q), (k_norm(k) if k_norm else k), v


def attention_tap(model: nn.Module, path: str | None = None) -> AttentionTap:
    """Resolve the attention block at ``path`` (default: the last one) of ``model``.

    Zoo blocks are read from their ``.qkv`` tap point; ``nn.MultiheadAttention`` and timm
    ``Attention`` blocks from their first positional input (a torchvision encoder block calls
    ``self_attention(x, x, x)``), recomputing ``(q, k, v)`` with the block's weights.
    """
    model = unwrap_model(model)
    found = find_attention_modules(model)
    if path is None:
        if not found:
            raise ValueError(
                f"{type(model).__name__} has no self-attention block kdforge can read "
                "(kdforge SelfAttention, nn.MultiheadAttention, or timm-style `qkv` + `num_heads`)"
            )
        path = found[-1]
    module = model.get_submodule(path)
    if not _supported(module):
        raise TypeError(
            f"{path!r} is a {type(module).__name__}, not a self-attention block kdforge can "
            f"read; attention blocks of this model: {found or 'none'}"
        )
    tap = f"{path}.qkv" if isinstance(module, SelfAttention) else f"{path}:input"
    return AttentionTap(path, tap, module)


class AttentionTaps:
    """Record per-head ``(q, k, v)`` of attention blocks during a forward pass.

    Example:
        >>> with AttentionTaps(vit) as taps:  # every block; or AttentionTaps(vit, [path])
        ...     vit(images)
        ...     qk, vv = taps.logits()["encoder.layers.encoder_layer_11.self_attention"]

    Args:
        model: a ViT (zoo, torchvision or timm).
        paths: attention block paths; default all of :func:`find_attention_modules`.
    """

    def __init__(self, model: nn.Module, paths: Iterable[str] | None = None) -> None:
        paths = find_attention_modules(model) if paths is None else list(paths)
        self.taps = [attention_tap(model, p) for p in paths]
        self._features = FeatureTaps(model, [t.tap for t in self.taps])

    def qkv(self) -> dict[str, QKVTuple]:
        """``{path: (q, k, v)}`` of the last forward pass, each ``(N, heads, L, d)``."""
        recorded = self._features.outputs
        return {t.path: t.qkv(recorded[t.tap]) for t in self.taps}

    def logits(self, scale_vv: bool = False) -> dict[str, tuple[Tensor, Tensor]]:
        """``{path: (qk, vv)}``: :func:`attention_logits` of each block, ``(N, L, L)``."""
        return {path: attention_logits(*qkv, scale_vv) for path, qkv in self.qkv().items()}

    def remove(self) -> None:
        """Remove the hooks; the model is left as it was."""
        self._features.remove()

    def __enter__(self) -> AttentionTaps:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
