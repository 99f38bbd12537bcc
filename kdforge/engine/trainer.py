"""The training loop and its hook dispatch; everything else is a hook (engine/hooks.py)."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from kdforge.distiller import Distiller
from kdforge.engine.distributed import DistInfo
from kdforge.engine.logging import RunLogger
from kdforge.engine.run_folder import RunFolder
from kdforge.engine.seeding import epoch_seed, seed_everything
from kdforge.errors import CheckpointError, ConfigError, NonFiniteLossError

if TYPE_CHECKING:
    from kdforge.engine.hooks import HookBase

__all__ = ["AMP_DTYPES", "EpochMeter", "Trainer", "check_amp"]

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``train.amp`` (None: off), or a ConfigError saying why not."""
    if amp not in AMP_DTYPES:
        raise ConfigError(f"train.amp must be one of {list(AMP_DTYPES)}, got {amp!r}")
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError("train.amp=fp16 needs CUDA (its gradient scaler); use bf16 instead")
    return AMP_DTYPES[amp]


def _to_device(value: Any, device: torch.device) -> Any:
    """Move the tensors of a (nested) batch of targets; leave everything else as it is."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    return value


class EpochMeter:
    """Running means of this epoch's logged values, and images per second."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.steps = 0
        self.images = 0
        self.start = time.perf_counter()

    def update(self, values: dict[str, float], images: int) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.steps += 1
        self.images += images

    @property
    def means(self) -> dict[str, float]:
        return {k: s / self.steps for k, s in self.sums.items()}

    @property
    def rate(self) -> float:
        return self.images / max(time.perf_counter() - self.start, 1e-9)


class Trainer:
    """Train a :class:`~kdforge.Distiller` epoch by epoch, calling hooks around each part.

    Each step: forward (under autocast), a finiteness check of every loss, the
    ``after_forward`` hooks, backward of the summed losses, clipping, the optimizer and
    scheduler steps, then the ``after_step`` hooks. Each epoch starts from random streams
    seeded by (seed, epoch, rank), so a run resumed at an epoch boundary is exact.
    Checkpoints, evaluation, EMA, the auxiliary optimizer, logging and progress are hooks
    (:mod:`kdforge.engine.hooks`); what they share is kept here: ``epoch`` (completed
    epochs), ``step`` (optimizer steps), ``iter`` (batch index in the epoch), ``losses``
    and ``step_values`` (this step's losses, and the floats to log), ``meter`` (this
    epoch's running means), ``metrics`` (the last evaluation), ``best`` and ``improved``
    (set by the evaluation hook).

    Under DDP (``dist.distributed``) the trainer wraps ``distiller.trainable_module()``:
    the student and its connectors, never the teacher.

    Args:
        distiller: the Distiller to train.
        optimizer: optimizer over its trainable parameters.
        scheduler: LR scheduler stepped after every optimizer step.
        train_loader: yields ``(inputs, targets)``.
        epochs: total number of epochs.
        hooks: called in this order at each event; a resumed run restores their states.
        run_dir: the run folder (logs, checkpoints), if any: a path (a new run) or an
            opened :class:`~kdforge.engine.run_folder.RunFolder` (e.g. one to resume).
        dist: process/device information.
        amp: "none", "bf16" or "fp16" (fp16 with a gradient scaler, CUDA only).
        clip_grad_norm: clip the global gradient norm to this value, if set.
        seed: base seed; each epoch reseeds from (seed, epoch, rank).
        max_steps: stop after this many optimizer steps in total.
    """

    def __init__(
        self,
        distiller: Distiller,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        train_loader: Iterable,
        epochs: int,
        hooks: Sequence[HookBase] = (),
        run_dir: str | Path | RunFolder | None = None,
        dist: DistInfo | None = None,
        amp: str = "none",
        clip_grad_norm: float | None = None,
        seed: int = 0,
        max_steps: int | None = None,
    ) -> None:
        self.dist = dist or DistInfo()
        if epochs < 1:
            raise ConfigError(f"the run needs at least one epoch (schedule.epochs), got {epochs}")
        self.distiller, self.optimizer, self.scheduler = distiller, optimizer, scheduler
        self.train_loader, self.epochs = train_loader, epochs
        if run_dir is not None and not isinstance(run_dir, RunFolder):
            run_dir = RunFolder(run_dir, writer=self.dist.is_main)
        self.folder = run_dir
        self.run_dir = run_dir.path if run_dir is not None else None
        self.amp_dtype = check_amp(amp, self.dist.device)
        self.scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None
        self.clip_grad_norm, self.seed, self.max_steps = clip_grad_norm, seed, max_steps
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self.model: nn.Module = distiller
        if self.dist.distributed:
            ids = [self.dist.local_rank] if self.dist.device.type == "cuda" else None
            unused = any(h.leaves_parameters_unused for h in hooks)
            self.model = nn.parallel.DistributedDataParallel(
                distiller.trainable_module(), device_ids=ids, find_unused_parameters=unused
            )
        self.logger = run_dir.logger if run_dir is not None else RunLogger(".", enabled=False)
        self.hooks = list(hooks)
        names = [h.state_key for h in self.hooks]
        if len(set(names)) < len(names):
            raise ConfigError(f"two hooks share a state key in {names}; give each its own name")
        for hook in self.hooks:
            hook.trainer = self
        self.epoch = 0  # completed epochs
        self.step = 0  # optimizer steps taken
        self.iter = 0  # batch index within the epoch
        self.losses: dict[str, torch.Tensor] = {}
        self.step_values: dict[str, float] = {}
        self.meter = EpochMeter()
        self.metrics: dict[str, Any] = {}
        self.best: float | None = None
        self.improved = False

    # -- hooks --------------------------------------------------------------------------
    def _call(self, event: str) -> None:
        for hook in self.hooks:
            getattr(hook, event)()

    def hook(self, kind: type[HookBase]) -> HookBase | None:
        """The first hook of this class, if any."""
        return next((h for h in self.hooks if isinstance(h, kind)), None)

    # -- checkpoints --------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs: weights, optimizer, schedule, every hook."""
        return {
            "student": self.distiller.student.state_dict(),
            "terms": self.distiller.terms.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "epoch": self.epoch,
            "step": self.step,
            "best": self.best,
            "hooks": {h.state_key: h.state_dict() for h in self.hooks},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; a checkpoint of another run is a CheckpointError."""
        try:
            self.distiller.student.load_state_dict(state["student"])
            self.distiller.terms.load_state_dict(state["terms"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        except (KeyError, RuntimeError, ValueError) as err:
            raise CheckpointError(
                f"the checkpoint does not fit this run's student, terms or optimizer ({err})"
            ) from None
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step, self.best = state["epoch"], state["step"], state["best"]
        if self.folder is not None:
            self.folder.cut_logs(self.step)  # drop what a killed run logged after it
        saved = dict(state.get("hooks", {}))
        for hook in self.hooks:
            if hook.state_key in saved:
                hook.load_state_dict(saved.pop(hook.state_key))
            elif hook.state_dict():
                warnings.warn(
                    f"the checkpoint has no state for hook {hook.state_key}; it starts fresh",
                    stacklevel=2,
                )
        if saved:
            warnings.warn(
                f"the checkpoint holds states of hooks this run lacks: {list(saved)}", stacklevel=2
            )

    def last_checkpoint(self) -> str:
        """The path of the last good checkpoint, for error messages."""
        path = self.run_dir / "last.pt" if self.run_dir else None
        return str(path) if path and path.exists() else "none (no epoch finished yet)"

    # -- loop ---------------------------------------------------------------------------
    def done(self) -> bool:
        """Whether ``max_steps`` is reached."""
        return self.max_steps is not None and self.step >= self.max_steps

    def fit(self) -> dict[str, Any]:
        """Train from ``self.epoch`` to ``epochs``; returns the last evaluation."""
        success = False
        try:
            self._call("before_train")
            while self.epoch < self.epochs and not self.done():
                self.metrics, self.improved = {}, False
                self._call("before_epoch")
                self.train_one_epoch()
                self.epoch += 1
                self._call("after_epoch")
            self._call("after_train")
            success = True
        finally:
            if self.folder is not None:
                self.folder.close(success)
            else:
                self.logger.close()
        return self.metrics

    def _start_epoch(self) -> None:
        seed = epoch_seed(self.seed, self.epoch, self.dist.rank)
        seed_everything(seed)
        for source in (
            getattr(self.train_loader, "sampler", None),
            getattr(self.train_loader, "batch_sampler", None),  # e.g. aspect-ratio grouping
            getattr(self.train_loader, "dataset", None),
        ):
            if hasattr(source, "set_epoch"):  # a distributed sampler; a teacher cache's replay
                source.set_epoch(self.epoch)
        generator = getattr(self.train_loader, "generator", None)
        if generator is not None:
            generator.manual_seed(seed)
        self.distiller.set_epoch(self.epoch)
        self.meter = EpochMeter()

    def train_one_epoch(self) -> None:
        self._start_epoch()
        self.model.train()
        device = self.dist.device
        for i, (inputs, targets) in enumerate(self.train_loader):
            self.iter = i
            self._call("before_step")
            inputs = inputs.to(device, non_blocking=True)
            targets = _to_device(targets, device)
            with torch.autocast(
                device.type,
                dtype=self.amp_dtype or torch.float32,
                enabled=self.amp_dtype is not None,
            ):
                _, self.losses = self.model(inputs, targets)
            values = torch.stack([v.detach().float() for v in self.losses.values()]).tolist()
            self.step_values = dict(zip(self.losses, values, strict=True))
            self.check_finite(self.step_values)
            self._call("after_forward")
            self._backward_and_step(sum(self.losses.values()))
            self.step += 1
            self.meter.update(self.step_values, len(inputs) * self.dist.world_size)
            self._call("after_step")
            if self.done():
                break

    def check_finite(self, values: dict[str, float]) -> None:
        """Raise :class:`~kdforge.errors.NonFiniteLossError` naming any non-finite value."""
        bad = {k: v for k, v in values.items() if not math.isfinite(v)}
        if bad:
            raise NonFiniteLossError(
                f"non-finite loss at epoch {self.epoch + 1}, step {self.step} (batch "
                f"{self.iter}): {bad}. Last good checkpoint: {self.last_checkpoint()}. Try a "
                "lower optim.lr, optim.clip_grad_norm, or train.amp=none."
            )

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
