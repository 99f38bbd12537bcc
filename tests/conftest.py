"""Shared fixtures: small generated data sets in the standard on-disk formats, and a detection
recipe run two steps on them."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from kdforge.config import load_config
from kdforge.data import write_fake_cifar
from kdforge.data.shapes import write_shapes_dataset
from kdforge.engine.build import build_trainer
from kdforge.engine.trainer import Trainer

# tests/interop/ needs torchvision, timm and transformers, which the main environment's torch
# cannot import: `make test-interop` runs it in .venv-interop with KDFORGE_INTEROP=1.
collect_ignore = [] if os.environ.get("KDFORGE_INTEROP") else ["interop"]


@pytest.fixture(autouse=True, scope="session")
def _one_thread_per_worker():
    """One intra-op thread per test process: the tiny batches here gain nothing from more,
    and `pytest -n 2` on two cores would oversubscribe them (a resnet56 forward at batch 4
    took 0.17 s with 2 threads and 0.04 s with 1 on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def cifar10_root(tmp_path_factory: pytest.TempPathFactory):
    """A generated CIFAR-10 folder (48 train / 24 test images) in the python-pickle format."""
    root = tmp_path_factory.mktemp("cifar10")
    write_fake_cifar(root, "cifar10", num_train=48, num_test=24, seed=0)
    return root


@pytest.fixture
def tiny_overrides(cifar10_root, tmp_path) -> list[str]:
    """Overrides that make any CIFAR recipe a seconds-long run on generated data."""
    return [
        "data.name=cifar10",
        f"data.root={cifar10_root}",
        "data.batch_size=8",
        "data.num_workers=0",
        "teacher.pretrained=null",
        "train.check_teacher=false",
        f"train.out_dir={tmp_path}",
        "train.name=run",
        "train.log_every=1",
    ]


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory):
    """A 1-layer, 32-wide BERT saved as bert-base-uncased's folder is (config, WordPiece
    tokenizer, weights), its vocabulary the shapes class names: Grounding DINO's text side
    without a download."""
    transformers = pytest.importorskip("transformers")
    from kdforge.data.shapes import SHAPE_CLASSES

    folder = tmp_path_factory.mktemp("tiny-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "?", *SHAPE_CLASSES]
    tokenizer = transformers.BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)})
    tokenizer.save_pretrained(folder)
    config = transformers.BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    transformers.BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def shapes_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, ...]:
    """Overrides pointing a COCO detection recipe at generated shapes (4 train, 2 val images of
    96x96), for ``recipe_run``."""
    root = tmp_path_factory.mktemp("shapes")
    root = write_shapes_dataset(root, num_train=4, num_val=2, image_size=(96, 96))
    return (f"data.root={root}", "data.options.train_split=train", "data.options.val_split=val")


class RecipeRun:
    """A detection recipe trained two steps at 96 px, offline, into ``out_dir``/run; ``cfg``
    is the config ``trainer`` built."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.cfg: DictConfig | None = None

    def trainer(self, recipe: Path, data: Sequence[str], *overrides: str) -> Trainer:
        """The recipe's trainer: ``data`` (where the data set is), the two-step settings, then
        ``overrides`` (which may change them)."""
        two_steps = [
            "data.options.scale=[96,96]",
            "data.batch_size=2",
            "data.num_workers=0",
            "teacher.pretrained=null",
            "student.kwargs.backbone_pretrained=null",  # no ImageNet weights offline
            "train.check_teacher=false",
            "train.max_steps=2",
            "train.max_eval_batches=1",
            f"train.out_dir={self.out_dir}",
            "train.name=run",
        ]
        self.cfg = load_config(recipe, [*data, *two_steps, *overrides])
        return build_trainer(self.cfg, "test")

    def last_record(self) -> dict[str, float]:
        """The run's last training record, checked to be step 2's."""
        lines = (self.out_dir / "run" / "log.jsonl").read_text().splitlines()
        train = [r for r in map(json.loads, lines) if r["kind"] == "train"]
        assert train and train[-1]["step"] == 2
        return train[-1]


@pytest.fixture
def recipe_run(tmp_path: Path) -> RecipeRun:
    """Runs a detection recipe two steps into ``tmp_path``; see ``RecipeRun``."""
    return RecipeRun(tmp_path)
