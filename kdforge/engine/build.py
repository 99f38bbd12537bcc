"""The one place where a recipe (a resolved config) becomes objects and a training run.

One builder per concept: :func:`build_data`, :func:`build_models`, :func:`build_distiller`,
:func:`build_optimizer`, :func:`build_hooks`; :func:`build_trainer` chains them. Each rule
is checked once, where the object it concerns is made.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Sampler, default_collate

from kdforge.cache.format import TeacherCache, fingerprint_sections
from kdforge.cache.replay import ReplayDataset, replay_collate
from kdforge.cache.writer import cached_outputs
from kdforge.config import check_resume, save_config
from kdforge.data.mixing import MixupCollate
from kdforge.data.samplers import (
    AspectRatioBatchSampler,
    RepeatedAugSampler,
    ShardSampler,
    drop_last_needed,
    portrait_flags,
)
from kdforge.distiller import Distiller
from kdforge.engine import hooks as H
from kdforge.engine._specs import kwargs_error, user_hook
from kdforge.engine.checkpoint import load_checkpoint
from kdforge.engine.class_names import check_class_names
from kdforge.engine.distributed import DistInfo, init_distributed
from kdforge.engine.ema import ModelEMA, adjusted_ema_decay
from kdforge.engine.optim import Optimizers, build_optimizer
from kdforge.engine.run_folder import RunFolder
from kdforge.engine.seeding import seed_everything, use_deterministic_algorithms
from kdforge.engine.tasks import Task, get_task
from kdforge.engine.trackers import build_trackers
from kdforge.engine.trainer import Trainer, check_amp
from kdforge.errors import ConfigError
from kdforge.losses import TERMS, LossTerm
from kdforge.models import create_model

__all__ = [
    "Optimizers",
    "build_data",
    "build_distiller",
    "build_hooks",
    "build_model",
    "build_models",
    "build_optimizer",
    "build_terms",
    "build_trainer",
]


def build_terms(loss_cfg: dict[str, Any]) -> dict[str, LossTerm]:
    """``{name: {type: key, **kwargs}}`` -> ``{name: TERMS[key](**kwargs)}``, checked."""
    terms = {}
    for name, spec in loss_cfg.items():
        spec = dict(spec or {})
        kind = spec.pop("type", name)
        if kind not in TERMS:
            raise ConfigError(
                f"loss.{name}: unknown loss type {kind!r}; valid types: {', '.join(TERMS)} "
                "(set `type:` when the term's name is not its type)"
            )
        problem = kwargs_error(f"loss.{name} ({kind})", TERMS[kind], spec)
        if problem:
            raise ConfigError(problem)
        try:
            terms[name] = TERMS[kind](**spec)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"loss.{name} ({kind}): {err}") from err
    return terms


def build_model(model_cfg: DictConfig, num_classes: int) -> nn.Module:
    """Build a zoo model from ``{name, num_classes, pretrained, kwargs}``."""
    return create_model(
        model_cfg.name,
        num_classes=model_cfg.num_classes or num_classes,
        pretrained=model_cfg.pretrained,
        **OmegaConf.to_container(model_cfg.kwargs, resolve=True),
    )


def build_data(
    data_cfg: DictConfig,
    dist: DistInfo,
    seed: int,
    task: Task,
    cache: TeacherCache | None = None,
) -> tuple[DataLoader, DataLoader, int]:
    """Train and validation loaders (sharded over processes) and the number of classes.

    With a teacher ``cache``, training items replay its augmentations and carry its outputs.
    """
    train_set, val_set = task.build_datasets(data_cfg)
    if cache is not None:
        train_set = ReplayDataset(train_set, cache)
    pin = dist.device.type == "cuda"
    if data_cfg.repeated_aug > 1:
        train_sampler: Sampler[int] = RepeatedAugSampler(
            train_set, dist.world_size, dist.rank, seed=seed, repetitions=data_cfg.repeated_aug
        )
    else:
        train_sampler = DistributedSampler(
            train_set, num_replicas=dist.world_size, rank=dist.rank, shuffle=True, seed=seed
        )
    mixup = data_cfg.mixup_alpha
    if mixup > 0 and task.collate is not None:
        raise ConfigError("data.mixup_alpha applies to classification only; set it to 0")
    collate = MixupCollate(train_set.num_classes, mixup) if mixup else task.collate_for(data_cfg)
    drop_last = drop_last_needed(len(train_sampler), data_cfg.batch_size)  # no batch of 1
    batching: dict[str, Any] = {
        "batch_size": data_cfg.batch_size,
        "sampler": train_sampler,
        "drop_last": drop_last,
    }
    if data_cfg.group_by_aspect_ratio:  # one orientation per batch (mmdetection)
        portrait = portrait_flags(train_set)
        batch_sampler = AspectRatioBatchSampler(
            train_sampler, portrait, data_cfg.batch_size, drop_last
        )
        batching = {"batch_sampler": batch_sampler}
    train = DataLoader(
        train_set,
        **batching,
        num_workers=data_cfg.num_workers,
        pin_memory=pin,
        generator=torch.Generator(),
        collate_fn=replay_collate if cache is not None else collate,
    )
    val = DataLoader(
        val_set,
        batch_size=data_cfg.eval_batch_size or data_cfg.batch_size,
        sampler=ShardSampler(val_set, dist.rank, dist.world_size),
        num_workers=data_cfg.num_workers,
        collate_fn=task.collate_for(data_cfg),
        pin_memory=pin,
    )
    return train, val, train_set.num_classes


def build_models(
    cfg: DictConfig, num_classes: int, dist: DistInfo, with_teacher: bool = True
) -> tuple[nn.Module | None, nn.Module]:
    """``(teacher or None, student)`` on the run's device; SyncBN in the student if asked.

    A model with fewer classes than the data's labels, or, with mixup, a student whose
    classes differ from the data's (its soft targets have the data's), is a ConfigError.
    """
    for role in ("teacher", "student"):
        given = cfg[role].num_classes
        if given is not None and given < num_classes and (role == "student" or cfg.teacher.name):
            raise ConfigError(
                f"{role}.num_classes={given} but the data has {num_classes} classes; set it to "
                f"{num_classes} or leave it unset (it then follows the data)"
            )
    given = cfg.student.num_classes
    if cfg.data.mixup_alpha > 0 and given is not None and given != num_classes:
        raise ConfigError(
            f"data.mixup_alpha mixes {num_classes}-class targets but student.num_classes={given}"
            "; leave student.num_classes unset"
        )
    student = build_model(cfg.student, num_classes).to(dist.device)
    if cfg.train.sync_bn and dist.distributed:  # BN statistics over the global batch
        student = nn.SyncBatchNorm.convert_sync_batchnorm(student)
    teacher = None
    if cfg.teacher.name and with_teacher:
        teacher = build_model(cfg.teacher, num_classes).to(dist.device)
    return teacher, student


def build_distiller(
    cfg: DictConfig,
    teacher: nn.Module | None,
    student: nn.Module,
    terms: dict[str, LossTerm],
    loader: DataLoader,
    cached: bool = False,
) -> Distiller:
    """The Distiller with the recipe's teacher options, probed on two training items."""
    distiller = Distiller(
        teacher,
        student,
        terms,
        teacher_inference_mode=cfg.teacher.inference_mode,
        teacher_dtype=cfg.teacher.dtype,
        teacher_channels_last=cfg.teacher.channels_last,
        truncate_teacher=cfg.teacher.truncate,
        cached_teacher=cached,
    )
    items = [loader.dataset[i] for i in range(2)]
    example, example_targets = (loader.collate_fn or default_collate)(items)
    device = next(student.parameters()).device
    distiller.probe(example.to(device), example_targets)
    if cfg.train.compile:
        distiller.compile_models()
    return distiller


def build_hooks(
    cfg: DictConfig,
    task: Task,
    evaluate: Callable[[nn.Module], dict[str, Any]],
    distiller: Distiller,
    optimizers: Optimizers,
    dist: DistInfo,
    meta: dict[str, Any],
) -> list[H.HookBase]:
    """The run's hooks, in the order they are called: stop-distillation, auxiliary
    optimizer, EMA, teacher check, evaluation, the recipe's ``train.hooks``, logging,
    checkpointing, progress."""
    train = cfg.train
    hooks: list[H.HookBase] = []
    if train.stop_distillation is not None:
        hooks.append(H.StopDistillationHook(train.stop_distillation))
    if optimizers.auxiliary is not None:
        hooks.append(H.AuxiliaryOptimizerHook(optimizers.auxiliary, optimizers.auxiliary_scheduler))
    extra_models = {}
    if train.ema_decay is not None:
        images_per_step = dist.world_size * cfg.data.batch_size
        decay = adjusted_ema_decay(
            train.ema_decay, images_per_step, train.ema_steps, optimizers.epochs
        )
        ema = ModelEMA(distiller.student, decay, train.ema_steps, cfg.schedule.warmup_epochs)
        hooks.append(H.EMAHook(ema))
        extra_models["ema"] = ema.module
    if distiller.teacher is not None:
        check = None
        if train.check_teacher:

            def check(metrics: dict[str, Any]) -> None:
                task.check_teacher(metrics, meta["num_classes"], cfg.teacher.name)

        hooks.append(H.TeacherCheckHook(evaluate, check, f"teacher {cfg.teacher.name}"))
    report = train.report or task.report
    hooks.append(H.EvalHook(evaluate, task.metric, train.eval_every, extra_models, report))
    hooks += [user_hook(i, spec) for i, spec in enumerate(train.hooks)]
    if cfg.data.on_bad_sample == "skip":
        hooks.append(H.SkippedSamplesHook())
    hooks += [  # logs before the checkpoint: a resume cuts them back to the checkpoint's step
        H.LoggingHook(train.log_every),
        H.CheckpointHook(meta),
        H.ProgressHook(),
    ]
    return hooks


def _open_cache(cfg: DictConfig, terms: dict[str, LossTerm]) -> TeacherCache:
    """Open ``teacher.cache`` after checking, before any long work, that the run can use it."""
    outputs = cached_outputs(cfg, terms)  # raises for what a cache cannot replace
    cache = TeacherCache(cfg.teacher.cache)
    epochs = 1 if cfg.schedule.iters else cfg.schedule.epochs  # iters: checked once known
    cache.check_fits(fingerprint_sections(cfg, *outputs), epochs)
    return cache


def _run_dir(cfg: DictConfig, recipe_name: str, dist: DistInfo, resume: str | Path | None) -> Path:
    if resume:
        return Path(resume)
    name = cfg.train.name or f"{recipe_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if dist.distributed:  # every process must use rank 0's folder name
        box = [name]
        torch.distributed.broadcast_object_list(box, src=0)
        name = box[0]
    return Path(cfg.train.out_dir) / name


def build_trainer(
    cfg: DictConfig,
    recipe_name: str = "run",
    resume: str | Path | None = None,
    dist: DistInfo | None = None,
) -> Trainer:
    """Build data, models, terms, optimizer, hooks and the trainer from ``cfg``.

    The run folder is opened (and locked) first; with ``resume`` (a run folder), its
    ``last.pt`` is read before anything else is built, and the trainer continues from it.
    A build that fails leaves no new run folder behind.
    """
    if cfg.train.deterministic:
        use_deterministic_algorithms()
    dist = dist or init_distributed(cfg.train.device)
    run_dir = _run_dir(cfg, recipe_name, dist, resume)
    folder = RunFolder(run_dir, resume=bool(resume), writer=dist.is_main)
    try:
        state = load_checkpoint(run_dir / "last.pt") if resume else None
        allowed = check_resume(state["config"], cfg) if state is not None else []
        trainer = _build(cfg, dist, folder)
        if state is None:
            if dist.is_main:
                save_config(cfg, run_dir / "config.yaml")
            return trainer
        trainer.load_state_dict(state)
    except BaseException:
        folder.close(success=False)
        raise
    if allowed:
        trainer.logger.log("resume", trainer.step, changed=allowed)
    trainer.logger.print(f"resumed {run_dir} after epoch {trainer.epoch} (step {trainer.step})")
    return trainer


def _build(cfg: DictConfig, dist: DistInfo, folder: RunFolder) -> Trainer:
    seed_everything(cfg.train.seed)
    task = get_task(cfg.task)
    amp_dtype = check_amp(cfg.train.amp, dist.device)  # before the data: fail early
    trackers = build_trackers(cfg, folder.logger)  # first: they see every record
    terms = build_terms(OmegaConf.to_container(cfg.loss, resolve=True) or {task.loss: {}})
    cache = _open_cache(cfg, terms) if cfg.teacher.cache else None
    train_loader, val_loader, num_classes = build_data(cfg.data, dist, cfg.train.seed, task, cache)
    check_class_names(cfg, getattr(val_loader.dataset, "classes", None))  # before the models
    teacher, student = build_models(cfg, num_classes, dist, with_teacher=cache is None)
    distiller = build_distiller(cfg, teacher, student, terms, train_loader, cache is not None)
    optimizers = build_optimizer(cfg, distiller, dist, len(train_loader))
    if cache is not None:
        cache.check_fits(fingerprint_sections(cfg, *cached_outputs(cfg, terms)), optimizers.epochs)

    def evaluate(model: nn.Module) -> dict[str, Any]:
        return task.evaluate(model, val_loader, dist.device, amp_dtype, cfg.train.max_eval_batches)

    meta = {
        "config": OmegaConf.to_container(cfg, resolve=True),
        "student_name": cfg.student.name,
        "num_classes": cfg.student.num_classes or num_classes,
    }
    return Trainer(
        distiller,
        optimizers.optimizer,
        optimizers.scheduler,
        train_loader,
        optimizers.epochs,
        [*trackers, *build_hooks(cfg, task, evaluate, distiller, optimizers, dist, meta)],
        run_dir=folder,
        dist=dist,
        amp=cfg.train.amp,
        clip_grad_norm=cfg.optim.clip_grad_norm,
        seed=cfg.train.seed,
        max_steps=optimizers.max_steps,
    )
