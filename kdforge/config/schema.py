"""The recipe schema: every key with its type and default (a comment says what it does)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "LOGGERS",
    "Config",
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "ScheduleConfig",
    "TeacherConfig",
    "TrainConfig",
    "default_num_workers",
]

# train.loggers: where the run's scalars go besides log.jsonl. An entry is a name or
# {type: NAME, **options}; each option is a string (null or left out: the tracker's own
# default, e.g. its environment variables); the run name defaults to the run folder's.
LOGGERS: dict[str, tuple[str, ...]] = {
    "tensorboard": (),  # RUN_DIR/tensorboard
    "wandb": ("project", "entity", "name", "group", "mode", "dir"),  # pip install kdforge[wandb]
    "mlflow": ("tracking_uri", "experiment_name", "run_name"),  # pip install kdforge[mlflow]
}


def default_num_workers() -> int:
    """``data.num_workers`` when a recipe leaves it out: 4, or fewer when this process may
    use fewer CPU cores (more workers than cores only compete for them)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(4, cores or 1)


@dataclass
class DataConfig:
    # cifar100 | cifar10 | imagefolder | digits; coco | objects365v2 (detection);
    # cityscapes | segfolder
    name: str = "cifar100"
    root: str | None = "data"  # folder that holds the data set (see kdforge.data)
    batch_size: int = 64  # per process
    eval_batch_size: int | None = None  # defaults to batch_size
    num_workers: int = field(default_factory=default_num_workers)  # per process
    mixup_alpha: float = 0.0  # > 0: mixup with Beta(alpha, alpha), soft targets (CAKD: 0.2)
    repeated_aug: int = 1  # > 1: each image this many times per epoch (CAKD: 4)
    group_by_aspect_ratio: bool = False  # batches of one orientation (mmdet's detection loaders)
    on_bad_sample: str = "error"  # error | skip an unreadable image (kdforge.data.bad_samples)
    options: dict[str, Any] = field(default_factory=dict)  # data-set specific, e.g. image_size


@dataclass
class ModelConfig:
    name: str | None = None  # zoo (list_models()), torchvision/..., timm/..., hf/DIR
    num_classes: int | None = None  # defaults to the data set's
    pretrained: str | None = None  # .pth / .safetensors checkpoint to load
    kwargs: dict[str, Any] = field(default_factory=dict)  # builder keywords (fpn_channels=...)


@dataclass
class TeacherConfig(ModelConfig):
    """The teacher's model, plus how cheaply to run it (see :class:`kdforge.Distiller`)."""

    dtype: str = "float32"  # float32 | bfloat16 | float16: autocast the teacher's forward
    channels_last: bool = False  # channels-last teacher and input (a GPU speed-up)
    truncate: bool = False  # stop the teacher after its last tapped module (feature terms)
    inference_mode: bool = True  # torch.inference_mode where every loss term allows it
    cache: str | None = None  # a `kdforge cache-teacher` folder: replay it, never run the teacher


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | adamw
    lr: float = 0.05
    momentum: float = 0.9  # sgd
    nesterov: bool = False  # sgd
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adamw
    weight_decay: float = 5e-4
    norm_weight_decay: float | None = None  # weight decay of norm layers; None = weight_decay
    bias_lr_mult: float = 1.0  # lr multiplier of (non-norm) biases (mmdet FCOS: 2)
    bias_weight_decay: float | None = None  # weight decay of biases; None = weight_decay
    # lr multipliers by parameter-name part (mmengine custom_keys lr_mult; DETR {backbone: 0.1})
    lr_mults: dict[str, float] = field(default_factory=dict)
    base_batch_size: int | None = None  # set: lr is for this global batch, scaled linearly
    clip_grad_norm: float | None = None  # max global grad norm; None = no clipping


@dataclass
class ScheduleConfig:
    name: str = "multistep"  # multistep | cosine | poly | constant
    epochs: int = 240
    iters: int | None = None  # count iterations instead (mmseg: 80000); epochs then derived
    milestones: list[int] = field(default_factory=lambda: [150, 180, 210])  # multistep
    gamma: float = 0.1  # multistep
    min_lr: float = 0.0  # cosine, poly
    power: float = 0.9  # poly
    warmup_epochs: float = 0.0  # linear warm-up from warmup_factor * lr
    warmup_factor: float = 0.001
    warmup_iters: int = 0  # > 0: warm up over this many steps instead (mmdet: 500)
    warmup_mode: str = "linear"  # linear | constant (warmup_factor * lr throughout; mmdet FCOS)
    warmup_by: str = "step"  # step | epoch: warm-up factor per step, or per epoch (torchvision)


@dataclass
class TrainConfig:
    seed: int = 0
    deterministic: bool = False  # deterministic GPU kernels: bit-identical reruns and resumes
    amp: str = "none"  # none | bf16 | fp16 (fp16 needs CUDA)
    device: str = "auto"  # auto | cpu | cuda | mps
    out_dir: str = "runs"
    name: str | None = None  # run folder under out_dir; default: recipe name + time
    check_teacher: bool = True  # stop if the teacher scores at chance on validation
    max_steps: int | None = None  # stop after this many steps (smoke tests, benchmarks)
    max_eval_batches: int | None = None  # evaluate on the first batches only
    eval_every: int = 1  # epochs between evaluations (the last epoch always evaluates)
    log_every: int = 20  # steps between log lines
    ema_decay: float | None = None  # EMA of the student (per image, torchvision's); None = off
    ema_steps: int = 32  # optimizer steps between EMA updates
    sync_bn: bool = False  # SyncBatchNorm in the student under DDP (mmseg recipes)
    # best | final: the evaluation the recipe's source reports; None: the task's (best for
    # classification, as mdistiller; final for detection and segmentation, as mmdet/mmseg)
    report: str | None = None
    compile: bool = False  # torch.compile student and teacher (eager, with a warning, on failure)
    stop_distillation: int | None = None  # from this epoch (0-based) on, train without the teacher
    # extra hooks, each {type: package.module.HookClass, **its keyword arguments}
    hooks: list[Any] = field(default_factory=list)
    # tensorboard | wandb | mlflow, or {type: wandb, project: ...}: see LOGGERS above
    loggers: list[Any] = field(default_factory=lambda: ["tensorboard"])


@dataclass
class Config:
    task: str = "classification"  # classification | detection | segmentation
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)  # name None: no teacher
    student: ModelConfig = field(default_factory=ModelConfig)
    # {term name: {type: <kdforge.losses.TERMS key, default the name>, **kwargs}};
    # empty: the task's ground-truth loss alone (ce, detection)
    loss: dict[str, Any] = field(default_factory=dict)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
