"""Reading a recipe over the defaults, ``--set`` overrides, and saving the resolved config."""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from kdforge.config.recipes import resolve_recipe
from kdforge.config.rules import _omegaconf_message, _one_line, validate_config
from kdforge.config.schema import Config
from kdforge.errors import ConfigError

__all__ = ["load_config", "save_config"]

# --- reading and merging --------------------------------------------------------------------


def _section(path: list[str]) -> type | None:
    """The schema dataclass at ``path`` (section names), or None where there is none."""
    node: type = Config
    for part in path:
        factory = {f.name: f.default_factory for f in fields(node)}.get(part)
        if not (isinstance(factory, type) and is_dataclass(factory)):
            return None
        node = factory
    return node


def _valid_keys(full_key: str) -> list[str]:
    section = _section(full_key.split(".")[:-1])
    return [f.name for f in fields(section)] if section else []


def _expected_type(full_key: str) -> str | None:
    *path, name = full_key.split("[")[0].split(".")
    section = _section(path)
    types = {f.name: f.type for f in fields(section)} if section else {}
    return str(types[name]) if name in types else None


def _merge(base: DictConfig, other: Any, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, other)  # type: ignore[return-value]
    except ConfigKeyError as err:
        key = getattr(err, "full_key", None) or str(err)
        valid = _valid_keys(key)
        hint = f"; valid keys there: {', '.join(valid)}" if valid else ""
        raise ConfigError(f"{source}: unknown config key {key!r}{hint}") from None
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        message = _omegaconf_message(err)
        if not key:  # a whole section given as a value (optim: 3)
            mapping = (dict, DictConfig)
            sections = [k for k in other if _section([k]) and not isinstance(other[k], mapping)]
            if sections:
                message = f"{sections[0]} is a section; give its keys ({sections[0]}: {{...}})"
            raise ConfigError(f"{source}: {message}") from None
        expected = _expected_type(key)
        kind = f" (expects {expected})" if expected else ""
        raise ConfigError(f"{source}: bad value for {key!r}{kind}: {message}") from None


def _yaml_message(where: str, err: yaml.MarkedYAMLError) -> str:
    """``file:line:column: invalid YAML: problem (context on line n)``."""
    mark = err.problem_mark or err.context_mark
    if mark is not None:
        where = f"{where}:{mark.line + 1}:{mark.column + 1}"
    text = f"{where}: invalid YAML: {err.problem or err.context}"
    if err.problem and err.context and err.context_mark is not None:
        text += f" ({err.context} on line {err.context_mark.line + 1})"
    return _one_line(text)


_NOT_A_MAPPING = "a recipe is a mapping of sections (student: ..., optim: ...)"


def _read_recipe(path: Path) -> DictConfig:
    """The YAML mapping at ``path``; a folder, a missing, unreadable, malformed, empty or
    non-mapping file is a one-line ConfigError naming it."""
    if path.is_dir():
        raise ConfigError(f"config {str(path)!r} is a folder; give a recipe file (.yaml)")
    if not path.is_file():
        raise ConfigError(f"config {str(path)!r} is not a regular file; give a recipe file (.yaml)")
    try:
        recipe = OmegaConf.load(path)
    except yaml.MarkedYAMLError as err:
        raise ConfigError(_yaml_message(str(path), err)) from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {_one_line(str(err))}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file; a recipe is YAML") from None
    except OSError as err:  # OmegaConf's for a YAML scalar, errno-less
        problem = f"cannot be read ({err.strerror})" if err.strerror else _NOT_A_MAPPING
        raise ConfigError(f"{path}: {problem}") from None
    except OmegaConfBaseException as err:
        raise ConfigError(f"{path}: {_omegaconf_message(err)}") from None
    if not isinstance(recipe, DictConfig):
        raise ConfigError(f"{path}: {_NOT_A_MAPPING}, not a list")
    if not recipe:
        raise ConfigError(f"{path}: the recipe is empty; it needs at least student: {{name: ...}}")
    return recipe


def _read_override(item: str) -> DictConfig:
    """``--set key=value`` as a one-key config; a malformed one is a ConfigError naming it."""
    key, sep, _ = item.partition("=")
    if not sep:
        raise ConfigError(f"--set {item}: not of the form key=value (e.g. optim.lr=0.1)")
    if not all(key.split(".")):
        raise ConfigError(f"--set {item}: {key!r} is not a key (e.g. optim.lr=0.1)")
    try:
        return OmegaConf.from_dotlist([item])
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or err
        raise ConfigError(f"--set {item}: the value is not valid YAML ({problem})") from None
    except OmegaConfBaseException as err:
        raise ConfigError(f"--set {item}: {_omegaconf_message(err)}") from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> DictConfig:
    """Load a recipe over the defaults and apply ``key=value`` overrides, in that order;
    then check every value (:func:`validate_config`).

    ``path`` is a YAML file or, when no file has that name, a shipped recipe's name
    (``cifar100/kd/resnet32x4_resnet8x4``; :func:`kdforge.config.recipes.resolve_recipe`).
    """
    cfg = OmegaConf.structured(Config)
    if path is not None:
        cfg = _merge(cfg, _read_recipe(resolve_recipe(path)), str(path))
    for item in overrides or []:
        cfg = _merge(cfg, _read_override(item), f"--set {item}")
    validate_config(cfg)
    if cfg.student.name is None:
        raise ConfigError("student.name is not set; pick one of kdforge.list_models()")
    return cfg


def save_config(cfg: DictConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (what the run actually used)."""
    Path(path).write_text(OmegaConf.to_yaml(cfg, resolve=True))
