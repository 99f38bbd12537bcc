import itertools

import pytest
import torch

from kdforge.engine.optim import lr_factor, make_optimizer, make_scheduler, parameter_groups


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
