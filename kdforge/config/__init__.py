"""Recipes: one YAML file, merged over typed defaults, overridden with ``--set a.b=c``.

Every key must exist in the schema below (loss terms are checked against their
constructor's signature when they are built); an unknown key fails with the key's full
name and the list of valid keys at that level. Once merged, every value is checked
against :data:`RULES` (:func:`validate_config`); a value out of range fails with the
key, the value and the range.
"""

from kdforge.config.loading import load_config, save_config
from kdforge.config.resume import RESUME_SAFE_KEYS, check_resume, run_defining_changes
from kdforge.config.rules import RULES, Rule, validate_config
from kdforge.config.schema import (
    Config,
    DataConfig,
    ModelConfig,
    OptimConfig,
    ScheduleConfig,
    TeacherConfig,
    TrainConfig,
)
from kdforge.errors import ConfigError

__all__ = [
    "RESUME_SAFE_KEYS",
    "RULES",
    "Config",
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "Rule",
    "ScheduleConfig",
    "TeacherConfig",
    "TrainConfig",
    "check_resume",
    "load_config",
    "run_defining_changes",
    "save_config",
    "validate_config",
]
