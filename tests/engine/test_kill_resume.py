"""``kdforge train`` killed (SIGKILL) in the middle of a checkpoint write or of an
evaluation, then resumed with ``--resume``, ends bit-identical to a run never killed, with
a ``log.jsonl`` that holds each record once and no temporary files left behind.

The run is a real ``python -m kdforge train`` process. A ``sitecustomize`` module on its
``PYTHONPATH`` arranges the kill, chosen by the ``KDFORGE_TEST_KILL`` variable:

* ``checkpoint:E``: ``torch.save`` of the ``last.pt`` state of epoch ``E`` writes half of
  its bytes to the temporary file, syncs them, and the process kills itself;
* ``eval:K``: the ``K``-th call of the task's evaluation (the teacher check counts) kills
  the process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections import Counter

import pytest
import torch

SITECUSTOMIZE = textwrap.dedent(
    """
    import os

    _plan = os.environ.get("KDFORGE_TEST_KILL")
    if _plan:
        import dataclasses
        import io
        import signal

        import torch

        from kdforge.engine import tasks

        _kind, _at = _plan.split(":")
        _at = int(_at)

        def _die():
            os.kill(os.getpid(), signal.SIGKILL)

        if _kind == "checkpoint":
            _save = torch.save

            def _half_then_die(obj, f, *args, **kwargs):
                resume_state = isinstance(obj, dict) and "optimizer" in obj
                if resume_state and obj.get("epoch") == _at and hasattr(f, "fileno"):
                    buffer = io.BytesIO()
                    _save(obj, buffer, *args, **kwargs)
                    data = buffer.getvalue()
                    f.write(data[: len(data) // 2])
                    f.flush()
                    os.fsync(f.fileno())
                    _die()
                return _save(obj, f, *args, **kwargs)

            torch.save = _half_then_die
        elif _kind == "eval":
            _task = tasks.TASKS["classification"]
            _calls = [0]

            def _evaluate(*args, **kwargs):
                _calls[0] += 1
                if _calls[0] == _at:
                    _die()
                return _task.evaluate(*args, **kwargs)

            tasks.TASKS["classification"] = dataclasses.replace(_task, evaluate=_evaluate)
        else:
            raise ValueError(f"KDFORGE_TEST_KILL={_plan!r}")
    """
)

RECIPE = """\
teacher: {name: resnet8}
student: {name: resnet8}
loss:
  ce: {weight: 0.1}
  kd: {weight: 0.9}
optim: {lr: 0.05}
schedule: {epochs: 3, milestones: [2]}
train: {deterministic: true, log_every: 1, check_teacher: false}
"""
STEPS_PER_EPOCH = 6  # 48 images, batch 8


@pytest.fixture(scope="module")
def setup(tmp_path_factory, cifar10_root):
    root = tmp_path_factory.mktemp("kill_resume")
    hooks = root / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE)
    recipe = root / "tiny.yaml"
    recipe.write_text(RECIPE)
    data = [
        "data.name=cifar10",
        f"data.root={cifar10_root}",
        "data.batch_size=8",
        "data.num_workers=0",
        "teacher.pretrained=null",
        f"train.out_dir={root / 'runs'}",
    ]
    return {"hooks": hooks, "recipe": recipe, "data": data, "runs": root / "runs"}


@pytest.fixture(scope="module")
def full(setup):
    """The run never killed, once for every test here."""
    proc = _train(setup, "full")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return setup["runs"] / "full"


def _kdforge(setup, args: list[str], kill: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(setup["hooks"]), os.environ.get("PYTHONPATH")) if p
    )
    env["OMP_NUM_THREADS"] = "1"
    env.pop("KDFORGE_TEST_KILL", None)
    if kill:
        env["KDFORGE_TEST_KILL"] = kill
    cmd = [sys.executable, "-m", "kdforge", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _train(setup, name: str, kill: str | None = None) -> subprocess.CompletedProcess:
    args = ["train", str(setup["recipe"]), "--set", *setup["data"], f"train.name={name}"]
    return _kdforge(setup, args, kill)


def _resume(setup, name: str) -> subprocess.CompletedProcess:
    proc = _kdforge(setup, ["train", "--resume", str(setup["runs"] / name)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _killed(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr[-3000:])


def _records(run) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def _load(path) -> dict:
    return torch.load(path, weights_only=False)


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def _assert_like_uninterrupted(run, full) -> None:
    """Same final weights, same logged values, each record once, nothing left over."""
    last, reference = _load(run / "last.pt"), _load(full / "last.pt")
    assert (last["epoch"], last["step"]) == (3, 3 * STEPS_PER_EPOCH)
    _assert_same_weights(last["student"], reference["student"])
    _assert_same_weights(last["optimizer"]["state"][0], reference["optimizer"]["state"][0])
    best, best_reference = _load(run / "best.pt"), _load(full / "best.pt")
    assert (best["epoch"], best["best"]) == (best_reference["epoch"], best_reference["best"])
    _assert_same_weights(best["student"], best_reference["student"])

    records, expected = _records(run), _records(full)
    keys = Counter((r["kind"], r["step"]) for r in records)
    duplicates = {k: n for k, n in keys.items() if n > 1}
    assert not duplicates, f"log.jsonl repeats records: {duplicates}"
    assert [(r["kind"], r["step"]) for r in records] == [(r["kind"], r["step"]) for r in expected]
    train_steps = [r["step"] for r in records if r["kind"] == "train"]
    assert train_steps == list(range(1, 3 * STEPS_PER_EPOCH + 1))
    for got, want in zip(records, expected, strict=True):  # the values, not only the keys
        for key in ("ce", "kd", "lr", "top1", "top5", "epoch"):
            assert got.get(key) == want.get(key), (got["kind"], got["step"], key)

    leftovers = sorted(p.name for p in run.iterdir() if p.name.endswith(".tmp"))
    assert not leftovers, f"temporary files left in {run}: {leftovers}"
    assert not (run / ".lock").exists()


def test_killed_while_writing_a_checkpoint(setup, full):
    _killed(_train(setup, "in-checkpoint", kill="checkpoint:2"))
    run = setup["runs"] / "in-checkpoint"
    # the kill hit the write of epoch 2's last.pt: half a temporary file, last.pt intact
    partial = list(run.glob(".last.pt.*.tmp"))
    assert len(partial) == 1 and partial[0].stat().st_size > 0
    assert _load(run / "last.pt")["epoch"] == 1
    assert (run / ".lock").exists()  # the killed process could not release it
    assert any(r["kind"] == "train" and r["epoch"] == 1 for r in _records(run))  # epoch 2
    proc = _resume(setup, "in-checkpoint")
    assert f"resumed {run} after epoch 1 (step {STEPS_PER_EPOCH})" in proc.stdout
    _assert_like_uninterrupted(run, full)


def test_killed_during_evaluation(setup, full):
    # evaluations: 1 the teacher check, 2 after epoch 1, 3 after epoch 2: killed there,
    # after epoch 2's steps were logged and before its checkpoint
    _killed(_train(setup, "in-eval", kill="eval:3"))
    run = setup["runs"] / "in-eval"
    assert _load(run / "last.pt")["epoch"] == 1
    logged = [r["step"] for r in _records(run) if r["kind"] == "train"]
    assert max(logged) == 2 * STEPS_PER_EPOCH  # steps past the checkpoint, to be cut
    proc = _resume(setup, "in-eval")
    assert f"resumed {run} after epoch 1 (step {STEPS_PER_EPOCH})" in proc.stdout
    _assert_like_uninterrupted(run, full)


def test_killed_twice_then_resumed(setup, full):
    """A resumed run killed again (in its next checkpoint write) resumes again exactly."""
    _killed(_train(setup, "twice", kill="eval:3"))
    run = setup["runs"] / "twice"
    _killed(
        _kdforge(setup, ["train", "--resume", str(run)], kill="checkpoint:3")
    )  # epoch 2 redone and saved, epoch 3 trained, killed writing its last.pt
    assert _load(run / "last.pt")["epoch"] == 2
    assert list(run.glob(".last.pt.*.tmp"))
    _resume(setup, "twice")
    _assert_like_uninterrupted(run, full)
