"""Hooks: user hooks from Python and recipes, their states on resume, the built-in ones."""

import json

import pytest
import torch

from kdforge.config import load_config
from kdforge.distiller import Distiller
from kdforge.engine.build import build_trainer
from kdforge.engine.hooks import AuxiliaryOptimizerHook, HookBase, StopDistillationHook
from kdforge.engine.trainer import Trainer
from kdforge.errors import ConfigError
from kdforge.losses import CrossEntropyLoss, FitNetLoss, LossTerm
from kdforge.models import create_model

KD = [
    "teacher.name=resnet8",
    "student.name=resnet8",
    "loss={ce: {weight: 0.1}, kd: {weight: 0.9}}",
    "schedule.epochs=2",
    "train.deterministic=true",  # exactness on GPU too (CPU kernels are deterministic)
]


class CountingHook(HookBase):
    """Counts every event; its step count is state, so a resumed run goes on counting."""

    def __init__(self, start: int = 0) -> None:
        self.events: dict[str, int] = {}
        self.steps = start

    def _count(self, event: str) -> None:
        self.events[event] = self.events.get(event, 0) + 1

    def before_train(self):
        self._count("before_train")

    def before_epoch(self):
        self._count("before_epoch")

    def after_forward(self):
        assert self.trainer.losses, "after_forward sees this step's losses"
        self._count("after_forward")

    def after_step(self):
        self.steps += 1
        self._count("after_step")

    def after_epoch(self):
        self._count("after_epoch")

    def after_train(self):
        self._count("after_train")

    def state_dict(self):
        return {"steps": self.steps}

    def load_state_dict(self, state):
        self.steps = state["steps"]


def _trainer(overrides, resume=None):
    return build_trainer(load_config(None, overrides), "test", resume=resume)


def _user_hook(trainer: Trainer) -> CountingHook:
    return trainer.hook(CountingHook)


def test_recipe_hook_sees_every_event_and_resumes_its_state(tiny_overrides, tmp_path):
    hook = f"train.hooks=[{{type: {__name__}.CountingHook, start: 100}}]"
    trainer = _trainer([*tiny_overrides, *KD, hook, "train.name=full"])
    trainer.fit()
    counting = _user_hook(trainer)
    assert counting.events == {
        "before_train": 1,
        "before_epoch": 2,
        "after_forward": 12,
        "after_step": 12,
        "after_epoch": 2,
        "after_train": 1,
    }
    assert counting.steps == 112
    first = _trainer([*tiny_overrides, *KD, hook, "train.name=split", "train.max_steps=6"])
    first.fit()
    saved = tmp_path / "split" / "config.yaml"
    resumed = build_trainer(load_config(saved, ["train.max_steps=null"]), resume=saved.parent)
    assert _user_hook(resumed).steps == 106  # restored from last.pt
    resumed.fit()
    assert _user_hook(resumed).steps == 112


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("{type: no.such.module.Hook}", "cannot import"),
        ("{type: torch.nn.Linear}", "not a subclass"),
        (f"{{type: {__name__}.CountingHook, begin: 1}}", r"unknown key\(s\) \['begin'\]"),
        ("{every: 3}", "hook class path"),
    ],
)
def test_bad_recipe_hooks_are_named(tiny_overrides, spec, message):
    with pytest.raises(ConfigError, match=message):
        _trainer([*tiny_overrides, *KD, f"train.hooks=[{spec}]"])


def test_stop_distillation_turns_the_teacher_off(tiny_overrides, tmp_path):
    trainer = _trainer([*tiny_overrides, *KD, "train.stop_distillation=1"])
    assert trainer.hook(StopDistillationHook).stop_epoch == 1
    calls = []
    trainer.distiller.teacher.register_forward_hook(lambda *_: calls.append(trainer.epoch))
    trainer.fit()
    lines = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    train = [r for r in map(json.loads, lines) if r["kind"] == "train"]
    assert all("kd" in r for r in train if r["epoch"] == 0)
    assert not any("kd" in r for r in train if r["epoch"] == 1)
    assert set(calls) == {0}  # the teacher ran before and during epoch 0 only


def test_no_reserved_loss_names(tiny_overrides):
    """A term named "aux" is trained like any other."""
    runs = {}
    for name in ("kd", "aux"):
        loss = f"loss={{ce: {{weight: 0.1}}, {name}: {{type: kd, weight: 0.9}}}}"
        models = [o for o in KD if not o.startswith("loss=")]  # loss dicts merge: set it once
        overrides = [*tiny_overrides, *models, loss, "train.max_steps=2", f"train.name={name}"]
        trainer = _trainer(overrides)
        trainer.fit()
        runs[name] = trainer.distiller.student.state_dict()
    assert all(torch.equal(runs["kd"][k], runs["aux"][k]) for k in runs["kd"])


class _Critic(LossTerm):
    needs_teacher = False

    def __init__(self) -> None:
        super().__init__(1.0)
        self.critic = torch.nn.Linear(10, 1)

    def auxiliary_parameters(self):
        return list(self.critic.parameters())

    def forward(self, batch):
        self.auxiliary_loss = self.critic(batch.student_output.detach()).pow(2).mean()
        return batch.student_output.pow(2).mean()


def test_python_user_trainer_with_an_auxiliary_optimizer_and_no_scheduler():
    student = create_model("resnet8", num_classes=10)
    distiller = Distiller(
        None, student, {"ce": CrossEntropyLoss(), "critic": _Critic()}, torch.randn(2, 3, 32, 32)
    )
    critic = distiller.terms["critic"].critic
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0)
    auxiliary = AuxiliaryOptimizerHook(torch.optim.SGD(critic.parameters(), lr=0.1))
    data = [(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))) for _ in range(3)]
    before = critic.weight.detach().clone()
    trainer = Trainer(distiller, optimizer, scheduler, data, epochs=1, hooks=[auxiliary])
    trainer.fit()
    assert trainer.step == 3
    assert not torch.equal(before, critic.weight)
    assert set(trainer.meter.means) == {"ce", "critic", "critic.auxiliary"}


def test_trainable_module_holds_student_and_connectors_only():
    teacher, student = create_model("resnet14"), create_model("resnet8")
    terms = {"hint": FitNetLoss("layer2", "layer2"), "critic": _Critic()}
    distiller = Distiller(teacher, student, terms, torch.randn(2, 3, 32, 32))
    trainable = {id(p) for p in distiller.trainable_module().parameters()}
    expected = {id(p) for p in student.parameters()}
    expected |= {id(p) for p in distiller.terms["hint"].parameters()}
    assert trainable == expected  # no teacher, no auxiliary (critic) parameters
    view = distiller.trainable_module().eval()
    assert not distiller.training and not distiller.terms.training
    view.train()
    assert distiller.terms["hint"].training and not teacher.training


def test_two_hooks_with_one_state_key_are_refused():
    distiller = Distiller(None, create_model("resnet8"), {"ce": CrossEntropyLoss()})
    optimizer = torch.optim.SGD(distiller.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0)
    with pytest.raises(ConfigError, match="state key"):
        Trainer(distiller, optimizer, scheduler, [], 1, hooks=[CountingHook(), CountingHook()])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.eval_every=0", r"train.eval_every=0: must be >= 1"),
        ("train.log_every=0", r"train.log_every=0: must be >= 1"),
        ("schedule.epochs=0", r"schedule.epochs=0: must be >= 1"),
    ],
)
def test_counts_below_one_are_refused_before_training(tiny_overrides, override, message):
    with pytest.raises(ConfigError, match=message):
        _trainer([*tiny_overrides, *KD, override])


def test_skipped_samples_are_logged_per_epoch(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for cls, value in (("a", 20), ("b", 200)):
            (tmp_path / "data" / split / cls).mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (8, 8), (value, i, 0)).save(
                    tmp_path / "data" / split / cls / f"{i}.png"
                )
    (tmp_path / "data" / "train" / "a" / "bad.png").write_text("not an image")
    overrides = [
        "data.name=imagefolder",
        f"data.root={tmp_path / 'data'}",
        "data.options={image_size: 8}",
        "data.batch_size=3",
        "data.num_workers=0",
        "data.on_bad_sample=skip",
        "student.name=resnet8",
        "schedule.epochs=2",
        f"train.out_dir={tmp_path}",
        "train.name=run",
    ]
    with pytest.warns(UserWarning, match="bad.png"):
        _trainer(overrides).fit()
    lines = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    skips = [r for r in map(json.loads, lines) if r["kind"] == "data"]
    assert [(r["epoch"], r["skipped"]) for r in skips] == [(1, 1), (2, 1)]


@pytest.mark.parametrize(("report", "reported"), [("final", 20.0), ("best", 30.0)])
def test_the_summary_reports_what_the_source_publishes(report, reported):
    from kdforge.engine.hooks import EvalHook

    values = iter([10.0, 30.0, 20.0])
    evaluation = EvalHook(lambda model: {"AP": next(values)}, "AP", report=report)
    distiller = Distiller(None, create_model("resnet8"), {"ce": CrossEntropyLoss()})
    optimizer = torch.optim.SGD(distiller.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0)
    data = [(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))]
    Trainer(distiller, optimizer, scheduler, data, 3, hooks=[evaluation]).fit()
    assert evaluation.summary() == {
        "metric": "AP",
        "final": 20.0,
        "best": 30.0,
        "best_epoch": 2,
        "report": report,
        "reported": reported,
    }


def test_detection_and_segmentation_report_the_final_evaluation_classification_the_best():
    from kdforge.engine.tasks import TASKS

    assert {name: task.report for name, task in TASKS.items()} == {
        "classification": "best",
        "detection": "final",
        "segmentation": "final",
    }
