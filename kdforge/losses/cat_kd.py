"""Guo et al., "Class Attention Transfer Based Knowledge Distillation", CVPR 2023 (CAT-KD)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdforge.losses._cat_kd_heads import OFFICIAL_HEAD_INIT, init_cam_head, official_head_init
from kdforge.losses._checks import check_choice
from kdforge.losses.base import DistillBatch, LossTerm
from kdforge.taps import unwrap_model

__all__ = [
    "OFFICIAL_HEAD_INIT",
    "CATKDLoss",
    "binarize_cam",
    "cam_paths",
    "cat_kd_loss",
    "class_activation_map",
    "init_cam_head",
    "official_head_init",
    "select_partial_cams",
]

STUDENT_INITS = ("official", "keep")


def class_activation_map(features: Tensor, weight: Tensor) -> Tensor:
    """CAMs: the bias-free 1×1 convolution of a feature map with a linear layer's weight.

    ``(N, C, h, w)`` features and a ``(K, C)`` weight give ``(N, K, h, w)`` maps. Pooling and
    a 1×1 conv commute, so ``cam.mean((2, 3))`` is the linear layer's output without bias.
    """
    return F.conv2d(features, weight[:, :, None, None])


def cat_kd_loss(
    cam_student: Tensor, cam_teacher: Tensor, resolution: int = 2, normalize: bool = False
) -> Tensor:
    """The CAT loss without its weight β (official ``CAT_loss``).

    ``MSE(n(P_R(cam_s)), n(P_R(cam_t)))``: ``P_R`` is adaptive average pooling to R×R, so the
    maps may differ in size; ``n`` is the optional L2 normalisation of each (sample, class)
    over its R×R cells (``F.normalize``, eps 1e-12), applied *after* pooling; the MSE is the
    mean over all N·K·R·R elements.

    Args:
        cam_student: (N, K, h_s, w_s) student CAMs.
        cam_teacher: (N, K, h_t, w_t) teacher CAMs.
        resolution: R, the pooled CAM size (official default 2).
        normalize: L2-normalise the pooled maps (``IF_NORMALIZE``).
    """
    size = (resolution, resolution)
    pooled_s = F.adaptive_avg_pool2d(cam_student, size)  # (N, K, h_s, w_s) -> (N, K, R, R)
    pooled_t = F.adaptive_avg_pool2d(cam_teacher, size)
    if pooled_s.shape != pooled_t.shape:  # MSE would broadcast silently
        raise ValueError(
            f"cat_kd_loss: student CAMs {tuple(cam_student.shape)} and teacher CAMs "
            f"{tuple(cam_teacher.shape)} differ in batch size or number of classes"
        )
    if normalize:
        pooled_s = F.normalize(pooled_s, dim=(2, 3))
        pooled_t = F.normalize(pooled_t, dim=(2, 3))
    return F.mse_loss(pooled_s, pooled_t)


def binarize_cam(cam: Tensor) -> Tensor:
    """``IF_BINARIZE``: 1 where a CAM exceeds its own mean absolute activation, else 0.

    The threshold is ``||cam||_1 / (h·w)`` per (sample, class), the comparison is strict and
    it is applied to the full-size map, *before* pooling (pooled values are then fractions).
    """
    threshold = cam.abs().mean(dim=(2, 3), keepdim=True)  # (N, K, 1, 1)
    return (cam - threshold > 0).to(cam.dtype)


def select_partial_cams(
    cam_student: Tensor, cam_teacher: Tensor, teacher_logits: Tensor, num_cams: int, strategy: int
) -> tuple[Tensor, Tensor]:
    """``IF_OnlyTransferPartialCAMs``: keep the CAMs of some classes, picked by teacher logits.

    Official semantics, off-by-one included: with ``l_j`` the j-th largest logit (1-based),
    strategy 0 keeps the classes with logit ``> l_num_cams``, i.e. the top ``num_cams − 1``;
    strategy 1 keeps those with logit ``<= l_(K − num_cams)`` (the official index
    ``99 − num_cams`` hard-codes K = 100), i.e. the lowest ``num_cams + 1``. Both maps are
    flattened in (sample, class) order and reshaped to ``(N, −1, h, w)``. When ties make the
    total count not divisible by N, all CAMs are kept, as in the official ``_mask``.
    """
    n, k = teacher_logits.shape
    ranked = teacher_logits.sort(dim=1, descending=True).values  # (N, K)
    if strategy == 0:
        keep = teacher_logits > ranked[:, num_cams - 1 : num_cams]
    else:
        keep = ~(teacher_logits > ranked[:, k - 1 - num_cams : k - num_cams])
    if int(keep.sum()) % n:
        return cam_student, cam_teacher
    # boolean indexing over (N, K) walks the maps in the same order as masked_select
    student = cam_student[keep].reshape(n, -1, *cam_student.shape[2:])
    teacher = cam_teacher[keep].reshape(n, -1, *cam_teacher.shape[2:])
    return student, teacher


def cam_paths(
    model: nn.Module, layer: str | None = None, classifier: str | None = None, role: str = "model"
) -> tuple[str, str]:
    """Module paths ``(last feature map, linear layer)`` whose product gives ``model``'s CAMs.

    Defaults: the zoo's ``feature_info[-1]["module"]`` (the globally pooled map) and
    ``classifier_name``; a user model names them. The linear layer is checked to exist.
    """
    model = unwrap_model(model)
    flag = "" if role == "model" else f"{role}_"
    if layer is None:
        info = getattr(model, "feature_info", None)
        if not info:
            raise ValueError(
                f"cat_kd: the {role} ({type(model).__name__}) has no feature_info; set "
                f"{flag}layer to the module whose output is globally pooled into its classifier"
            )
        layer = info[-1]["module"]
    classifier = classifier or getattr(model, "classifier_name", None)
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if classifier is None or classifier not in dict(model.named_modules()):
        raise ValueError(
            f"cat_kd: set {flag}classifier to the module path of the {role}'s final linear "
            f"layer (got {classifier!r}); its linear layers: {linears}"
        )
    weight = getattr(model.get_submodule(classifier), "weight", None)
    if not isinstance(weight, Tensor) or weight.dim() != 2:
        raise ValueError(f"cat_kd: {role} module {classifier!r} is not a linear layer: {linears}")
    return layer, classifier


class CATKDLoss(LossTerm):
    """``β · cat_kd_loss(CAM_s, CAM_t, R, normalize)``, CAMs taken by taps (CAT-KD).

    A CAM is the bias-free 1×1 conv of the last feature map with the classifier's weight
    (:func:`class_activation_map`); the official code instead replaces the FC by such a conv
    (``if_test``). The teacher's FC bias is dropped, as there. The student's CAM uses its live
    classifier weight, so CAT trains that weight too. Teacher maps may be binarised
    (:func:`binarize_cam`) and only some classes transferred (:func:`select_partial_cams`,
    ranked by the teacher's bias-free logits ``CAM_t.mean``, computed before binarising).

    Official student logits are ``mean(CAM_s)`` with no bias. Ours are ``fc(pool(f))`` =
    ``mean(CAM_s) + b``; ``student_bias=False`` (default) zeroes and freezes ``b`` when the
    term is attached, which makes them equal. The official students are the ``*_test``
    twins, built from scratch, whose conv head starts as :data:`OFFICIAL_HEAD_INIT` says:
    N(0, 2/K) for the ResNet, WRN, CIFAR MobileNetV2 and ResNet50 families, PyTorch's default
    U(±1/√C) for VGG, ShuffleV1/V2 and the ImageNet MobileNet(V1). With
    ``student_init="official"`` (default) the zoo student's linear weight is redrawn so when
    the term is attached (global RNG, hence fixed by the seed); the zoo's own
    initialisation differs (VGG, CIFAR MobileNetV2: N(0, 0.01); ResNet, WRN: PyTorch's).

    The teacher is read only through :meth:`teacher_values`: its CAMs pooled to R×R (after
    binarising) and, with ``num_cams``, its bias-free logits. Pooling is per (sample, class),
    so selecting classes after it equals selecting before. A teacher cache stores these
    values (K·R² + K numbers per sample), and a run from it never builds the teacher.

    Official defaults (``mdistiller/engine/cfg.py``): β 400, R 2, normalize True, no
    binarisation, all CAMs; per pair β runs from 0.7 to 600 (see the recipes). CE is a
    separate ``ce`` term (``CE_WEIGHT``); "CAT only" (``onlyCAT``) is this term alone.

    Args:
        student_layer, teacher_layer: module paths of the last feature maps (default: the
            zoo model's ``feature_info[-1]``).
        student_classifier, teacher_classifier: module paths of the final linear layers
            (default: the zoo model's ``classifier_name``).
        weight: β (``CAT_loss_weight``, 400).
        resolution: R (``CAM_RESOLUTION``).
        normalize: L2-normalise the pooled CAMs (``IF_NORMALIZE``).
        binarize: binarise the teacher CAMs (``IF_BINARIZE``).
        num_cams: transfer only this many classes' CAMs (``CAMs_Nums``, with
            ``IF_OnlyTransferPartialCAMs``); None transfers all.
        strategy: 0 top teacher logits, 1 lowest (``Strategy``).
        student_bias: keep the student's classifier bias trainable (False: zero and freeze
            it, the official bias-free head).
        student_init: ``"official"`` redraws the classifier weight of a zoo student as its
            official twin's conv head (:func:`official_head_init`; others are left alone);
            ``"keep"`` leaves it, e.g. for a pretrained student.
    """

    needs_teacher_output = False
    needs_teacher_autograd = False

    def __init__(
        self,
        student_layer: str | None = None,
        teacher_layer: str | None = None,
        student_classifier: str | None = None,
        teacher_classifier: str | None = None,
        *,
        weight: float = 400.0,
        resolution: int = 2,
        normalize: bool = True,
        binarize: bool = False,
        num_cams: int | None = None,
        strategy: int = 0,
        student_bias: bool = False,
        student_init: str = "official",
    ) -> None:
        super().__init__(weight)
        check_choice("student_init", student_init, STUDENT_INITS)
        if resolution < 1:
            raise ValueError(f"cat_kd: resolution must be >= 1, got {resolution}")
        if strategy not in (0, 1):
            raise ValueError(f"cat_kd: strategy must be 0 (top) or 1 (lowest), got {strategy}")
        if num_cams is not None and num_cams < (2 if strategy == 0 else 0):
            raise ValueError(
                f"cat_kd: num_cams={num_cams} transfers no CAM; strategy 0 keeps num_cams - 1 "
                "classes (official off-by-one), so it needs num_cams >= 2"
            )
        self.resolution, self.normalize, self.binarize = resolution, normalize, binarize
        self.num_cams, self.strategy, self.student_bias = num_cams, strategy, student_bias
        self.student_init = student_init
        self.student_layer, self.teacher_layer = student_layer, teacher_layer
        self.student_classifier, self.teacher_classifier = student_classifier, teacher_classifier
        self._given_teacher = {
            "teacher_layer": teacher_layer,
            "teacher_classifier": teacher_classifier,
        }
        # (student head, teacher head or None with a cached teacher); outside the module tree
        self._linears: tuple[nn.Module | None, nn.Module | None] | None = None

    @property
    def student_taps(self) -> list[str]:
        return [self._attached(self.student_layer)]

    @property
    def teacher_taps(self) -> list[str]:
        if self._linears is not None and self._linears[1] is None:
            return []  # a cached teacher: its stored values replace the tap
        return [self._attached(self.teacher_layer)]

    def _attached(self, path: str | None) -> str:
        if path is None:
            raise RuntimeError("cat_kd: attach(student, teacher) must run first")
        return path

    def attach(self, student: nn.Module | None, teacher: nn.Module | None) -> None:
        """Both models; ``(student, None)`` from a teacher cache; ``(None, teacher)`` in the
        cache writer (only :meth:`teacher_values` is used then)."""
        if student is None and teacher is None:
            raise ValueError("cat_kd needs a student or a teacher")
        head_s = head_t = None
        if student is not None:
            self.student_layer, self.student_classifier = cam_paths(
                student, self.student_layer, self.student_classifier, "student"
            )
        if teacher is not None:
            self.teacher_layer, self.teacher_classifier = cam_paths(
                teacher, self.teacher_layer, self.teacher_classifier, "teacher"
            )
            head_t = unwrap_model(teacher).get_submodule(self.teacher_classifier)
        if student is not None:
            head_s = unwrap_model(student).get_submodule(self.student_classifier)
            self._init_student_head(student, head_s)
        self._linears = (head_s, head_t)

    def _init_student_head(self, student: nn.Module, head_s: nn.Module) -> None:
        scheme = official_head_init(student) if self.student_init == "official" else None
        if scheme is not None:
            init_cam_head(head_s.weight, scheme)
        bias = getattr(head_s, "bias", None)
        if not self.student_bias and isinstance(bias, Tensor):
            with torch.no_grad():
                bias.zero_()  # the official student head is a bias-free conv
            bias.requires_grad_(False)

    def build(self, student_shapes, teacher_shapes) -> None:
        classes = []
        for role, shapes, layer, head in zip(
            ("student", "teacher"),
            (student_shapes, teacher_shapes),
            (self.student_layer, self.teacher_layer),
            self._linears,
            strict=True,
        ):
            if head is None:  # a cached teacher: its pooled CAMs come with the batch
                classes.append(self._cached_classes(teacher_shapes))
                continue
            shape, (k, c) = shapes[layer], head.weight.shape
            if not isinstance(shape, torch.Size) or len(shape) != 4 or shape[1] != c:
                raise ValueError(
                    f"cat_kd: the {role}'s module {layer!r} outputs {shape}, but its linear "
                    f"layer takes {c} features: tap the (N, {c}, H, W) map that is globally "
                    f"pooled into it ({role}_layer)"
                )
            classes.append(k)
        if classes[0] != classes[1]:
            raise ValueError(
                f"cat_kd: the student classifies {classes[0]} classes and the teacher "
                f"{classes[1]}; CAMs are compared class by class"
            )
        top = classes[0] if self.strategy == 0 else classes[0] - 1
        if self.num_cams is not None and self.num_cams > top:
            raise ValueError(
                f"cat_kd: num_cams={self.num_cams} is more than {top}, the most strategy "
                f"{self.strategy} allows with {classes[0]} classes"
            )

    def _cached_classes(self, teacher_shapes) -> int:
        """K of the stored pooled CAMs, checked to be ``(N, K, R, R)``."""
        r = self.resolution
        shape = teacher_shapes.get(f"{self.teacher_values_key}/cam")
        if not isinstance(shape, torch.Size) or len(shape) != 4 or tuple(shape[2:]) != (r, r):
            raise ValueError(
                f"cat_kd: no teacher was attached and the batch holds no pooled {r}x{r} teacher "
                f"CAMs for these settings ({self.teacher_value_settings()}); got {shape}"
            )
        return shape[1]

    def teacher_value_settings(self) -> dict[str, Any]:
        """What the stored values depend on (the layers as the recipe gives them); ``weight``,
        ``normalize``, ``num_cams`` and ``strategy`` act on them at training time."""
        settings = {"resolution": self.resolution, "binarize": self.binarize}
        return {**self._given_teacher, **settings, "logits": self.num_cams is not None}

    def teacher_values(self, teacher_features: dict[str, Any]) -> dict[str, Tensor]:
        """``{"cam": (N, K, R, R)}``: the teacher's CAMs (binarised first if asked) pooled to
        R×R; with ``num_cams`` also ``"logits"``: (N, K) bias-free logits ``CAM.mean``,
        taken before binarising, that rank the classes."""
        head_t = self._linears[1] if self._linears is not None else None
        if head_t is None:
            raise RuntimeError(
                "cat_kd: no teacher was attached, and the batch holds no stored teacher values "
                f"{self.teacher_values_key} (train from a cache written for these settings)"
            )
        cam_t = class_activation_map(teacher_features[self.teacher_layer], head_t.weight)
        values: dict[str, Tensor] = {}
        if self.num_cams is not None:
            values["logits"] = cam_t.mean(dim=(2, 3))  # the official teacher's bias-free logits
        if self.binarize:
            cam_t = binarize_cam(cam_t)
        size = (self.resolution, self.resolution)
        values["cam"] = F.adaptive_avg_pool2d(cam_t, size)  # (N, K, h, w) -> (N, K, R, R)
        return values

    def forward(self, batch: DistillBatch) -> Tensor:
        head_s = self._linears[0]
        cam_s = class_activation_map(batch.student_features[self.student_layer], head_s.weight)
        with torch.no_grad():  # stored (a teacher cache) or computed from the live teacher
            teacher = self.read_teacher_values(batch.teacher_features)
        cam_t = teacher["cam"]  # (N, K, R, R): pooling it again in cat_kd_loss is the identity
        if self.num_cams is not None:
            logits_t = teacher["logits"]
            cam_s, cam_t = select_partial_cams(cam_s, cam_t, logits_t, self.num_cams, self.strategy)
        return self.weight * cat_kd_loss(cam_s, cam_t, self.resolution, self.normalize)

    def extra_repr(self) -> str:
        parts = [
            f"weight={self.weight:g}, resolution={self.resolution}, normalize={self.normalize}",
            f"binarize={self.binarize}, num_cams={self.num_cams}, strategy={self.strategy}",
            f"student_bias={self.student_bias}, student_init={self.student_init!r}",
            f"student_layer={self.student_layer!r}",
            f"teacher_layer={self.teacher_layer!r}",
        ]
        return ", ".join(parts)
