"""Schedules, parameter groups and optimizers (no training)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kan_engine import optim
from kan_engine.config import RunConfig, apply_overrides

SPE = 10  # steps per epoch


def config(**overrides: object) -> RunConfig:
    return apply_overrides(RunConfig(), {"train.epochs": 20, **overrides}, source="test")


def factors(cfg: RunConfig) -> list[float]:
    total = cfg.train.epochs * SPE
    return [optim.lr_factor(cfg.schedule, cfg.train.epochs, SPE, s) for s in range(total)]


@pytest.mark.parametrize("name", ["cosine", "onecycle", "step", "constant"])
def test_warmup_rises_linearly_from_one_hundredth(name: str) -> None:
    cfg = config(**{"schedule.name": name, "schedule.warmup_epochs": 3})
    f = factors(cfg)[: 3 * SPE + 1]
    assert f[0] == pytest.approx(0.01)
    assert f[3 * SPE] == pytest.approx(1.0)
    steps = [b - a for a, b in zip(f[:-1], f[1:], strict=True)]
    assert all(d == pytest.approx(0.99 / (3 * SPE)) for d in steps)


def test_cosine_falls_monotonically_to_the_min_ratio_at_the_last_step() -> None:
    cfg = config(**{"schedule.warmup_epochs": 2, "schedule.min_lr_ratio": 0.05})
    after = factors(cfg)[2 * SPE :]
    assert after[-1] == pytest.approx(0.05)
    assert all(b <= a for a, b in zip(after[:-1], after[1:], strict=True))
    middle = after[(len(after) - 1) // 2]
    assert middle == pytest.approx(0.05 + 0.95 * 0.5, abs=0.02)  # half-way down the cosine


def test_step_decays_by_gamma_every_step_epochs() -> None:
    cfg = config(
        **{"schedule.name": "step", "schedule.warmup_epochs": 0, "schedule.step_epochs": 5}
    )
    f = factors(cfg)
    assert f[4 * SPE] == 1.0
    assert f[5 * SPE] == pytest.approx(0.1)
    assert f[10 * SPE] == pytest.approx(0.01)


def test_constant_and_onecycle_shapes() -> None:
    constant = factors(config(**{"schedule.name": "constant", "schedule.warmup_epochs": 1}))
    assert set(constant[SPE:]) == {1.0}
    onecycle = factors(config(**{"schedule.name": "onecycle", "schedule.warmup_epochs": 0}))
    peak = onecycle.index(max(onecycle))
    assert peak == round(0.3 * len(onecycle))  # rises over 30 % without a warm-up
    assert onecycle[-1] == pytest.approx(0.01 * 0.01)  # ends below the cosine floor


def test_group_lrs_and_curve_apply_the_multipliers() -> None:
    cfg = config(**{"optim.lr": 0.002, "optim.lr_mult.kan": 4.0})
    lrs = optim.group_lrs(cfg, 0.5)
    assert lrs == pytest.approx({"cnn": 0.001, "kan": 0.004, "other": 0.0015})
    curve = optim.lr_curve(cfg, steps_per_epoch=50, points=100)
    assert set(curve) == {"cnn", "kan", "other"}
    assert len(curve["kan"]) == 100
    assert curve["kan"][0][0] == 0.0 and curve["kan"][-1][0] == pytest.approx(20 - 1 / 50)
    for (e1, cnn), (e2, kan) in zip(curve["cnn"], curve["kan"], strict=True):
        assert e1 == e2 and kan == pytest.approx(4 * cnn)


def groups() -> tuple[nn.Module, dict[str, list[nn.Parameter]]]:
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    conv, bn, kan = model[0], model[1], model[2]
    other = [conv.bias, bn.weight, bn.bias, kan.bias]
    return model, {"cnn": [conv.weight], "kan": [kan.weight], "other": other}


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd"])
def test_weight_decay_skips_the_other_group(name: str) -> None:
    cfg = config(**{"optim.optimizer": name, "optim.weight_decay": 0.05})
    _, params = groups()
    opt = optim.build_optimizer(cfg, params, torch.device("cpu"))
    decay = {g["name"]: g["weight_decay"] for g in opt.param_groups}
    assert decay == {"cnn": 0.05, "kan": 0.05, "other": 0.0}
    assert sum(len(g["params"]) for g in opt.param_groups) == 6


def test_empty_groups_are_left_out() -> None:
    _, params = groups()
    params["cnn"] = []
    opt = optim.build_optimizer(config(), params, torch.device("cpu"))
    assert [g["name"] for g in opt.param_groups] == ["kan", "other"]


def test_schedule_sets_group_lrs_per_step_and_round_trips() -> None:
    cfg = config(**{"schedule.warmup_epochs": 1})
    _, params = groups()
    opt = optim.build_optimizer(cfg, params, torch.device("cpu"))
    schedule = optim.Schedule(opt, cfg, SPE)
    assert {g["name"]: g["lr"] for g in opt.param_groups} == pytest.approx(
        optim.group_lrs(cfg, 0.01)
    )
    schedule.scale = 0.5
    lrs = schedule.apply(SPE)  # end of warm-up: factor 1
    assert lrs["kan"] == pytest.approx(cfg.optim.lr * 3 * 0.5)
    again = optim.Schedule(opt, cfg, SPE)
    again.load_state_dict(schedule.state_dict())
    assert again.lrs() == pytest.approx(lrs)


def test_a_warmup_as_long_as_the_run_shrinks_to_a_tenth_of_it() -> None:
    cfg = config(**{"schedule.warmup_epochs": 5, "train.epochs": 3})
    steps = [optim.lr_factor(cfg.schedule, 3, 10, step) for step in range(30)]
    assert optim.warmup_capped(cfg.schedule, 3)
    assert steps[3] == max(steps)  # peak after 10 % of the 30 steps, then decay
    assert steps[-1] < steps[3] / 10


def test_device_lrs_are_filled_in_place_and_checkpoints_get_floats() -> None:
    """What a CUDA graph needs (LR tensors that keep their identity) on the CPU's terms."""
    cfg = config(**{"schedule.warmup_epochs": 2})
    params = {"cnn": [nn.Parameter(torch.zeros(3))], "kan": [nn.Parameter(torch.zeros(2))]}
    opt = optim.build_optimizer(cfg, params, torch.device("cpu"), capturable=False)
    schedule = optim.Schedule(opt, cfg, SPE, lr_device=torch.device("cpu"))
    before = [group["lr"] for group in opt.param_groups]
    assert all(isinstance(lr, torch.Tensor) for lr in before)
    lrs = schedule.apply(7)
    for group, tensor in zip(opt.param_groups, before, strict=True):
        assert group["lr"] is tensor
        assert float(tensor) == pytest.approx(lrs[group["name"]])
    saved = optim.portable_state(opt)
    assert all(type(group["lr"]) is float for group in saved["param_groups"])
    assert all(isinstance(group["lr"], torch.Tensor) for group in opt.param_groups)


def test_loading_keeps_this_optimizers_runtime_flags() -> None:
    """A state saved with other runtime flags (a capturable CUDA-graph optimizer) loads with this
    optimizer's own: torch's load_state_dict would take the file's flags."""
    params = {"kan": [nn.Parameter(torch.ones(4))]}
    opt = optim.build_optimizer(config(), params, torch.device("cpu"))
    params["kan"][0].grad = torch.ones(4)
    opt.step()
    saved = optim.portable_state(opt)
    fresh = optim.build_optimizer(config(), params, torch.device("cpu"))
    own = {key: fresh.param_groups[0][key] for key in ("fused", "capturable")}
    for group in saved["param_groups"]:
        group.update(fused=not own["fused"], capturable=True)
    optim.load_state(fresh, saved)
    assert {key: fresh.param_groups[0][key] for key in own} == own
    state = fresh.state[params["kan"][0]]
    assert state["step"].device.type == "cpu" and float(state["step"]) == 1.0
    fresh.step()
    assert float(fresh.state[params["kan"][0]]["step"]) == 2.0
