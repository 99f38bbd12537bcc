"""Experiment trackers (train.loggers): the recipe rules, the missing-package error, and what
a tracker hook receives, with a stand-in tracker (the real ones: tests/interop/)."""

import inspect
import json
import sys
from typing import ClassVar

import pytest
import torch

from kdforge.config import load_config
from kdforge.config.schema import LOGGERS
from kdforge.engine import trackers
from kdforge.engine.build import build_trainer
from kdforge.engine.hooks import HookBase
from kdforge.engine.trackers import TRACKERS, TrackerHook
from kdforge.errors import ConfigError, DataError, MissingDependencyError

KD = [
    "teacher.name=resnet8",
    "student.name=resnet8",
    "loss={ce: {weight: 0.1}, kd: {weight: 0.9}}",
    "schedule.epochs=2",
]


class FakeTracker(TrackerHook):
    """Records what a tracker would get; ``runs`` outlives the hook, as a tracker's store."""

    runs: ClassVar[dict[str, dict]] = {}

    def start(self, default_name):
        if self.run_id is None:
            self.run_id = f"run{len(self.runs)}"
            self.runs[self.run_id] = {"name": default_name, "config": self.config, "logs": []}
        self.runs[self.run_id]["status"] = "running"
        self.runs[self.run_id]["starts"] = self.runs[self.run_id].get("starts", 0) + 1
        return self.run_id

    def log_scalars(self, scalars, step):
        self.runs[self.run_id]["logs"].append((step, scalars))

    def finish(self, success):
        self.runs[self.run_id]["status"] = "finished" if success else "failed"


class FailingHook(HookBase):
    def after_step(self):
        if self.trainer.step == 3:
            raise RuntimeError("boom")


@pytest.fixture
def fake_wandb(monkeypatch):
    """``train.loggers: [wandb]`` builds a FakeTracker."""
    monkeypatch.setitem(TRACKERS, "wandb", FakeTracker)
    monkeypatch.setattr(FakeTracker, "runs", {})
    return FakeTracker.runs


def _scalars_of_log(path, after_step=-1):
    """``[(step, {kind/key: value})]`` of the numbers in log.jsonl, as TensorBoard gets them."""
    logged = []
    for record in map(json.loads, path.read_text().splitlines()):
        kind, step = record.pop("kind"), record.pop("step")
        record.pop("time")
        numbers = {
            f"{kind}/{k}": v
            for k, v in record.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        if step > after_step:
            logged.append((step, numbers))
    return logged


@pytest.mark.parametrize("extra", ["wandb", "mlflow"])
def test_a_missing_tracker_package_names_its_extra_before_the_data_is_read(
    extra, monkeypatch, tiny_overrides, tmp_path
):
    monkeypatch.setitem(sys.modules, extra, None)  # `import extra` fails, installed or not
    overrides = [*tiny_overrides, *KD, f"data.root={tmp_path / 'absent'}"]
    with pytest.raises(DataError):  # what this recipe gives once the trackers are built
        build_trainer(load_config(None, overrides))
    cfg = load_config(None, [*overrides, f"train.loggers=[tensorboard, {extra}]"])
    with pytest.raises(MissingDependencyError, match=rf"pip install 'kdforge\[{extra}\]'"):
        build_trainer(cfg)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("loggers", "message"),
    [
        ("[tensorboard, wandbb]", r"loggers\[1\]: wandbb is not a logger; use one of"),
        ("[{project: x}]", r"loggers\[0\]: type=null is not a logger"),
        ("[wandb, {type: wandb}]", r"loggers\[1\]: wandb is listed twice"),
        ("[{type: mlflow, project: x}]", r"unknown option\(s\) \['project'\]; valid: type, tr"),
        ("[{type: wandb, name: 3}]", r"loggers\[0\] \(wandb\): name=3: must be a string"),
    ],
)
def test_bad_loggers_are_refused_when_the_recipe_is_loaded(loggers, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["student.name=resnet8", f"train.loggers={loggers}"])


def test_a_bad_wandb_mode_is_refused_when_the_run_is_built(tiny_overrides):
    cfg = load_config(None, [*tiny_overrides, *KD, "train.loggers=[{type: wandb, mode: of}]"])
    with pytest.raises(ConfigError, match="mode=of; use one of"):
        build_trainer(cfg)


def test_each_trackers_options_are_its_hooks_keywords():
    assert set(LOGGERS) == {"tensorboard", *TRACKERS}
    for kind, hook in TRACKERS.items():
        keywords = list(inspect.signature(hook).parameters)
        assert keywords == ["config", *LOGGERS[kind]], kind


def test_a_tracker_gets_what_tensorboard_gets_and_resumes_its_run(
    fake_wandb, tiny_overrides, tmp_path
):
    overrides = [*tiny_overrides, *KD, "train.loggers=[wandb]"]
    first = build_trainer(load_config(None, [*overrides, "train.max_steps=6"]))
    assert isinstance(first.hooks[0], FakeTracker)  # first: it sees the teacher's record
    first.fit()
    run = tmp_path / "run"
    assert not (run / "tensorboard").exists()  # not listed
    ((run_id, record),) = fake_wandb.items()
    assert (record["name"], record["status"], record["starts"]) == ("run", "finished", 1)
    assert record["config"]["optim"]["lr"] == 0.05 and record["config"]["train"]["max_steps"] == 6
    assert record["logs"] == _scalars_of_log(run / "log.jsonl")
    assert {"teacher/top1", "train/ce", "train/kd", "train/lr", "val/top1", "summary/best"} <= {
        key for _, scalars in record["logs"] for key in scalars
    }
    assert torch.load(run / "last.pt", weights_only=False)["hooks"]["FakeTracker"] == {
        "run_id": run_id
    }

    count = len(record["logs"])
    resumed = build_trainer(load_config(run / "config.yaml", ["train.max_steps=null"]), resume=run)
    resumed.fit()
    assert list(fake_wandb) == [run_id]  # the same run, continued
    assert (record["status"], record["starts"]) == ("finished", 2)
    assert record["logs"][count:] == _scalars_of_log(run / "log.jsonl", after_step=6)
    assert record["logs"][-1][0] == 12


def test_a_run_that_fails_finishes_its_tracker_as_failed(fake_wandb, tiny_overrides):
    hook = f"train.hooks=[{{type: {__name__}.FailingHook}}]"
    trainer = build_trainer(
        load_config(None, [*tiny_overrides, *KD, "train.loggers=[wandb]", hook])
    )
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit()
    ((_, record),) = fake_wandb.items()
    assert record["status"] == "failed"
    # the teacher's evaluation, then steps 1 and 2 (step 3 failed before it was logged)
    assert [step for step, _ in record["logs"]] == [0, 1, 2]


def test_tensorboard_stays_the_default(tiny_overrides, tmp_path):
    cfg = load_config(None, [*tiny_overrides, *KD, "train.max_steps=1"])
    assert list(cfg.train.loggers) == ["tensorboard"]
    build_trainer(cfg).fit()
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))


def test_build_trackers_leaves_tensorboard_to_the_run_logger(fake_wandb, tiny_overrides, tmp_path):
    from kdforge.engine.logging import RunLogger

    logger = RunLogger(tmp_path)
    cfg = load_config(None, [*tiny_overrides, "student.name=resnet8", "train.loggers=[]"])
    assert trackers.build_trackers(cfg, logger) == [] and not logger.tensorboard
    cfg.train.loggers = ["wandb", "tensorboard"]
    (hook,) = trackers.build_trackers(cfg, logger)
    assert isinstance(hook, FakeTracker) and logger.tensorboard
