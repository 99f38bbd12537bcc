"""Resuming with DataLoader workers, as recipes run (``data.num_workers`` defaults to 4).

Worker processes draw their augmentations from seeds that the loader takes from its own
generator, not from the main process's random streams; the trainer reseeds that generator
at each epoch start from (seed, epoch, rank). Without it a resumed run would hand epoch
``e`` the augmentations of the first epoch after the restart, and an uninterrupted run
would depend on how many epochs the generator had already served.
"""

from __future__ import annotations

import hashlib

import torch

from kdforge.config import load_config
from kdforge.engine.build import build_trainer

WORKERS = [
    "teacher.name=resnet8",
    "student.name=resnet8",
    "loss={ce: {weight: 0.1}, kd: {weight: 0.9}}",
    "schedule.epochs=2",
    "schedule.milestones=[1]",
    "optim.lr=0.05",
    "train.deterministic=true",  # exactness on GPU too (CPU kernels are deterministic)
]


def _trainer(overrides, resume=None):
    return build_trainer(load_config(None, overrides), "workers", resume=resume)


def _with_workers(tiny_overrides, workers: int = 2) -> list[str]:
    return [*[o for o in tiny_overrides if "num_workers" not in o], f"data.num_workers={workers}"]


def _record_batches(trainer) -> dict[int, list[tuple[torch.Tensor, torch.Tensor]]]:
    """``{epoch: [(inputs, targets), ...]}`` as the distiller receives them."""
    seen: dict[int, list] = {}

    def record(module, args):
        inputs, targets = args[0], args[1]
        seen.setdefault(trainer.epoch, []).append((inputs.detach().clone(), targets.clone()))

    trainer.distiller.register_forward_pre_hook(record)
    return seen


def _digest(image: torch.Tensor) -> str:
    return hashlib.sha1(image.contiguous().numpy().tobytes()).hexdigest()


def test_resume_with_two_workers_is_exact(tiny_overrides, tmp_path):
    overrides = [*_with_workers(tiny_overrides), *WORKERS]
    full = _trainer([*overrides, "train.name=full"])
    assert full.train_loader.num_workers == 2
    full_batches = _record_batches(full)
    full.fit()
    # the same run stopped after its first epoch (6 steps), then resumed from its folder
    first = _trainer([*overrides, "train.name=split", "train.max_steps=6"])
    first.fit()
    assert first.epoch == 1
    saved = tmp_path / "split" / "config.yaml"
    resumed = build_trainer(load_config(saved, ["train.max_steps=null"]), resume=saved.parent)
    assert resumed.train_loader.num_workers == 2
    assert (resumed.epoch, resumed.step) == (1, 6)
    resumed_batches = _record_batches(resumed)
    resumed.fit()
    # epoch 2 of the resumed run drew exactly the images of the uninterrupted run's epoch 2
    assert list(resumed_batches) == [1]
    assert len(resumed_batches[1]) == len(full_batches[1]) == 6
    for (a, ta), (b, tb) in zip(full_batches[1], resumed_batches[1], strict=True):
        assert torch.equal(ta, tb)
        assert torch.equal(a, b)
    a = full.distiller.student.state_dict()
    b = resumed.distiller.student.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_epochs_get_different_shuffles_and_augmentations(tiny_overrides):
    trainer = _trainer([*_with_workers(tiny_overrides), *WORKERS])
    batches = _record_batches(trainer)
    trainer.fit()
    assert sorted(batches) == [0, 1]
    labels = {e: torch.cat([t for _, t in b]) for e, b in batches.items()}
    images = {e: torch.cat([x for x, _ in b]) for e, b in batches.items()}
    assert len(labels[0]) == len(labels[1]) == 48  # every training image once per epoch
    # the same images (labels as a multiset), in another order
    assert torch.equal(labels[0].sort().values, labels[1].sort().values)
    assert not torch.equal(labels[0], labels[1])
    # fresh crops and flips: as multisets, the two epochs' augmented images barely overlap
    # (each image has 81 crops x 2 flips; equal draws for a few of 48 are possible)
    digests = {e: {_digest(x) for x in images[e]} for e in (0, 1)}
    assert len(digests[0] & digests[1]) < 8, len(digests[0] & digests[1])
    # within an epoch, the two workers do not repeat each other's draws either
    assert len(digests[0]) > 40 and len(digests[1]) > 40


def test_epochs_draw_fresh_augmentation_streams(tiny_overrides):
    """With every training image the same, the images of an epoch, in order, are the
    sequence of its random crops and flips: it must not repeat the previous epoch's (as
    it would if the workers' seeds were the same every epoch, shuffled or not)."""
    trainer = _trainer([*_with_workers(tiny_overrides), *WORKERS])
    dataset = trainer.train_loader.dataset
    dataset.data[:] = dataset.data[0]  # the workers fork per epoch and see this copy
    batches = _record_batches(trainer)
    trainer.fit()
    images = {e: torch.cat([x for x, _ in b]) for e, b in batches.items()}
    assert len(images[0]) == len(images[1]) == 48
    same = sum(torch.equal(a, b) for a, b in zip(images[0], images[1], strict=True))
    assert same < 8, f"{same} of 48 positions drew the same crop and flip in both epochs"
    variants = {_digest(x) for x in images[0]}
    assert len(variants) > 20  # the crops and flips do vary within the epoch


def test_an_epoch_draws_the_same_with_any_history(tiny_overrides):
    """The loader's draws of an epoch depend on (seed, epoch) only: epoch 2 of a run that
    trained epoch 1 sees the images a fresh run starting at epoch 2 sees."""
    overrides = [*_with_workers(tiny_overrides), *WORKERS]
    runs = []
    for name, epochs_before in (("a", 1), ("b", 0)):
        trainer = _trainer([*overrides, f"train.name={name}"])
        for epoch in range(epochs_before):  # iterate (not train) the epochs before
            trainer.epoch = epoch
            trainer._start_epoch()
            list(trainer.train_loader)
        trainer.epoch = 1
        trainer._start_epoch()
        runs.append([x for x, _ in trainer.train_loader])
        trainer.folder.close(success=False)
    assert len(runs[0]) == len(runs[1]) == 6
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))
