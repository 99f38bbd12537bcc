"""The one place where a recipe (a resolved config) becomes objects and a training run."""

from __future__ import annotations

import inspect
import math
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, default_collate

from kdforge.cache.format import TeacherCache, fingerprint_sections
from kdforge.cache.replay import ReplayDataset, replay_collate
from kdforge.cache.writer import cached_outputs
from kdforge.config import ConfigError, save_config
from kdforge.data.mixing import MixupCollate
from kdforge.data.samplers import RepeatedAugSampler
from kdforge.distiller import TEACHER_DTYPES, Distiller
from kdforge.engine.checkpoint import load_checkpoint
from kdforge.engine.distributed import DistInfo, init_distributed
from kdforge.engine.ema import ModelEMA, adjusted_ema_decay
from kdforge.engine.logging import RunLogger
from kdforge.engine.optim import build_optimizer, build_scheduler, parameter_groups
from kdforge.engine.tasks import TASKS, Task
from kdforge.engine.trainer import AMP_DTYPES, Trainer, seed_everything
from kdforge.losses import TERMS, LossTerm
from kdforge.models import create_model

__all__ = [
    "ShardSampler",
    "build_loaders",
    "build_model",
    "build_terms",
    "build_trainer",
]


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...``: disjoint shards that cover the data set once."""

    def __init__(self, dataset: Dataset, rank: int = 0, world_size: int = 1) -> None:
        self.indices = range(rank, len(dataset), world_size)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


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
        params = inspect.signature(TERMS[kind]).parameters
        unknown = sorted(set(spec) - set(params))
        if unknown:
            raise ConfigError(
                f"loss.{name} ({kind}): unknown key(s) {unknown}; valid keys: type, "
                f"{', '.join(params)}"
            )
        missing = [
            p for p, v in params.items() if v.default is inspect.Parameter.empty and p not in spec
        ]
        if missing:
            raise ConfigError(f"loss.{name} ({kind}): missing required key(s) {missing}")
        terms[name] = TERMS[kind](**spec)
    return terms


def build_model(model_cfg: DictConfig, num_classes: int) -> nn.Module:
    """Build a zoo model from ``{name, num_classes, pretrained, kwargs}``."""
    return create_model(
        model_cfg.name,
        num_classes=model_cfg.num_classes or num_classes,
        pretrained=model_cfg.pretrained,
        **OmegaConf.to_container(model_cfg.kwargs, resolve=True),
    )


def build_loaders(
    data_cfg: DictConfig,
    dist: DistInfo,
    seed: int,
    task: Task = TASKS["classification"],
    cache: TeacherCache | None = None,
) -> tuple[DataLoader, DataLoader, int]:
    """Train and validation loaders (sharded over processes) and the number of classes.

    With a teacher ``cache``, training items replay its augmentations and carry its outputs.
    """
    train_set, val_set = task.build_datasets(data_cfg)
    if cache is not None:
        train_set = ReplayDataset(train_set, cache)
    pin = dist.device.type == "cuda"
    workers = data_cfg.num_workers
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
    collate = MixupCollate(train_set.num_classes, mixup) if mixup > 0 else task.collate
    if cache is not None:
        collate = replay_collate
    train = DataLoader(
        train_set,
        batch_size=data_cfg.batch_size,
        sampler=train_sampler,
        num_workers=workers,
        pin_memory=pin,
        drop_last=False,
        generator=torch.Generator(),
        collate_fn=collate,
    )
    val = DataLoader(
        val_set,
        batch_size=data_cfg.eval_batch_size or data_cfg.batch_size,
        sampler=ShardSampler(val_set, dist.rank, dist.world_size),
        num_workers=workers,
        collate_fn=task.collate,
        pin_memory=pin,
    )
    return train, val, train_set.num_classes


def _open_cache(cfg: DictConfig, terms: dict[str, LossTerm]) -> TeacherCache:
    """Open ``teacher.cache`` after checking, before any long work, that the run can use it."""
    cached_outputs(cfg, terms)  # raises for what a cache cannot replace
    cache = TeacherCache(cfg.teacher.cache)
    epochs = 1 if cfg.schedule.iters else cfg.schedule.epochs  # iters: checked once known
    cache.check_fits(fingerprint_sections(cfg, *cached_outputs(cfg, terms)), epochs)
    return cache


def _run_dir(cfg: DictConfig, recipe_name: str, dist: DistInfo) -> Path:
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
    """Build data, models, loss terms, optimizer, schedule and the trainer from ``cfg``.

    With ``resume`` (a run folder), the trainer continues from its ``last.pt``.
    """
    dist = dist or init_distributed(cfg.train.device)
    seed_everything(cfg.train.seed)
    if cfg.task not in TASKS:
        raise ConfigError(f"unknown task {cfg.task!r}; valid tasks: {', '.join(TASKS)}")
    task = TASKS[cfg.task]
    terms = build_terms(OmegaConf.to_container(cfg.loss, resolve=True) or {task.loss: {}})
    if any(t.needs_teacher for t in terms.values()) and cfg.teacher.name is None:
        raise ConfigError("the loss terms need a teacher but teacher.name is not set")
    if cfg.train.amp not in AMP_DTYPES:
        raise ConfigError(f"train.amp must be one of {list(AMP_DTYPES)}, got {cfg.train.amp!r}")
    readers = [n for n, t in terms.items() if t.needs_teacher and t.needs_teacher_output]
    if cfg.teacher.truncate and readers:
        raise ConfigError(
            f"teacher.truncate: loss terms {readers} read the teacher's output, so the "
            "teacher cannot stop early; set teacher.truncate=false"
        )
    if cfg.teacher.dtype not in TEACHER_DTYPES:
        raise ConfigError(
            f"teacher.dtype must be one of {list(TEACHER_DTYPES)}, got {cfg.teacher.dtype!r}"
        )
    cache = _open_cache(cfg, terms) if cfg.teacher.cache else None
    train_loader, val_loader, num_classes = build_loaders(
        cfg.data, dist, cfg.train.seed, task, cache
    )
    student = build_model(cfg.student, num_classes).to(dist.device)
    if cfg.train.sync_bn and dist.distributed:  # BN statistics over the global batch
        student = nn.SyncBatchNorm.convert_sync_batchnorm(student)
    teacher = None
    if cfg.teacher.name and cache is None:
        teacher = build_model(cfg.teacher, num_classes).to(dist.device)
    amp_dtype = AMP_DTYPES[cfg.train.amp]

    def evaluate(model: nn.Module) -> dict[str, float]:
        return task.evaluate(model, val_loader, dist.device, amp_dtype, cfg.train.max_eval_batches)

    run_dir = Path(resume) if resume else _run_dir(cfg, recipe_name, dist)
    if not resume and (run_dir / "last.pt").exists():
        raise FileExistsError(
            f"{run_dir} already holds a run; resume it with --resume {run_dir} or pick another "
            "train.name"
        )
    log = RunLogger(run_dir, enabled=dist.is_main)
    if dist.is_main:
        save_config(cfg, run_dir / "config.yaml")
    if teacher is not None and not resume:
        metrics = evaluate(teacher)
        log.log("teacher", 0, **metrics)
        shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, float))
        log.print(f"teacher {cfg.teacher.name}: {shown}")
        if cfg.train.check_teacher:
            task.check_teacher(metrics, num_classes, cfg.teacher.name)

    items = [train_loader.dataset[i] for i in range(2)]
    example, example_targets = (train_loader.collate_fn or default_collate)(items)
    distiller = Distiller(
        teacher,
        student,
        terms,
        teacher_inference_mode=cfg.teacher.inference_mode,
        teacher_dtype=cfg.teacher.dtype,
        teacher_channels_last=cfg.teacher.channels_last,
        truncate_teacher=cfg.teacher.truncate,
        cached_teacher=cache is not None,
    )
    distiller.probe(example.to(dist.device), example_targets)
    if cfg.train.compile:
        distiller.compile_models()
    # Parameters with an objective of their own (e.g. CAKD's discriminator) get their own
    # optimizer and stay out of DDP's gradient sync; the trainer averages their gradients.
    aux_terms = [t for t in terms.values() if t.auxiliary_parameters()]
    aux_ids = {id(p) for t in aux_terms for p in t.auxiliary_parameters()}
    model: nn.Module = distiller
    if dist.distributed:
        if aux_ids:
            ignored = [n for n, p in distiller.named_parameters() if id(p) in aux_ids]
            nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
                distiller, ignored
            )
        ids = [dist.local_rank] if dist.device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(distiller, device_ids=ids)
    optim = cfg.optim
    lr = optim.lr
    if optim.base_batch_size:  # linear scaling rule: lr is given for base_batch_size images
        lr = optim.lr * dist.world_size * cfg.data.batch_size / optim.base_batch_size
    options = (
        optim.name,
        lr,
        optim.momentum,
        optim.nesterov,
        tuple(optim.betas),
        optim.weight_decay,
    )
    groups = parameter_groups(
        distiller,
        lr,
        optim.norm_weight_decay,
        optim.bias_lr_mult,
        optim.bias_weight_decay,
        exclude=aux_ids,
    )
    optimizer = build_optimizer(groups, *options)
    schedule = OmegaConf.to_container(cfg.schedule, resolve=True)
    epochs = schedule.pop("epochs")
    max_steps = cfg.train.max_steps
    if schedule["iters"]:  # an iteration budget (mmsegmentation style): enough epochs for it
        epochs = math.ceil(schedule["iters"] / len(train_loader))
        max_steps = min(max_steps or schedule["iters"], schedule["iters"])
    scheduler = build_scheduler(optimizer, len(train_loader), epochs, **dict(schedule))
    aux_optimizer = aux_scheduler = None
    if aux_terms:
        aux_groups = [
            {"params": t.auxiliary_parameters(), "lr": lr * t.auxiliary_lr_scale} for t in aux_terms
        ]
        aux_optimizer = build_optimizer(aux_groups, *options)
        aux_scheduler = build_scheduler(aux_optimizer, len(train_loader), epochs, **schedule)
    ema = None
    if cfg.train.ema_decay is not None:
        images_per_step = dist.world_size * cfg.data.batch_size
        decay = adjusted_ema_decay(
            cfg.train.ema_decay, images_per_step, cfg.train.ema_steps, epochs
        )
        ema = ModelEMA(student, decay, cfg.train.ema_steps, cfg.schedule.warmup_epochs)
    meta = {
        "config": OmegaConf.to_container(cfg, resolve=True),
        "student_name": cfg.student.name,
        "num_classes": cfg.student.num_classes or num_classes,
    }
    trainer = Trainer(
        model,
        optimizer,
        scheduler,
        train_loader,
        evaluate,
        run_dir,
        epochs,
        dist,
        metric=task.metric,
        amp=cfg.train.amp,
        clip_grad_norm=optim.clip_grad_norm,
        seed=cfg.train.seed,
        max_steps=max_steps,
        eval_every=cfg.train.eval_every,
        log_every=cfg.train.log_every,
        logger=log,
        meta=meta,
        aux_optimizer=aux_optimizer,
        aux_scheduler=aux_scheduler,
        ema=ema,
    )
    if cache is not None:
        cache.check_fits(fingerprint_sections(cfg, *cached_outputs(cfg, terms)), epochs)
    if resume:
        trainer.load_state_dict(load_checkpoint(run_dir / "last.pt"))
        log.print(f"resumed {run_dir} after epoch {trainer.epoch} (step {trainer.step})")
    return trainer
