import json

import pytest
import torch

from kdforge.config import load_config
from kdforge.engine.build import build_trainer
from kdforge.engine.hooks import AuxiliaryOptimizerHook, EMAHook
from kdforge.engine.tasks import check_teacher_accuracy
from kdforge.errors import ConfigError, NonFiniteLossError
from kdforge.losses import TERMS, LossTerm

KD_RECIPE = [
    "teacher.name=resnet14",
    "student.name=resnet8",
    "loss={ce: {weight: 0.1}, kd: {weight: 0.9}, hint: {type: fitnet, student_layer: layer2, "
    "teacher_layer: layer2, weight: 1.0}}",
    "optim.lr=0.05",
    "schedule.epochs=2",
    "train.deterministic=true",  # exactness on GPU too (CPU kernels are deterministic)
    "schedule.milestones=[1]",
]


def _trainer(overrides, resume=None):
    return build_trainer(load_config(None, overrides), "test", resume=resume)


def test_run_folder_holds_config_logs_tensorboard_and_checkpoints(tiny_overrides, tmp_path):
    trainer = _trainer(tiny_overrides + KD_RECIPE)
    metrics = trainer.fit()
    run = tmp_path / "run"
    assert {"config.yaml", "log.jsonl", "last.pt", "best.pt", "tensorboard"} <= {
        p.name for p in run.iterdir()
    }
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    kinds = {r["kind"] for r in records}
    assert kinds == {"teacher", "train", "val", "summary"}
    (summary,) = [r for r in records if r["kind"] == "summary"]
    assert summary["report"] == "best" and summary["reported"] == summary["best"]
    assert summary["final"] == metrics["top1"] and summary["metric"] == "top1"
    train = [r for r in records if r["kind"] == "train"]
    assert {"ce", "kd", "hint", "lr", "images_per_s"} <= set(train[0])
    assert metrics["count"] == 24 and 0 <= metrics["top1"] <= 100
    last = torch.load(run / "last.pt", weights_only=False)
    assert last["epoch"] == 2 and last["step"] == 12
    assert "connector.conv.weight" in "".join(last["terms"])  # the FitNet connector is saved
    assert last["optimizer"]["state"]  # momentum buffers, for resuming
    best = torch.load(run / "best.pt", weights_only=False)
    assert "optimizer" not in best and "scheduler" not in best
    assert best["best"] == max(r["top1"] for r in records if r["kind"] == "val")
    assert best["student"].keys() == last["student"].keys()


def test_resume_continues_exactly(tiny_overrides, tmp_path):
    full = _trainer(tiny_overrides + KD_RECIPE + ["train.name=full"])
    full.fit()
    # the same run stopped after its first epoch (6 steps), then resumed from its folder
    first = _trainer(tiny_overrides + KD_RECIPE + ["train.name=split", "train.max_steps=6"])
    first.fit()
    assert first.epoch == 1
    saved = tmp_path / "split" / "config.yaml"
    resumed = build_trainer(load_config(saved, ["train.max_steps=null"]), resume=saved.parent)
    assert (resumed.epoch, resumed.step) == (1, 6)
    resumed.fit()
    a = full.distiller.student.state_dict()
    b = resumed.distiller.student.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(0.005)


def test_existing_run_is_not_overwritten(tiny_overrides):
    _trainer(tiny_overrides + KD_RECIPE + ["train.max_steps=1"]).fit()
    with pytest.raises(ConfigError, match="--resume"):
        _trainer(tiny_overrides + KD_RECIPE)


def test_teacher_at_chance_is_an_error(tiny_overrides):
    overrides = [o for o in tiny_overrides if "check_teacher" not in o]
    trainer = _trainer(overrides + KD_RECIPE)
    with pytest.raises(ConfigError, match="chance"):
        trainer.fit()  # before the first step
    assert trainer.step == 0


def test_check_teacher_accuracy_threshold():
    check_teacher_accuracy({"top1": 40.0, "count": 1000}, 10, "t")  # clearly above 10% chance
    with pytest.raises(ConfigError, match="teacher.pretrained"):
        # within 3 sigma (2.8 points) of chance
        check_teacher_accuracy({"top1": 11.0, "count": 1000}, 10, "t")


def test_non_finite_loss_names_step_term_and_checkpoint(tiny_overrides, tmp_path):
    trainer = _trainer(tiny_overrides + KD_RECIPE)
    kd = trainer.distiller.terms["kd"]
    original = kd.forward

    def nan_in_second_epoch(batch):
        return original(batch) * (float("nan") if batch.epoch == 1 else 1.0)

    kd.forward = nan_in_second_epoch
    with pytest.raises(NonFiniteLossError) as info:
        trainer.fit()
    message = str(info.value)
    assert "epoch 2" in message and "step 6" in message and "'kd'" in message
    assert str(tmp_path / "run" / "last.pt") in message


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
def test_gradient_clipping_bounds_the_norm(tiny_overrides):
    trainer = _trainer(
        tiny_overrides + KD_RECIPE + ["optim.clip_grad_norm=0.001", "train.max_steps=2"]
    )
    norms = []
    step = trainer.optimizer.step

    def record_then_step(*args, **kwargs):
        grads = [p.grad.norm() for p in trainer.params if p.grad is not None]
        norms.append(torch.stack(grads).norm().item())
        return step(*args, **kwargs)

    trainer.optimizer.step = record_then_step
    trainer.fit()
    assert len(norms) == 2 and max(norms) <= 0.001 * 1.0001


def test_bf16_autocast_trains_and_fp16_needs_cuda(tiny_overrides):
    trainer = _trainer(tiny_overrides + KD_RECIPE + ["train.amp=bf16", "train.max_steps=1"])
    metrics = trainer.fit()
    assert torch.isfinite(torch.tensor(metrics["loss"]))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="fp16 needs CUDA"):
            _trainer(tiny_overrides + KD_RECIPE + ["train.amp=fp16", "train.name=fp16"])


class _CriticTerm(LossTerm):
    """A toy term with an auxiliary parameter trained on its own objective (like CAKD's D)."""

    auxiliary_lr_scale = 0.5
    needs_teacher = False

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__(weight)
        self.critic = torch.nn.Linear(100, 1)

    def auxiliary_parameters(self):
        return list(self.critic.parameters())

    def forward(self, batch):
        logits = batch.student_output
        self.auxiliary_loss = self.critic(logits.detach()).pow(2).mean()
        return self.weight * logits.pow(2).mean()


def test_auxiliary_parameters_have_their_own_optimizer(tiny_overrides, monkeypatch):
    monkeypatch.setitem(TERMS, "critic", _CriticTerm)
    overrides = [
        *tiny_overrides,
        "student.name=resnet8",
        "student.num_classes=100",
        "loss={ce: {}, critic: {}}",
        "schedule.epochs=1",
        "optim.lr=0.2",
    ]
    trainer = _trainer(overrides)
    critic = trainer.distiller.terms["critic"].critic
    main_ids = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert not main_ids & {id(p) for p in critic.parameters()}
    auxiliary = trainer.hook(AuxiliaryOptimizerHook)
    assert auxiliary.optimizer.param_groups[0]["lr"] == pytest.approx(0.1)
    before = critic.weight.detach().clone()
    trainer.fit()
    assert not torch.equal(before, critic.weight)  # trained by the auxiliary step
    records = (trainer.run_dir / "log.jsonl").read_text()
    assert '"critic.auxiliary":' in records


def test_ema_is_evaluated_saved_and_resumed_exactly(tiny_overrides, tmp_path):
    ema = [*KD_RECIPE, "train.ema_decay=0.9", "train.ema_steps=2", "optim.norm_weight_decay=0.0"]
    full = _trainer([*tiny_overrides, *ema, "train.name=full"])
    metrics = full.fit()
    assert "ema_top1" in metrics
    assert len(full.optimizer.param_groups) == 2  # norm layers in their own group
    assert full.optimizer.param_groups[1]["weight_decay"] == 0.0
    first = _trainer([*tiny_overrides, *ema, "train.name=split", "train.max_steps=6"])
    first.fit()
    saved = tmp_path / "split" / "config.yaml"
    resumed = build_trainer(load_config(saved, ["train.max_steps=null"]), resume=saved.parent)
    resumed.fit()
    a, b = full.hook(EMAHook).ema.state_dict(), resumed.hook(EMAHook).ema.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_lr_is_scaled_linearly_from_the_base_batch(tiny_overrides):
    trainer = _trainer([*tiny_overrides, *KD_RECIPE, "optim.base_batch_size=16"])
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.05 * 8 / 16)


def test_iteration_budget_sets_epochs_and_stops_on_time(tiny_overrides):
    trainer = _trainer([*tiny_overrides, *KD_RECIPE, "schedule.iters=8", "schedule.name=poly"])
    assert trainer.epochs == 2  # 6 steps per epoch
    trainer.fit()
    assert trainer.step == 8
