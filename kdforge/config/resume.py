"""What a resumed run may change, and the check that refuses the rest."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from kdforge.config.rules import _resolved
from kdforge.config.schema import Config
from kdforge.errors import ConfigError

__all__ = ["RESUME_SAFE_KEYS", "check_resume", "run_defining_changes"]

# --- resuming -------------------------------------------------------------------------------

# What a resume may change without making it another run: where the data and the run
# folder are, the machine and its loader workers, how often to log and evaluate and on how
# much (evaluation only), switches of speed rather than of what is computed, and
# train.max_steps (raise it to continue a run it stopped). Anything else, the teacher's
# checkpoint included, defines the run.
RESUME_SAFE_KEYS = frozenset(
    {
        "data.root",
        "data.on_bad_sample",
        "data.num_workers",
        "data.eval_batch_size",
        "train.device",
        "train.out_dir",
        "train.name",
        "train.log_every",
        "train.loggers",
        "train.eval_every",
        "train.max_eval_batches",
        "train.check_teacher",
        "train.compile",
        "teacher.channels_last",
        "teacher.inference_mode",
        "teacher.truncate",
        "train.max_steps",
    }
)


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The dotted keys where ``old`` and ``new`` differ: mappings key by key, anything else
    (lists included) as a whole; a key on one side only is one difference."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return [] if old == new else [prefix]
    keys = []
    for name in old.keys() | new.keys():
        key = f"{prefix}.{name}" if prefix else str(name)
        both = name in old and name in new
        keys += _differences(old[name], new[name], key) if both else [key]
    return keys


def run_defining_changes(saved: DictConfig, new: DictConfig) -> tuple[list[str], list[str]]:
    """The dotted keys whose values differ between two configs, sorted, as
    ``(run_defining, resume_safe)``; the second holds those in :data:`RESUME_SAFE_KEYS`.

    Give both as :func:`load_config` returns them (e.g. ``load_config(run / "config.yaml")``
    and the same with the resume's overrides), so that a key the schema gained since the
    run has its default on both sides. Mappings are compared key by key
    (``loss.kd.temperature``), lists as a whole; a term added or removed is one key
    (``loss.fitnet``).
    """
    changed = sorted(_differences(_resolved(saved), _resolved(new)))
    safe = [k for k in changed if k in RESUME_SAFE_KEYS]
    return [k for k in changed if k not in RESUME_SAFE_KEYS], safe


def check_resume(saved: dict[str, Any], cfg: DictConfig) -> list[str]:
    """Refuse a resume whose config changes the run; return the allowed changes (paths,
    workers, logging...) as ``key: old -> new``.

    ``saved`` is the config stored in the checkpoint: it is the reference, so an edited
    ``config.yaml`` counts as a change too.
    """
    before = OmegaConf.merge(OmegaConf.structured(Config), saved)
    defining, safe = run_defining_changes(before, cfg)

    def show(key: str) -> str:
        old, new = (OmegaConf.select(c, key, default=None) for c in (before, cfg))
        return f"{key}: {old} -> {new}"

    if defining:
        raise ConfigError(
            f"--resume would change the run: {'; '.join(map(show, defining))}. A resumed run "
            "keeps its settings (last.pt holds them); to change these, start a new run with "
            "another train.name"
        )
    return [show(key) for key in safe]
