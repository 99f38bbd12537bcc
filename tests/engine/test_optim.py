import itertools
from pathlib import Path

import pytest
import torch

from kdforge import Distiller
from kdforge.config import load_config
from kdforge.engine.build import build_optimizer
from kdforge.engine.distributed import DistInfo
from kdforge.engine.optim import lr_factor, make_optimizer, make_scheduler, parameter_groups
from kdforge.losses import CAKDLoss
from kdforge.models import create_model
from kdforge.models.vit import VisionTransformer


def test_multistep_matches_mdistiller_epoch_decay():
    # mdistiller: lr = base * 0.1 ** sum(epoch_1based > stages); stages 150/180/210.
    steps_per_epoch = 3
    for epoch0 in range(240):
        expected = 0.1 ** sum(epoch0 + 1 > s for s in (150, 180, 210))
        got = lr_factor(
            epoch0 * steps_per_epoch + 1, steps_per_epoch, 240, "multistep", (150, 180, 210), 0.1
        )
        assert got == pytest.approx(expected)


def test_cosine_with_warmup_endpoints_and_monotonic():
    kw = dict(
        steps_per_epoch=10,
        epochs=10,
        name="cosine",
        min_lr_ratio=0.01,
        warmup_epochs=2,
        warmup_factor=0.1,
    )
    assert lr_factor(0, **kw) == pytest.approx(0.1)
    assert lr_factor(10, **kw) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(20, **kw) == pytest.approx(1.0)
    values = [lr_factor(s, **kw) for s in range(20, 100)]
    assert all(a >= b for a, b in itertools.pairwise(values))
    assert lr_factor(100, **kw) == pytest.approx(0.01)


def test_scheduler_steps_per_optimizer_step_and_restores():
    params = [torch.nn.Parameter(torch.zeros(1))]
    opt = make_optimizer(params, "sgd", lr=0.5, weight_decay=0.0)
    sched = make_scheduler(
        opt, steps_per_epoch=2, epochs=4, name="multistep", milestones=[1, 3], gamma=0.1
    )
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.5, 0.5, 0.05, 0.05, 0.05, 0.05, 0.005, 0.005])
    opt2 = make_optimizer(params, "sgd", lr=0.5, weight_decay=0.0)
    sched2 = make_scheduler(
        opt2, steps_per_epoch=2, epochs=4, name="multistep", milestones=[1, 3], gamma=0.1
    )
    sched2.load_state_dict(sched.state_dict())
    opt2.load_state_dict(opt.state_dict())
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.005)


def test_bad_names_fail_early():
    params = [torch.nn.Parameter(torch.zeros(1))]
    with pytest.raises(ValueError, match="optim.name"):
        make_optimizer(params, "adam_typo")
    opt = make_optimizer(params, "adamw", lr=1e-3)
    assert isinstance(opt, torch.optim.AdamW)
    with pytest.raises(ValueError, match="schedule.name"):
        make_scheduler(opt, 1, 1, name="poly_typo")


def test_parameter_groups_split_norm_and_bias_settings():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 2)
    )
    groups = parameter_groups(
        model,
        lr=0.01,
        norm_weight_decay=0.0,
        bias_lr_mult=2.0,
        bias_weight_decay=0.0,
        exclude=[id(model[2].weight)],
    )
    assert [len(g["params"]) for g in groups] == [1, 2, 2]  # conv weight; conv+fc bias; BN
    other, bias, norm = groups
    assert other["params"][0] is model[0].weight and "lr" not in other
    assert bias["lr"] == pytest.approx(0.02) and bias["weight_decay"] == 0.0
    assert {id(p) for p in norm["params"]} == {id(model[1].weight), id(model[1].bias)}
    assert norm["weight_decay"] == 0.0
    optimizer = make_optimizer(groups, "sgd", lr=0.01, weight_decay=1e-4)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [1e-4, 0.0, 0.0]
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.01, 0.02, 0.01])


def test_warmup_iters_override_warmup_epochs():
    kw = dict(
        steps_per_epoch=100,
        epochs=12,
        name="multistep",
        milestones=(8, 11),
        warmup_epochs=3,
        warmup_factor=0.001,
        warmup_iters=500,
    )
    assert lr_factor(0, **kw) == pytest.approx(0.001)
    assert lr_factor(250, **kw) == pytest.approx(0.001 + 0.999 * 0.5)
    assert lr_factor(500, **kw) == pytest.approx(1.0)
    assert lr_factor(800, **kw) == pytest.approx(0.1)


def test_poly_schedule_matches_mmseg_polylr():
    # mmseg PolyLR(eta_min=1e-4, power=0.9) over 80k iterations with base lr 0.01
    kw = dict(
        steps_per_epoch=186, epochs=1, name="poly", min_lr_ratio=1e-4 / 0.01, power=0.9, iters=80000
    )
    for step in (0, 1000, 40000, 79999, 80000):
        expected = (0.01 - 1e-4) * (1 - step / 80000) ** 0.9 + 1e-4
        assert 0.01 * lr_factor(step, **kw) == pytest.approx(expected)


def test_constant_warmup_holds_the_factor_like_mmdet_constantlr():
    # mmdet FCOS: ConstantLR(factor=1/3, end=500), then MultiStepLR
    kw = dict(
        steps_per_epoch=100,
        epochs=12,
        milestones=(8, 11),
        warmup_factor=1 / 3,
        warmup_iters=500,
        warmup_mode="constant",
    )
    assert lr_factor(0, **kw) == lr_factor(499, **kw) == pytest.approx(1 / 3)
    assert lr_factor(500, **kw) == 1.0
    with pytest.raises(ValueError, match="warmup_mode"):
        lr_factor(0, 100, 12, warmup_mode="cosine")


def _settings(groups: list[dict], model: torch.nn.Module) -> dict[str, tuple]:
    """``{parameter name: (lr or None, weight_decay or None)}`` of each grouped parameter."""
    of = {id(p): (g.get("lr"), g.get("weight_decay")) for g in groups for p in g["params"]}
    return {name: of[id(p)] for name, p in model.named_parameters() if id(p) in of}


def test_parameter_groups_follow_mmengine_paramwise_rules():
    # mmengine DefaultOptimWrapperConstructor.add_params: bias_lr_mult skips norm biases;
    # decay: norm_decay_mult, else bias_decay_mult (norm biases too), else dwconv_decay_mult
    model = torch.nn.Sequential(
        torch.nn.Conv2d(4, 4, 3),  # 0: plain conv with bias
        torch.nn.GroupNorm(2, 4),  # 1
        torch.nn.Conv2d(4, 4, 3, groups=4),  # 2: depthwise, with bias
        torch.nn.LayerNorm(4),  # 3
        torch.nn.Linear(4, 2),  # 4
    )
    lr, mmdet_fcos = 0.01, {"bias_lr_mult": 2.0, "bias_weight_decay": 0.0}
    got = _settings(parameter_groups(model, lr, **mmdet_fcos), model)
    assert got == {
        "0.weight": (None, None), "0.bias": (0.02, 0.0),
        "1.weight": (None, None), "1.bias": (None, 0.0),  # norm bias: lr x1, bias decay
        "2.weight": (None, None), "2.bias": (0.02, 0.0),
        "3.weight": (None, None), "3.bias": (None, 0.0),
        "4.weight": (None, None), "4.bias": (0.02, 0.0),
    }  # fmt: skip
    got = _settings(
        parameter_groups(model, lr, 1e-5, **mmdet_fcos, dwconv_weight_decay=1e-6), model
    )
    assert got == {
        "0.weight": (None, None), "0.bias": (0.02, 0.0),
        "1.weight": (None, 1e-5), "1.bias": (None, 1e-5),  # norm decay comes first
        "2.weight": (None, 1e-6), "2.bias": (0.02, 0.0),  # bias decay before dwconv decay
        "3.weight": (None, 1e-5), "3.bias": (None, 1e-5),
        "4.weight": (None, None), "4.bias": (0.02, 0.0),
    }  # fmt: skip
    got = _settings(parameter_groups(model, lr, dwconv_weight_decay=1e-6), model)
    assert got["2.weight"] == got["2.bias"] == (None, 1e-6)
    assert set(got.values()) == {(None, None), (None, 1e-6)}
    assert len(parameter_groups(model, lr)) == 1  # nothing set: one group, optimizer defaults


FCOS_RECIPES = [
    "coco/crosskd/fcos_r101_fcos_r50_ms-2x.yaml",
    "coco/crosskd_pkd/fcos_r101_fcos_r50_ms-2x.yaml",
    "coco/fcos/fcos_r50_fpn_ms-2x.yaml",
    "coco/fcos/fcos_r50_fpn_1x.yaml",
]


def test_fcos_recipes_train_groupnorm_biases_at_lr_x1_without_decay():
    # mmdetection FCOS paramwise_cfg=dict(bias_lr_mult=2., bias_decay_mult=0.): mmengine
    # leaves normalisation biases out of bias_lr_mult, but bias_decay_mult reaches them
    configs = Path(__file__).resolve().parents[2] / "kdforge" / "recipes"
    cfg = load_config(configs / FCOS_RECIPES[0])
    kwargs = {k: v for k, v in cfg.student.kwargs.items() if k != "backbone_pretrained"}
    student = create_model(cfg.student.name, **kwargs)
    norms = [m for m in student.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert len(norms) == 8  # 4 stacked convs x (cls, reg) towers, GN(32)
    for recipe in FCOS_RECIPES:
        optim = load_config(configs / recipe).optim
        assert (optim.bias_lr_mult, optim.bias_weight_decay, optim.norm_weight_decay) == (
            2.0, 0.0, None
        )  # fmt: skip
        groups = parameter_groups(
            student, optim.lr, optim.norm_weight_decay, optim.bias_lr_mult, optim.bias_weight_decay
        )
        got = _settings(groups, student)
        for name, module in student.named_modules():
            if isinstance(module, torch.nn.GroupNorm):
                assert got[f"{name}.bias"] == (None, 0.0), name  # lr x1, no decay
                assert got[f"{name}.weight"] == (None, None), name  # lr x1, weight_decay
        conv_biases = [n for n in got if n.endswith(".bias") and ".gn." not in n]
        assert conv_biases and all(got[n] == (2 * optim.lr, 0.0) for n in conv_biases)
        assert got["bbox_head.scales.0.scale"] == (None, None)


def test_epoch_warmup_steps_once_per_epoch_like_torchvision_linearlr():
    # CAKD: SequentialLR([LinearLR(start_factor=0.01, total_iters=5), StepLR(30)], [5]),
    # stepped per epoch; kdforge's multistep milestones 35/65/95 are that StepLR
    kw = dict(
        steps_per_epoch=7, epochs=120, milestones=(35, 65, 95), warmup_epochs=5,
        warmup_factor=0.01, warmup_by="epoch",
    )  # fmt: skip
    expected = [0.01, 0.208, 0.406, 0.604, 0.802, 1.0]
    for epoch, factor in enumerate(expected):
        for step in range(epoch * 7, epoch * 7 + 7):  # constant within the epoch
            assert lr_factor(step, **kw) == pytest.approx(factor)
    assert lr_factor(34 * 7 + 6, **kw) == 1.0 and lr_factor(35 * 7, **kw) == pytest.approx(0.1)
    assert lr_factor(7, **{**kw, "warmup_mode": "constant"}) == pytest.approx(0.01)
    assert lr_factor(7, **{**kw, "warmup_by": "step"}) == pytest.approx(0.01 + 0.99 / 5)
    assert lr_factor(8, **{**kw, "warmup_by": "step"}) > lr_factor(8, **kw)  # per step: ramps
    with pytest.raises(ValueError, match="warmup_by"):
        lr_factor(0, 1, 1, warmup_by="iteration")
    with pytest.raises(ValueError, match="warmup_iters"):
        lr_factor(0, 1, 1, warmup_by="epoch", warmup_iters=500)


def test_cakd_recipes_warm_up_student_and_discriminator_per_epoch():
    torch.manual_seed(0)
    teacher = VisionTransformer(32, 4, 2, 2, 64, 128, num_classes=10)
    student = create_model("resnet8", 10)
    distiller = Distiller(teacher, student, {"cakd": CAKDLoss()}, torch.zeros(2, 3, 32, 32))
    recipes = Path(__file__).resolve().parents[2] / "kdforge" / "recipes" / "imagenet" / "cakd"
    for recipe in ("vit_b16_resnet50.yaml", "vit_ti16_resnet18.yaml"):
        cfg = load_config(recipes / recipe)
        assert cfg.schedule.warmup_by == "epoch"
        built = build_optimizer(cfg, distiller, DistInfo(), steps_per_epoch=3)
        main, aux = built.optimizer, built.auxiliary
        assert aux is not None  # the discriminator's own SGD at 0.01 x lr
        seen = []
        for _ in range(6 * 3):
            seen.append((main.param_groups[0]["lr"], aux.param_groups[0]["lr"]))
            main.step(), aux.step()
            built.scheduler.step(), built.auxiliary_scheduler.step()
        for epoch, factor in enumerate([0.01, 0.208, 0.406, 0.604, 0.802, 1.0]):
            for lr, aux_lr in seen[epoch * 3 : epoch * 3 + 3]:
                assert lr == pytest.approx(0.1 * factor)
                assert aux_lr == pytest.approx(0.001 * factor)


def test_lr_mults_by_name_part_as_mmengine_custom_keys():
    # mmengine custom_keys: the longest key contained in the name wins, then alphabetical;
    # a matched parameter keeps the optimizer's decay and skips bias_lr_mult
    model = torch.nn.ModuleDict(
        {
            "backbone": torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2)),
            "backbone_neck": torch.nn.Linear(2, 2),
            "head": torch.nn.Linear(2, 2),
        }
    )
    mults = {"backbone": 0.1, "backbone_neck": 0.5}
    got = _settings(parameter_groups(model, 1.0, 0.0, 2.0, lr_mults=mults), model)
    assert got == {
        "backbone.0.weight": (0.1, None), "backbone.0.bias": (0.1, None),
        "backbone.1.weight": (0.1, None), "backbone.1.bias": (0.1, None),
        "backbone_neck.weight": (0.5, None), "backbone_neck.bias": (0.5, None),
        "head.weight": (None, None), "head.bias": (2.0, None),
    }  # fmt: skip
