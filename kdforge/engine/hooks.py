"""Hooks: what the trainer does besides stepping, each with its own state.

A hook subclasses :class:`HookBase` and overrides the events it needs; the trainer calls
them in list order. ``state_dict``/``load_state_dict`` let a resumed run restore a hook
exactly (under ``hooks.<state_key>`` in ``last.pt``). ``build_hooks`` in
:mod:`kdforge.engine.build` assembles the built-in ones from a recipe, with any user hooks
of ``train.hooks`` placed after evaluation and before checkpointing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from tqdm import tqdm

from kdforge.data import skipped_samples
from kdforge.engine.checkpoint import save_checkpoint
from kdforge.engine.distributed import all_reduce_sum
from kdforge.engine.ema import ModelEMA
from kdforge.errors import ConfigError

if TYPE_CHECKING:
    from kdforge.engine.trainer import Trainer

__all__ = [
    "AuxiliaryOptimizerHook",
    "CheckpointHook",
    "EMAHook",
    "EvalHook",
    "HookBase",
    "LoggingHook",
    "ProgressHook",
    "SkippedSamplesHook",
    "StopDistillationHook",
    "TeacherCheckHook",
]

Metrics = dict[str, Any]


def _check_every(hook: str, key: str, every: int) -> int:
    if every < 1:
        raise ConfigError(f"{hook}: every must be >= 1 ({key}), got {every}")
    return every


def _numbers(values: Mapping[str, Any]) -> dict[str, float]:
    return {
        k: v
        for k, v in values.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "count"
    }


class HookBase:
    """Base of every hook: empty events, no state.

    Events: ``before_train``/``after_train`` (once per :meth:`Trainer.fit`),
    ``before_epoch``/``after_epoch`` (``trainer.epoch`` counts completed epochs: in
    ``after_epoch`` it includes the one just trained), ``before_step``, ``after_forward``
    (``trainer.losses`` holds this step's losses, not yet back-propagated) and
    ``after_step``. ``self.trainer`` is set when the trainer is built.

    ``state_key`` names the hook's entry in checkpoints (default: the class name); two
    hooks of one class need different ones. A hook that makes some trainable parameters
    go without gradients sets ``leaves_parameters_unused`` (DDP then looks for them).
    """

    trainer: Trainer
    leaves_parameters_unused = False

    @property
    def state_key(self) -> str:
        return type(self).__name__

    def before_train(self) -> None: ...

    def after_train(self) -> None: ...

    def before_epoch(self) -> None: ...

    def after_epoch(self) -> None: ...

    def before_step(self) -> None: ...

    def after_forward(self) -> None: ...

    def after_step(self) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


class StopDistillationHook(HookBase):
    """Turn the distillation terms off from epoch ``stop_epoch`` (0-based) on, as
    mmrazor's ``StopDistillHook``: only the terms that need no teacher (e.g. the
    ground-truth loss) train, and the teacher no longer runs."""

    leaves_parameters_unused = True  # the switched-off terms' connectors

    def __init__(self, stop_epoch: int) -> None:
        if stop_epoch < 0:
            raise ValueError(f"stop_epoch must be >= 0, got {stop_epoch}")
        self.stop_epoch = stop_epoch

    def before_epoch(self) -> None:
        self.trainer.distiller.distilling = self.trainer.epoch < self.stop_epoch


class AuxiliaryOptimizerHook(HookBase):
    """Step the terms' auxiliary parameters (e.g. CAKD's discriminator) on their own loss.

    After each forward, the terms' ``auxiliary_loss`` values are summed, back-propagated
    and stepped with ``optimizer`` (and ``scheduler``) before the main backward. These
    parameters are outside DistributedDataParallel, so their gradients are averaged over
    processes here. Each term's value is logged as ``<term>.auxiliary``.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    ) -> None:
        self.optimizer, self.scheduler = optimizer, scheduler
        self.params = [p for g in optimizer.param_groups for p in g["params"]]

    def after_forward(self) -> None:
        trainer = self.trainer
        parts = {}
        for name, term in trainer.distiller.terms.items():
            if term.auxiliary_loss is not None:
                parts[f"{name}.auxiliary"] = term.auxiliary_loss
                term.auxiliary_loss = None
        if not parts:
            return
        values = {k: v.detach().float().item() for k, v in parts.items()}
        trainer.check_finite(values)
        trainer.step_values.update(values)
        loss = sum(parts.values())
        self.optimizer.zero_grad(set_to_none=True)
        scaler = trainer.scaler
        (scaler.scale(loss) if scaler is not None else loss).backward()
        if trainer.dist.distributed:
            for p in self.params:
                if p.grad is not None:
                    all_reduce_sum(p.grad).div_(trainer.dist.world_size)
        if scaler is not None:
            scaler.step(self.optimizer)
        else:
            self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        scheduler = self.scheduler.state_dict() if self.scheduler is not None else None
        return {"optimizer": self.optimizer.state_dict(), "scheduler": scheduler}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])


class EMAHook(HookBase):
    """Update a :class:`~kdforge.engine.ema.ModelEMA` of the student after each step
    (evaluate it by giving ``ema.module`` to :class:`EvalHook`'s ``extra_models``)."""

    def __init__(self, ema: ModelEMA) -> None:
        self.ema = ema

    def after_step(self) -> None:
        self.ema.step(self.trainer.distiller.student, self.trainer.iter, self.trainer.epoch)

    def state_dict(self) -> dict[str, Any]:
        return self.ema.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ema.load_state_dict(state)


class TeacherCheckHook(HookBase):
    """Evaluate the teacher once before a fresh run, log it, and let ``check`` refuse a
    useless one (``check(metrics)`` raises)."""

    def __init__(
        self,
        evaluate: Callable[[nn.Module], Metrics],
        check: Callable[[Metrics], None] | None = None,
        label: str = "teacher",
    ) -> None:
        self.evaluate, self.check, self.label = evaluate, check, label

    def before_train(self) -> None:
        trainer = self.trainer
        teacher = trainer.distiller.teacher
        if teacher is None or trainer.step > 0:
            return
        metrics = self.evaluate(teacher)
        trainer.logger.log("teacher", 0, **metrics)
        shown = ", ".join(f"{k} {v:.4g}" for k, v in _numbers(metrics).items())
        trainer.logger.print(f"{self.label}: {shown}")
        if self.check is not None:
            self.check(metrics)


class EvalHook(HookBase):
    """Evaluate the student every ``every`` epochs and after the last one.

    Sets ``trainer.metrics``, and ``trainer.best``/``trainer.improved`` by ``metric``
    (higher is better). ``extra_models`` (``{prefix: module}``, e.g. ``{"ema": ...}``) are
    evaluated too, their values logged as ``<prefix>_<key>``. At the end it logs a
    ``summary`` record with the final and the best value (and its epoch), and which of the
    two ``report`` says the recipe's source publishes (:meth:`summary`).
    """

    def __init__(
        self,
        evaluate: Callable[[nn.Module], Metrics],
        metric: str,
        every: int = 1,
        extra_models: Mapping[str, nn.Module] | None = None,
        report: str = "best",
    ) -> None:
        if report not in ("best", "final"):
            raise ConfigError(f"report must be best or final (train.report), got {report!r}")
        self.evaluate, self.metric, self.report = evaluate, metric, report
        self.every = _check_every("EvalHook", "train.eval_every", every)
        self.extra_models = dict(extra_models or {})
        self.best_epoch: int | None = None
        self.final: float | None = None

    def after_epoch(self) -> None:
        trainer = self.trainer
        due = trainer.epoch % self.every == 0 or trainer.epoch == trainer.epochs
        if not (due or trainer.done()):
            return
        metrics = self.evaluate(trainer.distiller.student)
        for prefix, model in self.extra_models.items():
            extra = self.evaluate(model)
            metrics |= {f"{prefix}_{k}": v for k, v in extra.items() if k != "count"}
        trainer.metrics = metrics
        value = metrics.get(self.metric)
        self.final = value
        if value is not None and (trainer.best is None or value >= trainer.best):
            trainer.best, trainer.improved, self.best_epoch = value, True, trainer.epoch

    def summary(self) -> dict[str, Any]:
        """``{metric, final, best, best_epoch, report, reported}``: ``reported`` is the
        value the recipe's source would publish."""
        best = self.trainer.best
        reported = self.final if self.report == "final" else best
        return {
            "metric": self.metric,
            "final": self.final,
            "best": best,
            "best_epoch": self.best_epoch,
            "report": self.report,
            "reported": reported,
        }

    def after_train(self) -> None:
        self.trainer.logger.log("summary", self.trainer.step, **self.summary())

    def state_dict(self) -> dict[str, Any]:
        return {"best_epoch": self.best_epoch, "final": self.final}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_epoch, self.final = state["best_epoch"], state["final"]


class CheckpointHook(HookBase):
    """After each epoch, write ``last.pt`` (everything to resume) and, when the evaluation
    improved, ``best.pt`` (weights, no optimizer or hook states), atomically, on the main
    process. ``meta`` entries (e.g. the config) go into both."""

    def __init__(self, meta: Mapping[str, Any] | None = None) -> None:
        self.meta = dict(meta or {})

    def after_epoch(self) -> None:
        trainer = self.trainer
        if not trainer.dist.is_main or trainer.run_dir is None:
            return
        state = trainer.state_dict() | self.meta | {"metrics": trainer.metrics}
        save_checkpoint(state, trainer.run_dir / "last.pt")
        if trainer.improved:
            # best.pt selects weights; resuming reads last.pt, so the optimizer and hook
            # states (as large as the model again) are left out of it.
            resume_only = ("optimizer", "scheduler", "scaler", "hooks")
            weights = {k: v for k, v in state.items() if k not in resume_only}
            save_checkpoint(weights, trainer.run_dir / "best.pt")


class SkippedSamplesHook(HookBase):
    """Log and print how many unreadable training samples were replaced this epoch
    (``data.on_bad_sample=skip``; :func:`kdforge.data.skipped_samples`)."""

    def __init__(self) -> None:
        self.before = 0

    def before_epoch(self) -> None:
        self.before = skipped_samples(self.trainer.train_loader.dataset)

    def after_epoch(self) -> None:
        trainer = self.trainer
        skipped = skipped_samples(trainer.train_loader.dataset) - self.before
        if skipped:
            trainer.logger.log("data", trainer.step, epoch=trainer.epoch, skipped=skipped)
            trainer.logger.print(f"epoch {trainer.epoch}: {skipped} unreadable sample(s) skipped")


class LoggingHook(HookBase):
    """Records to ``log.jsonl`` and TensorBoard: running means every ``every`` steps (and
    the last), each evaluation."""

    def __init__(self, every: int = 20) -> None:
        self.every = _check_every("LoggingHook", "train.log_every", every)

    def after_step(self) -> None:
        trainer = self.trainer
        if trainer.iter % self.every and not trainer.done():
            return
        lr = trainer.optimizer.param_groups[0]["lr"]
        trainer.logger.log(
            "train",
            trainer.step,
            epoch=trainer.epoch,
            lr=lr,
            images_per_s=trainer.meter.rate,
            **trainer.meter.means,
        )

    def after_epoch(self) -> None:
        if self.trainer.metrics:
            self.trainer.logger.log(
                "val", self.trainer.step, epoch=self.trainer.epoch, **self.trainer.metrics
            )


class ProgressHook(HookBase):
    """A progress bar per epoch (the epoch's mean losses up to the current step, images/s,
    learning rate, ETA) and a line after each epoch with the evaluation, the best value,
    the time spent and the time left."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None

    def before_train(self) -> None:
        self.start, self.first_epoch = time.perf_counter(), self.trainer.epoch

    def before_epoch(self) -> None:
        trainer = self.trainer
        loader = trainer.train_loader
        self.bar = tqdm(
            total=len(loader) if hasattr(loader, "__len__") else None,
            desc=f"epoch {trainer.epoch + 1}/{trainer.epochs}",
            unit="step",
            disable=not trainer.dist.is_main,
            dynamic_ncols=True,
            leave=False,
        )

    def after_step(self) -> None:
        trainer = self.trainer
        means = {k: f"{v:.4f}" for k, v in trainer.meter.means.items()}
        lr = trainer.optimizer.param_groups[0]["lr"]
        rate = f"{trainer.meter.rate:.0f}"
        self.bar.set_postfix({**means, "img/s": rate, "lr": f"{lr:.3g}"}, refresh=False)
        self.bar.update()  # draws (at most every 0.1 s, tqdm's mininterval) with these values

    def after_epoch(self) -> None:
        trainer = self.trainer
        self.bar.close()
        elapsed = time.perf_counter() - self.start
        left = elapsed / (trainer.epoch - self.first_epoch) * (trainer.epochs - trainer.epoch)
        shown = ", ".join(f"{k} {v:.4g}" for k, v in _numbers(trainer.metrics).items())
        evaluation = trainer.hook(EvalHook)
        best = ""
        if evaluation is not None and trainer.best is not None:
            best = f" (best {evaluation.metric} {trainer.best:.2f})"
        trainer.logger.print(
            f"epoch {trainer.epoch}/{trainer.epochs}: {shown or 'not evaluated'}{best};"
            f" elapsed {elapsed / 60:.1f} min,"
            f" ETA {left / 60:.1f} min"
        )
