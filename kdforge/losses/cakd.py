"""Liu et al., "Cross-Architecture Knowledge Distillation", ACCV 2022 (CAKD), as released.

Facts from ``yufanLIU/CrossArch_KD`` @1bc8a66 (``dist_train_cakd.py`` ``train_one_epoch``,
``cakd_modified_files/resnet.py``, ``new_utils.py``); the paper text was not available.
A ViT teacher (``vit_b_16``) and a CNN student (ResNet-50): the student's ``layer3`` map
``(N, C, 14, 14)`` becomes 196 tokens (index ``14·row + col``) for the projectors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdforge.losses._cakd_modules import (
    GroupLinearProjector,
    PartialCrossAttentionProjector,
    PatchDiscriminator,
)
from kdforge.losses._checks import check_same_classes, describe_mismatch
from kdforge.losses.base import DistillBatch, LossTerm
from kdforge.models.vit.attention import AttentionTap, attention_logits, attention_tap

__all__ = [
    "CAKDLoss",
    "adversarial_loss",
    "cakd_ramp",
    "discriminator_loss",
    "gan_loss",
    "pca_loss",
]


def cakd_ramp(epoch: int, start: int = 25, length: int = 50, max_weight: float = 0.2) -> float:
    """``λ(epoch) = min(max(epoch − start, 0) / length, max_weight)``: 0 up to epoch 25, 0.1 at 30,
    0.2 from 35 on (``epoch`` = completed epochs, 0-based as in the released loop)."""
    return min(max(epoch - start, 0) / length, max_weight)


def pca_loss(
    student_qk: Tensor,
    student_vv: Tensor,
    teacher_qk: Tensor,
    teacher_vv: Tensor,
    qk_weight: float = 0.2,
    vv_weight: float = 0.05,
) -> Tensor:
    """``0.2·MSE(A_qk^s, A_qk^t) + 0.05·MSE(A_vv^s, A_vv^t)`` of ``(N, L, L)`` pre-softmax maps."""
    return qk_weight * F.mse_loss(student_qk, teacher_qk) + vv_weight * F.mse_loss(
        student_vv, teacher_vv
    )


def gan_loss(logits: Tensor, real: bool) -> Tensor:
    """Vanilla GAN loss: ``BCEWithLogits(logits, 1 if real else 0)``, mean over elements."""
    target = torch.full_like(logits, 1.0 if real else 0.0)
    return F.binary_cross_entropy_with_logits(logits, target)


def discriminator_loss(pred_real: Tensor, pred_fake: Tensor) -> Tensor:
    """Discriminator objective as released: ``0.5·(BCE(D_real.detach(), 1) + BCE(D_fake, 0))``.

    Quirk kept: ``D_real`` is detached here too, so the discriminator learns only from the
    (student) fake maps; the real branch still updates its BatchNorm statistics.
    """
    return 0.5 * (gan_loss(pred_real.detach(), True) + gan_loss(pred_fake, False))


def adversarial_loss(
    pred_real: Tensor, pred_fake: Tensor, real_weight: float = 0.05, fake_weight: float = 1.0
) -> Tensor:
    """Student-side adversarial term ``0.05·BCE(D_real, 1) + BCE(D_fake, 1)``, all detached.

    In the released code ``D_fake`` is computed on the detached student map, so this term
    never reaches the student: it is a logged constant. ``D_fake`` is detached here too (as at
    the parent commit be3e059); HEAD back-propagated it into the discriminator after the
    discriminator step had changed its weights in place, which crashes in fp32 — student
    gradients are identical either way.
    """
    real, fake = pred_real.detach(), pred_fake.detach()
    return real_weight * gan_loss(real, True) + fake_weight * gan_loss(fake, True)


class CAKDLoss(LossTerm):
    """CAKD: ViT attention and tokens distilled into a CNN, with an adversarial discriminator.

    With the student map tokens ``x = layer3 → (N, HW, C)`` and the teacher's last encoder
    block (pre-softmax ``T_qk = mean_h((q/√d)kᵀ)``, ``T_vv = mean_h(v vᵀ)``, class token
    removed) and final-LayerNorm tokens ``[t_cls, t_patch]``::

        pca  = 0.2·MSE(A_qk(x), T_qk) + 0.05·MSE(A_vv(x), T_vv)        (PCA projector)
        gl   = MSE(z_s, z_t) + MSE(cls_proj(pool_s), t_cls) + 0.05·MSE(GL(x), t_patch)
        adv  = 0.05·BCE(D(T_qk), 1) + BCE(D(A_qk), 1)                   (no gradient)
        loss = weight · λ(epoch) · (pca + gl + adv),  λ = min(max(epoch − 25, 0)/50, 0.2)

    Returned as ``{"pca", "logits", "cls_token", "gl", "adv"}`` (each ``weight·λ·term``); the
    task loss is a separate term (released: ``ce`` with ``label_smoothing=0.1``, weight 1,
    not ramped). The discriminator ``D`` (:class:`PatchDiscriminator`, 1→8 channels, 3
    layers) is an *auxiliary* part: ``forward`` leaves ``0.5·(BCE(D(T_qk), 1) + BCE(D(A_qk),
    0))`` (``A_qk`` detached; the real logits detached too, as released; unweighted, never
    ramped) in ``auxiliary_loss`` for its own SGD at ``auxiliary_lr_scale = 0.01`` × the
    student LR, stepped before the student's. In ``adv`` the fake logits are detached as at
    the parent commit be3e059: HEAD crashes in fp32 (in-place error), student gradients agree.
    Projectors (``pca_proj``, ``gl_proj``, ``cls_proj``) train with the student and are
    dropped at export. The teacher gets no gradient (the released code let the class-token
    MSE reach it; those gradients were never applied).

    Args:
        student_layer: student map at the teacher's patch stride (``layer3``: /16).
        student_pool: the pooled student feature fed to the classifier (``fc:input``).
        teacher_attention: teacher attention block; default the last one found
            (zoo, torchvision ``nn.MultiheadAttention`` or timm ``Attention``).
        teacher_tokens: teacher final-norm output ``(N, 1 + HW, D)`` (``encoder.ln``;
            timm: ``norm``); token 0 is the class token.
        weight: overall weight (1; the released loop has none besides the ramp).
        heads: PCA projector heads (16; width per head ``C / heads``).
        qk_weight, vv_weight, logits_weight, cls_weight, gl_weight: 0.2, 0.05, 1, 1, 0.05.
        adv_real_weight, adv_fake_weight: 0.05, 1.
        ramp_start, ramp_length, ramp_max: 25, 50, 0.2.
        discriminator_lr_scale: discriminator LR / student LR (0.01).
    """

    def __init__(
        self,
        student_layer: str = "layer3",
        student_pool: str = "fc:input",
        teacher_attention: str | None = None,
        teacher_tokens: str = "encoder.ln",
        *,
        weight: float = 1.0,
        heads: int = 16,
        qk_weight: float = 0.2,
        vv_weight: float = 0.05,
        logits_weight: float = 1.0,
        cls_weight: float = 1.0,
        gl_weight: float = 0.05,
        adv_real_weight: float = 0.05,
        adv_fake_weight: float = 1.0,
        ramp_start: int = 25,
        ramp_length: int = 50,
        ramp_max: float = 0.2,
        discriminator_lr_scale: float = 0.01,
    ) -> None:
        super().__init__(weight)
        self.student_layer, self.student_pool = student_layer, student_pool
        self.teacher_attention, self.teacher_tokens = teacher_attention, teacher_tokens
        self.heads = heads
        self.part_weights = dict(
            qk=qk_weight, vv=vv_weight, logits=logits_weight, cls=cls_weight, gl=gl_weight
        )
        self.adv_weights = (adv_real_weight, adv_fake_weight)
        self.ramp = (ramp_start, ramp_length, ramp_max)
        self.auxiliary_lr_scale = discriminator_lr_scale
        self.attention: AttentionTap | None = None  # resolved by attach
        self.pca_proj: nn.Module | None = None
        self.gl_proj: nn.Module | None = None
        self.cls_proj: nn.Module | None = None
        self.discriminator: nn.Module | None = None

    @property
    def student_taps(self) -> list[str]:
        return [self.student_layer, self.student_pool]

    @property
    def teacher_taps(self) -> list[str]:
        if self.attention is None:
            raise RuntimeError("cakd: attach(student, teacher) must run before taps are read")
        return [self.attention.tap, self.teacher_tokens]

    def attach(self, student: nn.Module, teacher: nn.Module | None) -> None:
        self.attention = attention_tap(teacher, self.teacher_attention)

    def auxiliary_parameters(self) -> list[nn.Parameter]:
        return [] if self.discriminator is None else list(self.discriminator.parameters())

    def build(self, student_shapes, teacher_shapes) -> None:
        check_same_classes("cakd", student_shapes, teacher_shapes)
        feat, pool = student_shapes[self.student_layer], student_shapes[self.student_pool]
        tokens = teacher_shapes[self.teacher_tokens]
        if len(feat) != 4 or len(pool) != 2 or len(tokens) != 3:
            raise ValueError(
                f"cakd: expected a student map (N, C, H, W) at {self.student_layer!r}, a pooled "
                f"vector (N, P) at {self.student_pool!r} and teacher tokens (N, L, D) at "
                f"{self.teacher_tokens!r}; got {tuple(feat)}, {tuple(pool)}, {tuple(tokens)}"
            )
        _, channels, height, width = feat
        num_tokens, dim = height * width, tokens[2]
        if num_tokens + 1 != tokens[1]:
            fix = (
                f"The {height}x{width} student map must give one token per teacher patch "
                f"({tokens[1] - 1} + a class token): tap the student layer at the ViT's patch "
                "stride (layer3 of a ResNet for /16 patches)."
            )
            args = (self.student_layer, feat, self.teacher_tokens, tokens, fix)
            raise ValueError(describe_mismatch("cakd", *args))
        if channels % self.heads:
            raise ValueError(
                f"cakd: {channels} student channels do not split into {self.heads} heads"
            )
        self.pca_proj = PartialCrossAttentionProjector(channels, self.heads, channels // self.heads)
        self.gl_proj = GroupLinearProjector(channels, dim, num_tokens)
        self.cls_proj = nn.Linear(pool[1], dim)
        self.discriminator = PatchDiscriminator(input_nc=1, ndf=8, n_layers=3)
        if num_tokens < self.discriminator.min_input_size():
            raise ValueError(
                f"cakd: the discriminator needs attention maps of side >= "
                f"{self.discriminator.min_input_size()}, these are {num_tokens}x{num_tokens} "
                "(one row per student token); use larger images"
            )

    def forward(self, batch: DistillBatch) -> dict[str, Tensor]:
        w = self.part_weights
        tokens = batch.student_features[self.student_layer].flatten(2).transpose(1, 2)  # (N, HW, C)
        s_qk, s_vv = self.pca_proj(tokens)  # (N, HW, HW) each
        with torch.no_grad():
            recorded = batch.teacher_features[self.attention.tap]
            t_qk, t_vv = attention_logits(*self.attention.qkv(recorded))  # (N, L, L), vv unscaled
            t_qk, t_vv = t_qk[:, 1:, 1:], t_vv[:, 1:, 1:]  # drop the class token
            pred_real = self.discriminator(t_qk[:, None])  # (N, 1, 1, 1); updates BN statistics
        t_tokens = batch.teacher_features[self.teacher_tokens]  # (N, 1 + HW, D)
        pooled = batch.student_features[self.student_pool]  # (N, P)
        pred_fake = self.discriminator(s_qk.detach()[:, None])
        self.auxiliary_loss = discriminator_loss(pred_real, pred_fake)
        losses = {
            "pca": pca_loss(s_qk, s_vv, t_qk, t_vv, w["qk"], w["vv"]),
            "logits": w["logits"] * F.mse_loss(batch.student_output, batch.teacher_output),
            "cls_token": w["cls"] * F.mse_loss(self.cls_proj(pooled), t_tokens[:, 0]),
            "gl": w["gl"] * F.mse_loss(self.gl_proj(tokens), t_tokens[:, 1:]),
            "adv": adversarial_loss(pred_real, pred_fake, *self.adv_weights),
        }
        scale = self.weight * cakd_ramp(batch.epoch, *self.ramp)
        return {name: scale * value for name, value in losses.items()}

    def extra_repr(self) -> str:
        return (
            f"weight={self.weight:g}, student_layer={self.student_layer!r}, "
            f"teacher_attention={self.attention.path if self.attention else None!r}, "
            f"ramp={self.ramp}, discriminator_lr_scale={self.auxiliary_lr_scale:g}"
        )
