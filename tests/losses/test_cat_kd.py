"""CAT-KD: the loss in closed form, binarisation, partial transfer, CAMs by taps, gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdforge.distiller import Distiller
from kdforge.losses import (
    TERMS,
    CATKDLoss,
    binarize_cam,
    cam_paths,
    cat_kd_loss,
    class_activation_map,
    select_partial_cams,
)
from kdforge.losses.base import DistillBatch
from kdforge.models import create_model, get_model_info, list_models
from kdforge.taps import FeatureTaps


class TinyNet(nn.Module):
    """conv -> ReLU (the pooled map) -> global average pool -> linear, zoo-style attributes."""

    classifier_name = "head"

    def __init__(self, channels: int = 4, num_classes: int = 5, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 3, stride=stride, padding=1)
        self.act = nn.ReLU()
        self.head = nn.Linear(channels, num_classes)
        self.feature_info = [{"module": "act", "num_chs": channels, "reduction": stride}]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.conv(x)).mean(dim=(2, 3)))


def _distiller(term: CATKDLoss, teacher: nn.Module | None = None, student=None) -> Distiller:
    torch.manual_seed(0)
    teacher = teacher or TinyNet(channels=6, stride=1)
    student = student or TinyNet(channels=4, stride=2)  # 4x4 maps against the teacher's 8x8
    return Distiller(teacher, student, {"cat_kd": term}, example_input=torch.randn(2, 3, 8, 8))


def test_registered_as_cat_kd():
    assert TERMS["cat_kd"] is CATKDLoss


def test_loss_is_zero_when_maps_match_even_at_different_sizes():
    cam = torch.randn(2, 3, 4, 4)
    assert cat_kd_loss(cam, cam.clone()).item() == 0.0
    assert cat_kd_loss(cam, cam.clone(), resolution=4, normalize=True).item() == 0.0
    coarse = torch.randn(2, 3, 2, 2)  # a 4x4 map made of constant 2x2 blocks pools back to it
    fine = coarse.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    assert cat_kd_loss(fine, coarse, resolution=2).item() == pytest.approx(0.0, abs=1e-12)


def test_pooling_to_r_by_r_then_element_mean_squared_error():
    student = torch.arange(16.0).view(1, 1, 4, 4)  # 2x2 block means 2.5, 4.5, 10.5, 12.5
    teacher = torch.zeros(1, 1, 8, 8)
    expected = (2.5**2 + 4.5**2 + 10.5**2 + 12.5**2) / 4
    assert cat_kd_loss(student, teacher, resolution=2).item() == pytest.approx(expected)
    assert cat_kd_loss(student, teacher, resolution=1).item() == pytest.approx(7.5**2)


def test_normalisation_is_per_class_l2_over_the_cells():
    student = torch.tensor([[3.0, 4.0], [0.0, 0.0]]).view(1, 1, 2, 2)
    teacher = torch.tensor([[0.0, 0.0], [0.0, 2.0]]).view(1, 1, 2, 2)
    assert cat_kd_loss(student, teacher).item() == pytest.approx((9 + 16 + 4) / 4)
    # normalised: [[0.6, 0.8], [0, 0]] against [[0, 0], [0, 1]]
    assert cat_kd_loss(student, teacher, normalize=True).item() == pytest.approx(0.5)


def test_normalisation_comes_after_pooling():
    checker = torch.tensor([[0.0, 2.0], [2.0, 0.0]]).repeat(2, 2).view(1, 1, 4, 4)
    teacher = torch.full((1, 1, 2, 2), 7.0)  # every block of `checker` averages to 1
    assert cat_kd_loss(checker, teacher, 2, normalize=True).item() == pytest.approx(0.0, abs=1e-12)


def test_loss_refuses_different_class_counts():
    with pytest.raises(ValueError, match="number of classes"):
        cat_kd_loss(torch.randn(2, 3, 4, 4), torch.randn(2, 5, 4, 4))


def test_binarisation_threshold_is_the_mean_absolute_activation_strictly():
    cam = torch.tensor([[0.0, 1.0], [2.0, 5.0]]).view(1, 1, 2, 2)  # mean |x| = 2
    assert binarize_cam(cam).view(-1).tolist() == [0.0, 0.0, 0.0, 1.0]  # 2 is not > 2
    signed = torch.tensor([[-4.0, 0.0], [1.0, 3.0]]).view(1, 1, 2, 2)  # mean |x| = 2, not 0
    assert binarize_cam(signed).view(-1).tolist() == [0.0, 0.0, 0.0, 1.0]


def _class_maps(n: int, k: int, size: int) -> torch.Tensor:
    """(n, k, size, size) maps whose value is the class index, to read back what was kept."""
    return torch.arange(k, dtype=torch.float32).view(1, k, 1, 1).expand(n, k, size, size).clone()


@pytest.mark.parametrize(("num_cams", "strategy", "kept"), [(75, 1, 76), (10, 0, 9), (2, 0, 1)])
def test_partial_transfer_keeps_the_official_off_by_one_counts(num_cams, strategy, kept):
    g = torch.Generator().manual_seed(0)
    logits = torch.stack([torch.randperm(100, generator=g).float() for _ in range(3)])
    student, teacher = select_partial_cams(
        _class_maps(3, 100, 2), _class_maps(3, 100, 4), logits, num_cams, strategy
    )
    assert student.shape == (3, kept, 2, 2) and teacher.shape == (3, kept, 4, 4)
    ranked = logits.argsort(dim=1, descending=True)
    for n in range(3):
        want = ranked[n, :kept] if strategy == 0 else ranked[n, 100 - kept :]
        assert sorted(teacher[n, :, 0, 0].long().tolist()) == sorted(want.tolist())
        assert torch.equal(student[n, :, 0, 0], teacher[n, :, 0, 0])


def test_partial_transfer_falls_back_to_all_cams_when_ties_break_the_reshape():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0], [4.0, 3.0, 3.0, 1.0]])  # ties in sample 2
    cams = _class_maps(2, 4, 2)
    # strategy 1, num_cams 1 keeps logits <= the 3rd largest: 2 classes, then 3 (ties)
    student, teacher = select_partial_cams(cams, cams.clone(), logits, 1, 1)
    assert student.shape == teacher.shape == (2, 4, 2, 2)


def test_term_selects_classes_by_the_teachers_bias_free_logits():
    term = CATKDLoss(weight=2.0, normalize=False, num_cams=3, strategy=0)
    distiller = _distiller(term)
    with torch.no_grad():
        distiller.teacher.head.bias.copy_(torch.tensor([50.0, -50.0, 0.0, 0.0, 0.0]))
    x = torch.randn(4, 3, 8, 8)
    _, losses = distiller(x, torch.zeros(4, dtype=torch.long))
    student, teacher = distiller.student, distiller.teacher
    with (
        torch.no_grad(),
        FeatureTaps(student, ["act"]) as s_taps,
        FeatureTaps(teacher, ["act"]) as t_taps,
    ):
        student(x), teacher(x)
        cam_s = class_activation_map(s_taps.outputs["act"], student.head.weight)
        cam_t = class_activation_map(t_taps.outputs["act"], teacher.head.weight)
    expected = 2.0 * cat_kd_loss(*select_partial_cams(cam_s, cam_t, cam_t.mean((2, 3)), 3, 0))
    assert losses["cat_kd"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_term_binarises_the_teacher_before_pooling():
    term = CATKDLoss(weight=1.0, resolution=2, normalize=False, binarize=True)
    distiller = _distiller(term)
    x = torch.randn(2, 3, 8, 8)
    t_feat = distiller.teacher.act(distiller.teacher.conv(x))
    cam_t = binarize_cam(class_activation_map(t_feat, distiller.teacher.head.weight))
    s_feat = distiller.student.act(distiller.student.conv(x))
    cam_s = class_activation_map(s_feat, distiller.student.head.weight)
    _, losses = distiller(x, torch.zeros(2, dtype=torch.long))
    assert losses["cat_kd"].item() == pytest.approx(cat_kd_loss(cam_s, cam_t).item(), rel=1e-6)
    pooled = torch.nn.functional.adaptive_avg_pool2d(cam_t, 2)
    assert ((pooled > 0) & (pooled < 1)).any()  # fractions: pooled after binarising


def test_gradients_reach_the_student_and_its_classifier_weight_only():
    distiller = _distiller(CATKDLoss())
    student, teacher = distiller.student, distiller.teacher
    assert not student.head.bias.requires_grad and not student.head.bias.any()  # official head
    _, losses = distiller(torch.randn(3, 3, 8, 8), torch.zeros(3, dtype=torch.long))
    losses["cat_kd"].backward()
    assert student.conv.weight.grad.abs().sum() > 0
    assert student.head.weight.grad.abs().sum() > 0  # through the CAM
    assert student.head.bias.grad is None
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())


def test_student_bias_true_keeps_the_bias_trainable():
    torch.manual_seed(1)
    student = TinyNet(stride=2)
    before = student.head.bias.detach().clone()
    _distiller(CATKDLoss(student_bias=True), student=student)
    assert student.head.bias.requires_grad and torch.equal(student.head.bias, before)


def test_user_models_name_their_layers():
    class Plain(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
            self.fc = nn.Linear(4, 5)

        def forward(self, x):
            return self.fc(self.body(x).mean(dim=(2, 3)))

    with pytest.raises(ValueError, match="student_layer"):
        _distiller(CATKDLoss(), student=Plain())
    with pytest.raises(ValueError, match="student_classifier.*'fc'"):
        _distiller(CATKDLoss(student_layer="body"), student=Plain())
    term = CATKDLoss(student_layer="body", student_classifier="fc")
    _distiller(term, student=Plain())
    assert term.student_taps == ["body"] and term.teacher_taps == ["act"]


def test_build_checks_channels_and_classes():
    with pytest.raises(ValueError, match="takes 4 features"):
        _distiller(CATKDLoss(student_layer=""))  # the logits, not a feature map
    with pytest.raises(ValueError, match="classifies 3 classes and the teacher 5"):
        _distiller(CATKDLoss(), student=TinyNet(num_classes=3))
    with pytest.raises(ValueError, match="num_cams=5 is more than 4"):
        _distiller(CATKDLoss(num_cams=5, strategy=1))
    with pytest.raises(ValueError, match="num_cams >= 2"):
        CATKDLoss(num_cams=1, strategy=0)


# the CNN classifiers of the zoo (ViTs end in tokens, not a pooled feature map: no CAM)
CLASSIFIERS = [n for n in list_models("cifar") + list_models("imagenet") if not n.startswith("vit")]


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_cam_is_a_bias_free_1x1_conv_of_the_pooled_map(name: str):
    size = 32 if get_model_info(name).family == "cifar" else 64
    torch.manual_seed(0)
    model = (
        create_model(name, num_classes=7).double().eval()
    )  # float64: deep nets at random init have big logits
    layer, classifier = cam_paths(model)
    linear = model.get_submodule(classifier)
    with torch.no_grad(), FeatureTaps(model, [layer]) as taps:
        logits = model(torch.randn(2, 3, size, size, dtype=torch.float64))
        features = taps.outputs[layer]
        cam = class_activation_map(features, linear.weight)
        conv = nn.Conv2d(linear.in_features, 7, 1, bias=False).double()
        conv.weight.copy_(linear.weight.view(7, -1, 1, 1))
    torch.testing.assert_close(cam, conv(features).detach())
    torch.testing.assert_close(cam.mean(dim=(2, 3)) + linear.bias.detach(), logits)


def test_a_repdistiller_checkpoint_is_a_teacher_unchanged(tmp_path):
    torch.manual_seed(0)
    trained = create_model("resnet8", num_classes=10)
    state = {k: v.clone() for k, v in trained.state_dict().items()}
    path = tmp_path / "ckpt_epoch_240.pth"  # RepDistiller/mdistiller layout
    torch.save({"epoch": 240, "model": state, "best_acc": 70.0, "optimizer": {}}, path)
    teacher = create_model("resnet8", num_classes=10, pretrained=path)
    term = CATKDLoss(weight=3.0, normalize=False)
    distiller = _distiller(term, teacher=teacher, student=create_model("resnet8", num_classes=10))
    assert torch.equal(distiller.teacher.fc.weight, state["fc.weight"])
    assert torch.equal(distiller.teacher.fc.bias, state["fc.bias"])  # the teacher is untouched
    distiller.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), FeatureTaps(teacher, ["layer3"]) as taps:
        teacher(x)
        cam_t = class_activation_map(taps.outputs["layer3"], state["fc.weight"])
    with torch.no_grad(), FeatureTaps(distiller.student, ["layer3"]) as taps:
        distiller.student(x)
        cam_s = class_activation_map(taps.outputs["layer3"], distiller.student.fc.weight)
    _, losses = distiller(x, torch.zeros(2, dtype=torch.long))
    expected = 3.0 * cat_kd_loss(cam_s, cam_t)
    assert losses["cat_kd"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_forward_matches_the_pure_function_on_a_batch():
    term = CATKDLoss(weight=5.0, resolution=1, normalize=True)
    distiller = _distiller(term)
    s_feat, t_feat = torch.rand(2, 4, 4, 4), torch.rand(2, 6, 8, 8)
    batch = DistillBatch(None, None, {"act": s_feat}, {"act": t_feat}, None)
    cam_s = class_activation_map(s_feat, distiller.student.head.weight)
    cam_t = class_activation_map(t_feat, distiller.teacher.head.weight)
    assert term(batch).item() == pytest.approx(5.0 * cat_kd_loss(cam_s, cam_t, 1, True).item())


# Official *_test twins (CAT-KD mdistiller/models/{cifar,imagenet}/*.py): conv_test made
# before the init loop -> N(0, 2/K); after it (VGG) or with no loop -> PyTorch's default.
HEAD_INIT = {
    "resnet8": "normal",  # cifar/resnet.py: kaiming_normal_(fan_out, relu)
    "resnet32x4": "normal",
    "ResNet50": "normal",  # cifar/resnetv2.py
    "wrn_16_2": "normal",  # cifar/wrn.py: normal_(0, sqrt(2 / (k * k * out)))
    "MobileNetV2": "normal",  # cifar/mobilenetv2.py
    "resnet18": "normal",  # imagenet/resnet.py
    "vgg8": "default",  # cifar/vgg.py: conv_test created after _initialize_weights
    "ShuffleV1": "default",  # no init loop
    "ShuffleV2": "default",
    "mobilenet_v1": "default",  # imagenet/mobilenetv2.py (a MobileNetV1): no init loop
}


@pytest.mark.parametrize("name", sorted(HEAD_INIT))
def test_student_head_starts_as_the_official_conv_head(name: str):
    scheme = HEAD_INIT[name]
    student = create_model(name, num_classes=100)
    head = student.get_submodule(student.classifier_name)
    k, c = head.weight.shape
    teacher = create_model(name, num_classes=100)
    teacher_weight = teacher.get_submodule(teacher.classifier_name).weight.detach().clone()
    expected = torch.empty(k, c)
    torch.manual_seed(7)
    if scheme == "normal":
        expected.normal_(0.0, (2.0 / k) ** 0.5)
    else:  # nn.Conv2d(c, k, 1).reset_parameters(): kaiming_uniform_(a=sqrt(5)), fan-in c
        nn.init.kaiming_uniform_(expected.view(k, c, 1, 1), a=5**0.5)
    torch.manual_seed(7)  # the same seed gives the same head
    CATKDLoss().attach(student, teacher)
    assert torch.equal(head.weight, expected)
    assert not head.bias.requires_grad and not head.bias.any()
    assert torch.equal(teacher.get_submodule(teacher.classifier_name).weight, teacher_weight)
    if scheme == "normal":
        assert head.weight.std().item() == pytest.approx((2.0 / k) ** 0.5, rel=0.05)
    else:
        assert head.weight.abs().max().item() <= c**-0.5
        assert head.weight.std().item() == pytest.approx((3 * c) ** -0.5, rel=0.05)


def test_student_init_keep_and_models_without_a_twin_keep_their_head():
    student, teacher = create_model("vgg8", num_classes=10), create_model("vgg8", num_classes=10)
    before = student.classifier.weight.detach().clone()
    CATKDLoss(student_init="keep").attach(student, teacher)  # e.g. a pretrained student
    assert torch.equal(student.classifier.weight, before)
    torch.manual_seed(0)
    tiny = TinyNet()
    before = tiny.head.weight.detach().clone()
    CATKDLoss().attach(tiny, TinyNet())  # a user model: no official twin
    assert torch.equal(tiny.head.weight, before)
    with pytest.raises(ValueError, match="student_init"):
        CATKDLoss(student_init="zoo")
