"""Recording and replaying the random transforms of a data set, keyed by sample index."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset, default_collate

from kdforge.cache.format import CacheError, TeacherCache
from kdforge.data.mixing import RandomErasing
from kdforge.data.transforms import Compose, RandomTransform
from kdforge.teacher import TeacherReplay

__all__ = ["ReplayDataset", "ScriptedTransform", "replay_collate", "scripted"]


def _tuples(value: Any) -> Any:
    """JSON lists back to the tuples the transforms return."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


class ScriptedTransform:
    """A ``Compose`` whose random transforms record (``record``) or replay (``script``)
    their parameters, one list per call."""

    def __init__(self, compose: Compose) -> None:
        self.transforms = compose.transforms
        self.script: list[Any] | None = None  # set before a call: replay these parameters
        self.record: list[Any] = []  # after a call: the parameters drawn

    def __call__(self, img: Any) -> Any:
        script = iter(self.script) if self.script is not None else None
        self.record = []
        for t in self.transforms:
            if isinstance(t, RandomTransform):
                params = _tuples(next(script)) if script is not None else t.sample_params(img)
                self.record.append(params)
                img = t.apply(img, params)
            else:
                img = t(img)
        return img


def scripted(dataset: Dataset) -> ScriptedTransform:
    """Replace ``dataset.transform`` (a Compose) by a :class:`ScriptedTransform`; return it."""
    base = getattr(dataset, "dataset", dataset)  # a ReducedDataset wraps the data set
    transform = getattr(base, "transform", None)
    if not isinstance(transform, Compose):
        raise CacheError(
            "the teacher cache supports classification training sets, whose transform is a "
            f"kdforge Compose; {type(base).__name__} has {type(transform).__name__}"
        )
    bad = [type(t).__name__ for t in transform.transforms if _unsupported(t)]
    if bad:
        raise CacheError(f"the teacher cache cannot record the random transforms {bad}")
    base.transform = ScriptedTransform(transform)
    return base.transform


def _unsupported(t: Any) -> bool:
    """RandomErasing (its fill is a random tensor) and random steps that cannot replay."""
    return isinstance(t, RandomErasing) or (
        not isinstance(t, RandomTransform) and "Random" in type(t).__name__
    )


class ReplayDataset(Dataset):
    """Items of ``dataset`` augmented as stored for the current epoch, with the teacher's
    stored outputs: ``(image, (target, logits, features))``.

    The trainer calls :meth:`set_epoch` before each epoch (DataLoader workers are started
    after it, so they see the epoch).
    """

    def __init__(self, dataset: Dataset, cache: TeacherCache) -> None:
        if len(dataset) != cache.num_samples:
            raise CacheError(
                f"teacher cache {cache.path} holds {cache.num_samples} samples per epoch but "
                f"the training set has {len(dataset)}"
            )
        self.dataset, self.cache, self.epoch = dataset, cache, 0
        self.transform = scripted(dataset)
        self.num_classes = dataset.num_classes

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        self.transform.script = self.cache.augmentation(self.epoch, index)
        image, target = self.dataset[index]
        logits, features = self.cache.outputs(self.epoch, index)
        return image, (target, logits, features)


def replay_collate(items: list[tuple[Any, Any]]) -> tuple[torch.Tensor, TeacherReplay]:
    """Batch :class:`ReplayDataset` items: images, and the targets with the teacher's values."""
    images = default_collate([image for image, _ in items])
    targets = default_collate([t for _, (t, _, _) in items])
    logits = [lg for _, (_, lg, _) in items]
    output = torch.stack(logits) if logits[0] is not None else None
    features = default_collate([f for _, (_, _, f) in items])
    return images, TeacherReplay(targets, output, features)
