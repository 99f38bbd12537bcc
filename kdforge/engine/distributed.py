"""One process per device under ``torchrun``; the same code runs as a single process."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from kdforge.errors import ConfigError

__all__ = ["DistInfo", "all_reduce_sum", "cleanup_distributed", "init_distributed", "select_device"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def select_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; an unavailable device is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                "train.device=cuda but this torch sees no CUDA device "
                f"(torch {torch.__version__}); use train.device=auto or cpu"
            )
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    if name not in ("cpu", "mps"):
        raise ConfigError(f"train.device must be auto, cpu, cuda or mps, got {name!r}")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("train.device=mps but MPS is not available; use train.device=auto")
    return torch.device(name)


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    NCCL on CUDA, gloo otherwise. Without ``WORLD_SIZE`` > 1 this is a single process.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    torch_device = select_device(device, local_rank)
    if world_size == 1:
        return DistInfo(device=torch_device)
    if not dist.is_initialized():
        backend = "nccl" if torch_device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, torch_device)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over processes (in place) when running distributed; returns it."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor
