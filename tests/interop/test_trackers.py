"""The W&B and MLflow trackers on a tiny run, offline: each holds the scalars of log.jsonl,
at the same steps, and a resumed run goes on in the same tracker run.

Needs ``kdforge[wandb]`` and ``kdforge[mlflow]``, which ``make test-interop`` installs.
"""

from __future__ import annotations

import json
import struct
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from kdforge.config import load_config
from kdforge.engine.build import build_trainer

KD = [
    "teacher.name=resnet8",
    "student.name=resnet8",
    "loss={ce: {weight: 0.1}, kd: {weight: 0.9}}",
    "schedule.epochs=2",  # 6 steps an epoch on the generated CIFAR-10
]


def _logged(path: Path) -> list[tuple[int, dict[str, float]]]:
    """``[(step, {kind/key: value})]``: the numbers of log.jsonl, named as TensorBoard's."""
    logged = []
    for record in map(json.loads, path.read_text().splitlines()):
        kind, step = record.pop("kind"), record.pop("step")
        numbers = {
            f"{kind}/{k}": v
            for k, v in record.items()
            if k != "time" and isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        logged.append((step, numbers))
    return logged


def _train_stop_and_resume(overrides: list[str], run: Path) -> None:
    """Train one epoch of two (stopped by max_steps), then resume the run to its end."""
    build_trainer(load_config(None, [*overrides, "train.max_steps=6"])).fit()
    build_trainer(load_config(run / "config.yaml", ["train.max_steps=null"]), resume=run).fit()


# --- Weights & Biases ---------------------------------------------------------------------


def _wandb_records(path: Path) -> list:
    """The records of a ``.wandb`` file: after a 7-byte file header, a log of 32 KiB blocks
    in which each chunk has a 7-byte header (CRC32, length, type: 1 full, 2 first, 3 middle,
    4 last); each record is wandb's ``Record`` protobuf message."""
    from wandb.proto import wandb_internal_pb2

    data, block, header = path.read_bytes(), 32768, 7
    assert data[:4] == b":W&B"
    records, offset, parts = [], header, b""
    while offset + header <= len(data):
        if block - offset % block < header:  # a block's tail too short for a header
            offset += block - offset % block
            continue
        _, length, kind = struct.unpack("<IHB", data[offset : offset + header])
        if kind == 0:  # zero padding
            break
        parts += data[offset + header : offset + header + length]
        offset += header + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            records.append(record)
            parts = b""
    return records


def _items(items) -> dict:
    """``{key: value}`` of wandb's items (a ``key``, or a ``nested_key`` path, and JSON)."""
    return {i.key or ".".join(i.nested_key): json.loads(i.value_json) for i in items}


def _wandb_run(path: Path) -> dict:
    """A run's id, name, project, config, history rows ``{step: {key: value}}`` and exit code."""
    run = {"config": {}, "history": {}}
    for record in _wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run |= {"id": record.run.run_id, "name": record.run.display_name}
            run["project"] = record.run.project
            run["config"] |= _items(record.run.config.update)
        elif kind == "config":
            run["config"] |= _items(record.config.update)
        elif kind == "history":
            row = _items(record.history.item)
            step = row.pop("_step")
            run["history"][step] = {k: v for k, v in row.items() if not k.startswith("_")}
        elif kind == "exit":
            run["exit_code"] = record.exit.exit_code
    return run


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    """W&B in offline mode with every folder of its own under tmp_path; its service process
    is shut down afterwards."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_ERROR_REPORTING", "false")  # no crash reports sent
    import wandb

    for name in ("DIR", "CONFIG_DIR", "CACHE_DIR", "DATA_DIR", "ARTIFACT_DIR"):
        monkeypatch.setenv(f"WANDB_{name}", str(tmp_path / f"wandb-{name.lower()}"))
        (tmp_path / f"wandb-{name.lower()}").mkdir()
    yield tmp_path / "wandb-dir" / "wandb"
    wandb.teardown()


def test_wandb_holds_the_logged_scalars_and_resumes_the_run(
    offline_wandb, tiny_overrides, tmp_path
):
    loggers = "train.loggers=[tensorboard, {type: wandb, project: kdforge-test}]"
    run = tmp_path / "run"
    _train_stop_and_resume([*tiny_overrides, *KD, loggers], run)

    files = sorted(offline_wandb.glob("offline-run-*/run-*.wandb"))
    assert len(files) == 2  # offline, W&B writes the resumed part apart; it syncs as one run
    first, second = map(_wandb_run, files)
    assert first["id"] == second["id"]  # the resume asked for the same run
    assert (first["name"], first["project"], first["exit_code"]) == ("run", "kdforge-test", 0)
    assert second["exit_code"] == 0
    assert first["config"]["optim"]["lr"] == 0.05
    assert first["config"]["train"]["loggers"][1] == {"type": "wandb", "project": "kdforge-test"}
    expected = defaultdict(dict)  # W&B keeps one row per step
    for step, scalars in _logged(run / "log.jsonl"):
        expected[step] |= scalars
    history = first["history"] | second["history"]
    assert sorted(history) == list(range(13))  # the teacher at 0, then steps 1-12
    assert history == expected  # the same numbers: JSON keeps a float's shortest exact text
    assert {"teacher/top1", "train/ce", "train/kd", "train/lr", "val/top1", "summary/best"} <= {
        key for row in history.values() for key in row
    }
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))  # listed too


# --- MLflow -------------------------------------------------------------------------------


def test_mlflow_holds_the_logged_scalars_and_resumes_the_run(tiny_overrides, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")  # nothing sent anywhere
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps it behind a switch
    import mlflow

    uri = (tmp_path / "mlruns").as_uri()
    loggers = f"train.loggers=[{{type: mlflow, tracking_uri: '{uri}', experiment_name: kd}}]"
    run = tmp_path / "run"
    _train_stop_and_resume([*tiny_overrides, *KD, loggers], run)

    client = mlflow.MlflowClient(uri)
    (found,) = client.search_runs([client.get_experiment_by_name("kd").experiment_id])
    run_id = found.info.run_id
    assert torch.load(run / "last.pt", weights_only=False)["hooks"]["MLflowHook"] == {
        "run_id": run_id
    }
    assert (found.info.run_name, found.info.status) == ("run", "FINISHED")
    assert found.data.params["optim.lr"] == "0.05"
    assert found.data.params["loss.kd.weight"] == "0.9"
    assert not (run / "tensorboard").exists()  # not listed
    expected = defaultdict(list)
    for step, scalars in _logged(run / "log.jsonl"):
        for key, value in scalars.items():
            expected[key].append((step, value))
    assert set(found.data.metrics) == set(expected)
    for key, values in expected.items():
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        assert history == sorted(values), key
    assert expected["val/top1"][-1][0] == 12 and len(expected["val/top1"]) == 2
