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
                           num_samples, num_classes, topk, feature and value shapes, shard
                           list with sha256 of every file
    aug_e{E:03d}.json      per sample index, the parameters of each random transform
    e{E:03d}_{S:05d}.safetensors   samples [start, stop) of epoch E:
        logits_values  (n, k) float32   the k largest teacher logits
        logits_indices (n, k) int64     their classes (k <= 65535)
        logits_rest    (n,)  float32    log-mean-exp of the other K - k logits
        feature.<path> (n, C, H, W) float16, one per tapped teacher module
        value.<key>/<name> (n, ...) float32, what a term computes from the teacher
                       (``LossTerm.teacher_values``; key: term class + hash of its settings)
                       cat_kd: cam (n, K, R, R) pooled CAMs; logits (n, K) with num_cams

Size per sample and epoch: ``12 k + 4`` bytes of logits (CIFAR-100, k = 100: 1.2 kB) plus
``2 C H W`` per feature (resnet32x4 ``layer3``, 256×8×8: 32 kB), plus ~25 bytes of
augmentation parameters. A full CIFAR-100 run (50,000 images × 240 epochs) of KD logits is
about 14 GB; cache the epochs you train. CAT-KD stores ``4 K R²`` bytes of CAMs (K = 100:
1.6 kB at R = 2, 6.4 kB at R = 4) and, with ``num_cams``, ``4 K`` of logits (0.4 kB), in
place of its tapped map: float32, so a run from the cache computes the same loss as the
live teacher (fp16 would halve a size that is already a twentieth of the fp16 map, and
would perturb binarised fractions and the class ranking).

Limits: with ``k < K`` the other classes share their probability evenly (each gets the
logit ``logits_rest``), so KD on the cache is approximate; with ``k = K`` (the default up to
100 classes) it is exact. Features are fp16 (relative error ~1e-3); term values float32.
The writer and ``--check`` run the teacher without TF32, which cuDNN otherwise uses on a
GPU; a live GPU run with TF32 differs from the stored values by its round-off (CAT-KD loss:
~3e-4 relative on an H200; on CPU the cached and live losses are equal).
Supported: the classification task, loss terms that read only the teacher's output and
tapped features (kd, dkd, fitnet, pkd) or define ``teacher_values`` (cat_kd); not terms
that run teacher modules or read its weights otherwise (crosskd, cakd, mgd and cankd, whose
``attach`` may copy teacher weights), random transforms whose parameters are JSON values
(crops, flips, TrivialAugment; not RandomErasing), no mixup and no repeated augmentation.
Detection and segmentation are not supported. Training refuses a cache whose fingerprint
(data, augmentation, teacher, seed, taps, the settings of the stored term values, e.g.
cat_kd's layer, R, binarize and whether it ranks classes) differs from the recipe's or that
holds fewer epochs than the schedule.
"""

from kdforge.cache.format import CacheError, TeacherCache, fingerprint, fingerprint_sections
from kdforge.cache.replay import ReplayDataset, replay_collate
from kdforge.cache.writer import cached_outputs, check_cache, teacher_replay, write_cache

__all__ = [
    "CacheError",
    "ReplayDataset",
    "TeacherCache",
    "cached_outputs",
    "check_cache",
    "fingerprint",
    "fingerprint_sections",
    "replay_collate",
    "teacher_replay",
    "write_cache",
]
