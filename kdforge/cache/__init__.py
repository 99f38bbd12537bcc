"""Offline teacher outputs: write them once, then train without running the teacher.

``kdforge cache-teacher RECIPE --epochs N [--out PATH] [--topk K]`` runs the recipe's
teacher over the training set N times. Each epoch ``e`` draws fresh augmentations (seeded
from ``train.seed`` and ``e``), records every random transform's parameters per sample
index and stores what the loss terms read from the teacher. ``kdforge train RECIPE --set
teacher.cache=PATH`` then replays, at epoch ``e`` and sample ``i``, exactly the stored
augmentation (the student sees the images the teacher saw) and hands the stored outputs to
the terms; the teacher is never built. ``kdforge cache-teacher RECIPE --check --out PATH``
recomputes a few samples with the live teacher and fails if they differ beyond tolerance.
:func:`write_cache` and :func:`check_cache` take built objects (training set, teacher, taps);
:mod:`kdforge.commands.cache_teacher` builds them from a recipe.

Format (a folder)::

    manifest.json          version, fingerprint (+ the recipe sections it hashes), epochs,
                           num_samples, num_classes, topk, feature shapes, shard list with
                           sha256 of every file
    aug_e{E:03d}.json      per sample index, the parameters of each random transform
    e{E:03d}_{S:05d}.safetensors   samples [start, stop) of epoch E:
        logits_values  (n, k) float32   the k largest teacher logits
        logits_indices (n, k) int64     their classes (k <= 65535)
        logits_rest    (n,)  float32    log-mean-exp of the other K - k logits
        feature.<path> (n, C, H, W) float16, one per tapped teacher module

Size per sample and epoch: ``12 k + 4`` bytes of logits (CIFAR-100, k = 100: 1.2 kB) plus
``2 C H W`` per feature (resnet32x4 ``layer3``, 256×8×8: 32 kB), plus ~30 bytes of
augmentation parameters. A full CIFAR-100 run (50,000 images × 240 epochs) of KD logits is
about 14 GB; cache the epochs you train.

Limits: with ``k < K`` the other classes share their probability evenly (each gets the
logit ``logits_rest``), so KD on the cache is approximate; with ``k = K`` (the default up to
100 classes) it is exact. Features are fp16 (relative error ~1e-3). Supported: the
classification task, loss terms that read only the teacher's output and tapped features
(kd, dkd, fitnet, pkd; not terms that run teacher modules or read its weights, e.g.
cat_kd, crosskd, cakd, mgd with ``init_from_teacher``), random transforms whose parameters
are JSON values (crops, flips, TrivialAugment; not RandomErasing), no mixup and no
repeated augmentation. Detection and segmentation are not supported. Training refuses a
cache whose fingerprint (data, augmentation, teacher, seed, taps) differs from the recipe's
or that holds fewer epochs than the schedule.
"""

from kdforge.cache.format import CacheError, TeacherCache, fingerprint, fingerprint_sections
from kdforge.cache.replay import ReplayDataset, replay_collate
from kdforge.cache.writer import cached_outputs, check_cache, write_cache

__all__ = [
    "CacheError",
    "ReplayDataset",
    "TeacherCache",
    "cached_outputs",
    "check_cache",
    "fingerprint",
    "fingerprint_sections",
    "replay_collate",
    "write_cache",
]
