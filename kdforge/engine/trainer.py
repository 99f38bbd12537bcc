"""A small training loop: AMP, gradient clipping, DDP, atomic checkpoints, exact resume."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from kdforge.distiller import Distiller
from kdforge.engine.checkpoint import save_checkpoint
from kdforge.engine.distributed import DistInfo, all_reduce_sum
from kdforge.engine.ema import ModelEMA
from kdforge.engine.logging import RunLogger
from kdforge.taps import unwrap_model

__all__ = ["AMP_DTYPES", "NonFiniteLossError", "Trainer", "seed_everything"]

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# Checkpoint entries only resuming needs: kept in last.pt, left out of best.pt.
RESUME_ONLY_KEYS = ("optimizer", "scheduler", "scaler", "aux_optimizer", "aux_scheduler")


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite; the run stopped before stepping on it."""


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    # Every epoch starts from RNG state that depends only on (seed, epoch, rank), so a run
    # resumed at an epoch boundary draws the same crops, flips and shuffles as one never
    # stopped, without saving generator states.
    return seed + 1009 * epoch + 1_000_003 * rank


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _to_device(value: Any, device: torch.device) -> Any:
    """Move the tensors of a (nested) batch of targets; leave everything else as it is."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    return value


class Trainer:
    """Train a :class:`~kdforge.Distiller` (possibly DDP-wrapped) epoch by epoch.

    Each epoch: reseed, train with a progress bar (each loss term, images/s, ETA),
    evaluate the student with ``evaluate_fn``, log, and write ``last.pt`` (everything needed
    to resume) and, when ``metric`` improves, ``best.pt`` (the same without optimizer and
    scheduler states) atomically in ``run_dir``.

    Args:
        model: the Distiller, or DistributedDataParallel around it.
        optimizer: optimizer over the trainable parameters.
        scheduler: LR scheduler stepped after every optimizer step.
        train_loader: yields ``(inputs, targets)``.
        evaluate_fn: ``student -> {metric: value}``.
        run_dir: where checkpoints and logs go.
        epochs: total number of epochs.
        dist: process/device information.
        metric: the key of ``evaluate_fn``'s result that selects ``best.pt`` (higher is better).
        amp: "none", "bf16" or "fp16" (fp16 with a gradient scaler, CUDA only).
        clip_grad_norm: clip the global gradient norm to this value, if set.
        seed: base seed; each epoch reseeds from (seed, epoch, rank).
        max_steps: stop after this many optimizer steps in total.
        eval_every: evaluate every this many epochs (and after the last).
        log_every: steps between log records.
        logger: where records go (created in ``run_dir`` if None).
        meta: extra entries stored in every checkpoint (e.g. the config).
        aux_optimizer: optimizer of the terms' auxiliary parameters (see
            :class:`~kdforge.losses.LossTerm`), stepped on their ``auxiliary_loss`` before
            the main step; ``aux_scheduler`` is its LR schedule.
        ema: a :class:`~kdforge.engine.ema.ModelEMA` of the student, updated after each
            step and evaluated alongside it (``ema_<metric>`` in the logs).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        train_loader: Iterable,
        evaluate_fn: Callable[[nn.Module], dict[str, float]],
        run_dir: str | Path,
        epochs: int,
        dist: DistInfo | None = None,
        metric: str = "top1",
        amp: str = "none",
        clip_grad_norm: float | None = None,
        seed: int = 0,
        max_steps: int | None = None,
        eval_every: int = 1,
        log_every: int = 20,
        logger: RunLogger | None = None,
        meta: dict[str, Any] | None = None,
        aux_optimizer: torch.optim.Optimizer | None = None,
        aux_scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        ema: ModelEMA | None = None,
    ) -> None:
        self.dist = dist or DistInfo()
        if amp not in AMP_DTYPES:
            raise ValueError(f"train.amp must be one of {list(AMP_DTYPES)}, got {amp!r}")
        if amp == "fp16" and self.dist.device.type != "cuda":
            raise ValueError("train.amp=fp16 needs CUDA (its gradient scaler); use bf16 instead")
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.train_loader, self.evaluate_fn = train_loader, evaluate_fn
        self.run_dir, self.epochs, self.metric = Path(run_dir), epochs, metric
        self.amp_dtype = AMP_DTYPES[amp]
        self.scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None
        self.clip_grad_norm, self.seed, self.max_steps = clip_grad_norm, seed, max_steps
        self.eval_every, self.log_every = eval_every, log_every
        self.logger = logger or RunLogger(self.run_dir, enabled=self.dist.is_main)
        self.meta = meta or {}
        self.epoch = 0  # completed epochs
        self.step = 0  # optimizer steps taken
        self.best: float | None = None
        self.aux_optimizer, self.aux_scheduler, self.ema = aux_optimizer, aux_scheduler, ema
        self.aux_params = [
            p for g in (aux_optimizer.param_groups if aux_optimizer else []) for p in g["params"]
        ]
        self.params = [p for g in optimizer.param_groups for p in g["params"]]

    @property
    def distiller(self) -> Distiller:
        return unwrap_model(self.model)

    # -- checkpoints -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "student": self.distiller.student.state_dict(),
            "terms": self.distiller.terms.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "aux_optimizer": self.aux_optimizer.state_dict() if self.aux_optimizer else None,
            "aux_scheduler": self.aux_scheduler.state_dict() if self.aux_scheduler else None,
            "ema": self.ema.state_dict() if self.ema else None,
            "epoch": self.epoch,
            "step": self.step,
            "best": self.best,
            **self.meta,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.distiller.student.load_state_dict(state["student"])
        self.distiller.terms.load_state_dict(state["terms"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.aux_optimizer:
            self.aux_optimizer.load_state_dict(state["aux_optimizer"])
            self.aux_scheduler.load_state_dict(state["aux_scheduler"])
        if self.ema:
            self.ema.load_state_dict(state["ema"])
        self.epoch, self.step, self.best = state["epoch"], state["step"], state["best"]

    def _save(self, metrics: dict[str, float]) -> None:
        if not self.dist.is_main:
            return
        state = self.state_dict() | {"metrics": metrics}
        save_checkpoint(state, self.run_dir / "last.pt")
        value = metrics.get(self.metric)
        if value is not None and (self.best is None or value >= self.best):
            self.best = value
            # best.pt selects weights; resuming reads last.pt, so the optimizer states
            # (as large as the model again) are left out of it.
            weights = {k: v for k, v in state.items() if k not in RESUME_ONLY_KEYS}
            save_checkpoint(weights | {"best": value}, self.run_dir / "best.pt")

    # -- loop ---------------------------------------------------------------------------
    def fit(self) -> dict[str, float]:
        """Train from ``self.epoch`` to ``epochs``; returns the last evaluation."""
        metrics: dict[str, float] = {}
        start = time.perf_counter()
        first_epoch = self.epoch
        while self.epoch < self.epochs and not self._done():
            epoch = self.epoch
            self.train_one_epoch(epoch)
            self.epoch = epoch + 1
            if self.epoch % self.eval_every == 0 or self.epoch == self.epochs or self._done():
                metrics = self.evaluate_fn(self.distiller.student)
                if self.ema is not None:
                    ema_metrics = self.evaluate_fn(self.ema.module)
                    metrics |= {f"ema_{k}": v for k, v in ema_metrics.items() if k != "count"}
                self.logger.log("val", self.step, epoch=self.epoch, **metrics)
            self._save(metrics)
            elapsed = time.perf_counter() - start
            left = elapsed / (self.epoch - first_epoch) * (self.epochs - self.epoch)
            shown = ", ".join(
                f"{k} {v:.4g}" for k, v in metrics.items() if k != "count" and _is_number(v)
            )
            self.logger.print(
                f"epoch {self.epoch}/{self.epochs}: {shown or 'not evaluated'}"
                f" (best {self.metric} {self.best if self.best is not None else float('nan'):.2f});"
                f" elapsed {elapsed / 60:.1f} min, ETA {left / 60:.1f} min"
            )
        self.logger.close()
        return metrics

    def _done(self) -> bool:
        return self.max_steps is not None and self.step >= self.max_steps

    def _last_good_checkpoint(self) -> str:
        path = self.run_dir / "last.pt"
        return str(path) if path.exists() else "none (no epoch finished yet)"

    def train_one_epoch(self, epoch: int) -> None:
        seed = _epoch_seed(self.seed, epoch, self.dist.rank)
        seed_everything(seed)
        sampler = getattr(self.train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        dataset = getattr(self.train_loader, "dataset", None)
        if hasattr(dataset, "set_epoch"):  # e.g. a teacher cache's replayed augmentations
            dataset.set_epoch(epoch)
        generator = getattr(self.train_loader, "generator", None)
        if generator is not None:
            generator.manual_seed(seed)
        self.distiller.set_epoch(epoch)
        self.model.train()
        device = self.dist.device
        sums: dict[str, float] = {}
        seen, tick = 0, time.perf_counter()
        bar = tqdm(
            self.train_loader,
            desc=f"epoch {epoch + 1}/{self.epochs}",
            unit="step",
            disable=not self.dist.is_main,
            dynamic_ncols=True,
            leave=False,
        )
        for i, (inputs, targets) in enumerate(bar):
            inputs = inputs.to(device, non_blocking=True)
            targets = _to_device(targets, device)
            with torch.autocast(
                device.type,
                dtype=self.amp_dtype or torch.float32,
                enabled=self.amp_dtype is not None,
            ):
                _, losses = self.model(inputs, targets)
            aux_loss = self._pop_auxiliary_loss()
            if aux_loss is not None:
                losses["aux"] = aux_loss  # logged and checked; stepped on its own below
            loss = sum(v for k, v in losses.items() if k != "aux")
            values = torch.stack([v.detach().float() for v in losses.values()]).tolist()
            if not all(math.isfinite(v) for v in values):
                bad = {k: v for k, v in zip(losses, values, strict=True) if not math.isfinite(v)}
                raise NonFiniteLossError(
                    f"non-finite loss at epoch {epoch + 1}, step {self.step} (batch {i}): {bad}. "
                    f"Last good checkpoint: {self._last_good_checkpoint()}. Try a lower optim.lr, "
                    "optim.clip_grad_norm, or train.amp=none."
                )
            if aux_loss is not None:
                self._auxiliary_step(aux_loss)
            self._backward_and_step(loss)
            if self.ema is not None:
                self.ema.step(self.distiller.student, i, epoch)
            self.step += 1
            for k, v in zip(losses, values, strict=True):
                sums[k] = sums.get(k, 0.0) + v
            seen += len(inputs) * self.dist.world_size
            rate = seen / (time.perf_counter() - tick)
            if i % self.log_every == 0 or self._done():
                means = {k: s / (i + 1) for k, s in sums.items()}
                lr = self.optimizer.param_groups[0]["lr"]
                bar.set_postfix(
                    {
                        **{k: f"{v:.4f}" for k, v in means.items()},
                        "img/s": f"{rate:.0f}",
                        "lr": f"{lr:.3g}",
                    },
                    refresh=False,
                )
                self.logger.log("train", self.step, epoch=epoch, lr=lr, images_per_s=rate, **means)
            if self._done():
                break
        bar.close()

    def _pop_auxiliary_loss(self) -> torch.Tensor | None:
        parts = []
        for term in self.distiller.terms.values():
            if term.auxiliary_loss is not None:
                parts.append(term.auxiliary_loss)
                term.auxiliary_loss = None
        return sum(parts) if parts else None

    def _auxiliary_step(self, aux_loss: torch.Tensor) -> None:
        """Step the auxiliary parameters on their own loss, before the main step."""
        self.aux_optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(aux_loss).backward()
        else:
            aux_loss.backward()
        if self.dist.distributed:  # kept out of DDP's sync: average their gradients here
            for p in self.aux_params:
                if p.grad is not None:
                    all_reduce_sum(p.grad).div_(self.dist.world_size)
        if self.scaler is not None:
            self.scaler.step(self.aux_optimizer)
        else:
            self.aux_optimizer.step()
        self.aux_scheduler.step()

    def _backward_and_step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if self.clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip_grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
