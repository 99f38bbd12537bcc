"""Optimizers, their parameter groups, and per-step learning-rate schedules (multistep,
cosine, poly; warm-up by step or by epoch); ``build_optimizer`` builds them from a recipe."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

if TYPE_CHECKING:
    from kdforge.distiller import Distiller
    from kdforge.engine.distributed import DistInfo

__all__ = [
    "Optimizers",
    "build_optimizer",
    "lr_factor",
    "make_optimizer",
    "make_scheduler",
    "parameter_groups",
]

# mmengine's and torchvision's normalisation layers (LocalResponseNorm has no parameters)
_NORM_LAYERS = (
    nn.modules.batchnorm._BatchNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.LocalResponseNorm,
)


def parameter_groups(
    model: nn.Module,
    lr: float,
    norm_weight_decay: float | None = None,
    bias_lr_mult: float = 1.0,
    bias_weight_decay: float | None = None,
    exclude: Iterable[int] = (),
    *,
    dwconv_weight_decay: float | None = None,
    lr_mults: Mapping[str, float] | None = None,
) -> list[dict]:
    """The trainable parameters of ``model`` as optimizer groups, by mmengine's rules.

    mmengine's ``DefaultOptimWrapperConstructor`` (``paramwise_cfg``), with absolute weight
    decays instead of multipliers (torchvision's ``--norm-weight-decay`` is the same rule):

    * lr: every ``bias`` gets ``lr * bias_lr_mult``, **except the biases of normalisation
      layers** (BatchNorm, InstanceNorm, GroupNorm, LayerNorm), which keep ``lr``.
    * weight decay, the first rule that applies: a normalisation layer's weight and bias
      get ``norm_weight_decay``; any other ``bias`` (a norm bias too when
      ``norm_weight_decay`` is None) gets ``bias_weight_decay``; a depthwise convolution's
      weight (``Conv2d`` with ``groups == in_channels``) gets ``dwconv_weight_decay``.

    * ``lr_mults`` (mmengine's ``custom_keys`` with ``lr_mult``): a parameter whose full
      name contains a key (the longest first, then alphabetical) gets ``lr * lr_mults[key]``
      and the optimizer's weight decay, instead of the two rules above (DETR's
      ``{"backbone": 0.1}``).

    A setting left at None (``bias_lr_mult`` at 1) changes nothing. So mmdetection's FCOS
    (``bias_lr_mult=2, bias_decay_mult=0``, no ``norm_decay_mult``) trains the head's
    GroupNorm biases at lr x1 without decay and its conv biases at lr x2 without decay.
    Not modelled: ``custom_keys``' ``decay_mult``, ``flat_decay_mult`` and the DCN offset
    rules (kdforge has no deformable convolution). Parameters whose ``id`` is in
    ``exclude`` are left out (they have an optimizer of their own); a parameter shared by
    several modules joins one group. Groups hold the parameters with equal settings, in
    order of first appearance; a group's missing ``lr``/``weight_decay`` is the optimizer's.
    """
    skip = set(exclude)
    keys = sorted(sorted(lr_mults or {}), key=len, reverse=True)
    groups: dict[tuple[float | None, float | None], dict] = {}
    for prefix, module in model.named_modules():
        is_norm = isinstance(module, _NORM_LAYERS)
        is_dwconv = isinstance(module, nn.Conv2d) and module.in_channels == module.groups
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in skip:
                continue
            skip.add(id(p))
            is_bias = name == "bias"
            group_lr = lr * bias_lr_mult if is_bias and not is_norm and bias_lr_mult != 1 else None
            decay = None
            key = next((k for k in keys if k in f"{prefix}.{name}"), None)
            if key is not None:
                group_lr = lr * lr_mults[key]
            elif is_norm and norm_weight_decay is not None:
                decay = norm_weight_decay
            elif is_bias and bias_weight_decay is not None:
                decay = bias_weight_decay
            elif is_dwconv and dwconv_weight_decay is not None:
                decay = dwconv_weight_decay
            if (group_lr, decay) not in groups:
                settings = {"lr": group_lr, "weight_decay": decay}
                groups[group_lr, decay] = {
                    "params": [],
                    **{k: v for k, v in settings.items() if v is not None},
                }
            groups[group_lr, decay]["params"].append(p)
    return list(groups.values())


def make_optimizer(
    params: Iterable[torch.nn.Parameter] | list[dict],
    name: str = "sgd",
    lr: float = 0.05,
    momentum: float = 0.9,
    nesterov: bool = False,
    betas: tuple[float, float] = (0.9, 0.999),
    weight_decay: float = 5e-4,
) -> torch.optim.Optimizer:
    """SGD (with momentum) or AdamW over ``params`` (tensors or optimizer groups; a group's
    own ``lr``/``weight_decay`` override the defaults given here)."""
    params = list(params)
    if name == "sgd":
        return torch.optim.SGD(
            params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay
        )
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
    raise ValueError(f"optim.name must be 'sgd' or 'adamw', got {name!r}")


def lr_factor(
    step: int,
    steps_per_epoch: int,
    epochs: int,
    name: str = "multistep",
    milestones: Iterable[int] = (),
    gamma: float = 0.1,
    min_lr_ratio: float = 0.0,
    warmup_epochs: float = 0.0,
    warmup_factor: float = 0.001,
    warmup_iters: int = 0,
    warmup_mode: str = "linear",
    warmup_by: str = "step",
    power: float = 0.9,
    iters: int | None = None,
) -> float:
    """Multiplier of the base LR at optimizer step ``step`` (0-based).

    multistep: ``gamma ** (number of milestones <= current epoch)``, i.e. mdistiller's
    epoch-wise decay (0-based epoch 150 is its 1-based epoch 151, the first decayed one).
    cosine: half a cosine from 1 to ``min_lr_ratio`` over the steps after the warm-up.
    poly: ``min_lr_ratio + (1 − min_lr_ratio)(1 − step/total)^power`` (mmsegmentation's
    ``PolyLR``). The total is ``iters`` when the schedule counts iterations, else
    ``epochs × steps_per_epoch``.
    A linear warm-up from ``warmup_factor`` to the schedule's value covers the first
    ``warmup_epochs`` (fractions allowed), or the first ``warmup_iters`` steps if set;
    ``warmup_mode="constant"`` holds ``warmup_factor`` instead (mmdetection's ``ConstantLR``).
    ``warmup_by="epoch"`` computes the warm-up factor from the epoch index alone, as
    torchvision's ``LinearLR(start_factor=warmup_factor, total_iters=warmup_epochs)`` stepped
    once per epoch: ``warmup_factor + (1 − warmup_factor) · epoch / warmup_epochs`` during the
    first ``warmup_epochs`` epochs (CAKD: 0.01, 0.208, 0.406, 0.604, 0.802, then 1).
    """
    if warmup_mode not in ("linear", "constant"):
        raise ValueError(f"schedule.warmup_mode must be linear or constant, got {warmup_mode!r}")
    if warmup_by not in ("step", "epoch"):
        raise ValueError(f"schedule.warmup_by must be step or epoch, got {warmup_by!r}")
    if warmup_by == "epoch" and warmup_iters:
        raise ValueError("schedule.warmup_by=epoch counts warmup_epochs; set warmup_iters to 0")
    epoch = step // steps_per_epoch
    warmup_steps = warmup_iters or round(warmup_epochs * steps_per_epoch)
    total_steps = iters or epochs * steps_per_epoch
    if name == "multistep":
        factor = gamma ** sum(epoch >= m for m in milestones)
    elif name == "poly":
        progress = min(step / total_steps, 1.0)
        factor = min_lr_ratio + (1 - min_lr_ratio) * (1 - progress) ** power
    elif name == "cosine":
        total = max(total_steps - warmup_steps, 1)
        progress = min(max(step - warmup_steps, 0) / total, 1.0)
        factor = min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    elif name == "constant":
        factor = 1.0
    else:
        raise ValueError(f"schedule.name must be multistep, cosine, poly or constant, got {name!r}")
    if warmup_by == "epoch":
        if epoch < warmup_epochs:
            alpha = 0.0 if warmup_mode == "constant" else epoch / warmup_epochs
            factor *= warmup_factor + (1 - warmup_factor) * alpha
    elif step < warmup_steps:
        alpha = 0.0 if warmup_mode == "constant" else step / warmup_steps
        factor *= warmup_factor + (1 - warmup_factor) * alpha
    return factor


def make_scheduler(
    optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: int, **schedule
) -> LambdaLR:
    """A ``LambdaLR`` stepped once per optimizer step, following :func:`lr_factor`."""
    min_lr = schedule.pop("min_lr", 0.0)
    base_lr = optimizer.param_groups[0]["lr"]
    schedule["min_lr_ratio"] = min_lr / base_lr if base_lr else 0.0
    lr_factor(0, steps_per_epoch, epochs, **schedule)  # fail now on a bad schedule name
    return LambdaLR(optimizer, lambda step: lr_factor(step, steps_per_epoch, epochs, **schedule))


@dataclass
class Optimizers:
    """The main optimizer and schedule, and the auxiliary ones (None without auxiliary
    parameters); ``epochs`` and ``max_steps`` as the schedule resolves them."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    auxiliary: torch.optim.Optimizer | None
    auxiliary_scheduler: torch.optim.lr_scheduler.LRScheduler | None
    epochs: int
    max_steps: int | None


def build_optimizer(
    cfg: DictConfig, distiller: Distiller, dist: DistInfo, steps_per_epoch: int
) -> Optimizers:
    """The optimizer over the student and connectors (parameter groups by the recipe), its
    schedule, and a separate optimizer for the terms' auxiliary parameters."""
    optim = cfg.optim
    lr = optim.lr
    if optim.base_batch_size:  # linear scaling rule: lr is given for base_batch_size images
        lr = optim.lr * dist.world_size * cfg.data.batch_size / optim.base_batch_size
    options = (optim.name, lr, optim.momentum, optim.nesterov, tuple(optim.betas))
    options += (optim.weight_decay,)
    aux_terms = [t for t in distiller.terms.values() if t.auxiliary_parameters()]
    aux_ids = {id(p) for t in aux_terms for p in t.auxiliary_parameters()}
    groups = parameter_groups(
        distiller,
        lr,
        optim.norm_weight_decay,
        optim.bias_lr_mult,
        optim.bias_weight_decay,
        exclude=aux_ids,
        lr_mults=dict(optim.lr_mults),
    )
    optimizer = make_optimizer(groups, *options)
    schedule = OmegaConf.to_container(cfg.schedule, resolve=True)
    epochs = schedule.pop("epochs")
    max_steps = cfg.train.max_steps
    if schedule["iters"]:  # an iteration budget (mmsegmentation style): enough epochs for it
        epochs = math.ceil(schedule["iters"] / steps_per_epoch)
        max_steps = min(max_steps or schedule["iters"], schedule["iters"])
    scheduler = make_scheduler(optimizer, steps_per_epoch, epochs, **schedule)
    auxiliary = auxiliary_scheduler = None
    if aux_terms:
        aux_groups = [
            {"params": t.auxiliary_parameters(), "lr": lr * t.auxiliary_lr_scale} for t in aux_terms
        ]
        auxiliary = make_optimizer(aux_groups, *options)
        auxiliary_scheduler = make_scheduler(auxiliary, steps_per_epoch, epochs, **schedule)
    return Optimizers(optimizer, scheduler, auxiliary, auxiliary_scheduler, epochs, max_steps)
