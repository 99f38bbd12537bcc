"""Experiment trackers (Weights & Biases, MLflow) as hooks: the run's scalars there too.

A tracker hook starts a run of its tracker before training (on ``--resume``, it goes on
with the run whose id its checkpoint state holds), logs the resolved recipe as the run's
config, and from then on receives every record of the run logger
(:class:`~kdforge.engine.logging.RunLogger`): the scalars TensorBoard gets, under the same
names (``train/ce``, ``train/lr``, ``val/top1``, ``summary/best``...) and steps. The logger
finishes the run when training ends, as failed when it ended in an error. Only the process
that writes the run folder (the main one) talks to the tracker.

A tracker keeps what an interrupted run logged after its last checkpoint: the resumed run
logs those steps again, with the same values (the resume is exact); W&B ignores steps
below the run's last one, MLflow keeps both.
"""

from __future__ import annotations

import abc
import importlib
import time
from types import ModuleType
from typing import Any

from omegaconf import DictConfig, OmegaConf

from kdforge.engine.hooks import HookBase
from kdforge.engine.logging import RunLogger
from kdforge.errors import ConfigError, MissingDependencyError

__all__ = ["TRACKERS", "MLflowHook", "TrackerHook", "WandbHook", "build_trackers"]

_WANDB_MODES = ("online", "offline", "disabled", "shared")


def _require(module: str, extra: str) -> ModuleType:
    """Import ``module``, or say which extra of kdforge installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingDependencyError(
            f"train.loggers lists {extra}, which needs the {module} package ({err}); install "
            f"it with pip install 'kdforge[{extra}]' or remove {extra} from train.loggers"
        ) from None


def _flat(values: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """A nested config as ``(dotted.key, text)`` pairs (MLflow's parameters)."""
    pairs = []
    for key, value in values.items():
        if isinstance(value, dict) and value:
            pairs += _flat(value, f"{prefix}{key}.")
        else:
            pairs.append((f"{prefix}{key}", str(value)))
    return pairs


class TrackerHook(HookBase, abc.ABC):
    """Base of the tracker hooks: a run started (or resumed) before training that then
    receives the run logger's scalars; the run's id is the hook's state.

    Subclasses implement :meth:`start`, :meth:`log_scalars` and :meth:`finish`. Place the
    hook first: records logged before its ``before_train`` (the teacher's evaluation) would
    not reach it.

    Args:
        config: the resolved recipe, logged as the run's config.
    """

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        self.config = config or {}
        self.run_id: str | None = None

    def before_train(self) -> None:
        logger = self.trainer.logger
        if not logger.enabled:  # another process writes the run, or there is no run folder
            return
        self.run_id = self.start(self.trainer.run_dir.name)
        logger.trackers.append(self)

    @abc.abstractmethod
    def start(self, default_name: str) -> str:
        """Start a run named ``default_name`` unless the options name it, or resume the run
        ``self.run_id`` when set; return the run's id."""

    @abc.abstractmethod
    def log_scalars(self, scalars: dict[str, float], step: int) -> None:
        """Log ``{name: value}`` at ``step`` (optimizer steps)."""

    @abc.abstractmethod
    def finish(self, success: bool) -> None:
        """End the run, as failed unless ``success``."""

    def state_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.run_id = state["run_id"]


class WandbHook(TrackerHook):
    """A Weights & Biases run (``pip install 'kdforge[wandb]'``).

    Args:
        config: the resolved recipe, the run's config.
        project, entity, group, dir: as :func:`wandb.init` takes them; None: W&B's default
            (``WANDB_PROJECT``, ``WANDB_DIR``...).
        name: the run's name; default the run folder's.
        mode: online | offline | disabled | shared; None: W&B's (``WANDB_MODE``).
    """

    def __init__(
        self,
        config: dict[str, Any] | None = None,
        project: str | None = None,
        entity: str | None = None,
        name: str | None = None,
        group: str | None = None,
        mode: str | None = None,
        dir: str | None = None,
    ) -> None:
        super().__init__(config)
        if mode not in (None, *_WANDB_MODES):
            raise ConfigError(f"train.loggers (wandb): mode={mode}; use one of {_WANDB_MODES}")
        self.wandb = _require("wandb", "wandb")
        self.name = name
        options = {"project": project, "entity": entity, "group": group, "mode": mode, "dir": dir}
        self.options = {k: v for k, v in options.items() if v is not None}
        self.run: Any = None

    def start(self, default_name: str) -> str:
        resume = {"id": self.run_id, "resume": "allow"} if self.run_id else {}
        try:
            self.run = self.wandb.init(name=self.name or default_name, **self.options, **resume)
        except self.wandb.Error as err:
            raise ConfigError(f"train.loggers (wandb): cannot start the run: {err}") from None
        # allow_val_change: a resume may change what config.resume allows (paths, workers)
        self.run.config.update(self.config, allow_val_change=True)
        return self.run.id

    def log_scalars(self, scalars: dict[str, float], step: int) -> None:
        self.run.log(scalars, step=step)

    def finish(self, success: bool) -> None:
        self.run.finish(exit_code=0 if success else 1)
        self.run = None


class MLflowHook(TrackerHook):
    """An MLflow run, through :class:`mlflow.MlflowClient` (``pip install 'kdforge[mlflow]'``,
    MLflow's lightweight client; a local store needs the full ``mlflow`` package or
    ``MLFLOW_ALLOW_FILE_STORE=true``). The recipe is logged as parameters (``optim.lr``...)
    when the run starts.

    Args:
        config: the resolved recipe.
        tracking_uri: None: MLflow's default (``MLFLOW_TRACKING_URI``).
        experiment_name: None: ``MLFLOW_EXPERIMENT_NAME``, else MLflow's ``Default``.
        run_name: default the run folder's name.
    """

    def __init__(
        self,
        config: dict[str, Any] | None = None,
        tracking_uri: str | None = None,
        experiment_name: str | None = None,
        run_name: str | None = None,
    ) -> None:
        super().__init__(config)
        self.mlflow = _require("mlflow", "mlflow")
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        self.run_name = run_name
        self.client: Any = None

    def start(self, default_name: str) -> str:
        from mlflow.entities import Param
        from mlflow.environment_variables import MLFLOW_EXPERIMENT_NAME

        try:
            self.client = client = self.mlflow.MlflowClient(self.tracking_uri)
            if self.run_id is not None:
                client.update_run(self.run_id, status="RUNNING")
                return self.run_id
            name = self.experiment_name or MLFLOW_EXPERIMENT_NAME.get() or "Default"
            found = client.get_experiment_by_name(name)
            experiment_id = found.experiment_id if found else client.create_experiment(name)
            run = client.create_run(experiment_id, run_name=self.run_name or default_name)
            run_id = run.info.run_id
            params = [Param(key, value) for key, value in _flat(self.config)]
            for i in range(0, len(params), 100):  # log_batch takes 100 parameters at most
                client.log_batch(run_id, params=params[i : i + 100])
        except self.mlflow.exceptions.MlflowException as err:
            raise ConfigError(f"train.loggers (mlflow): {err.message}") from None
        return run_id

    def log_scalars(self, scalars: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, float(value), now, step) for key, value in scalars.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, success: bool) -> None:
        self.client.set_terminated(self.run_id, "FINISHED" if success else "FAILED")


TRACKERS: dict[str, type[TrackerHook]] = {"wandb": WandbHook, "mlflow": MLflowHook}


def build_trackers(cfg: DictConfig, logger: RunLogger) -> list[TrackerHook]:
    """The tracker hooks of ``train.loggers``, with the resolved recipe as their config; a
    missing package is a MissingDependencyError naming the extra to install. TensorBoard is
    the run logger's own: ``logger.tensorboard`` is set by whether it is listed."""
    config = OmegaConf.to_container(cfg, resolve=True)
    hooks = []
    logger.tensorboard = False
    for entry in OmegaConf.to_container(cfg.train.loggers, resolve=True):
        options = dict(entry) if isinstance(entry, dict) else {"type": entry}
        kind = options.pop("type")
        if kind == "tensorboard":
            logger.tensorboard = True
        else:
            hooks.append(TRACKERS[kind](config=config, **options))
    return hooks
