"""Levenberg-Marquardt (`optim.optimizer=lm`): the normal equations by both routes against each
other and against autograd, the step's damping and convergence, and runs through the trainer
(fit, refusals, resume) on the CPU in float64."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import Recorder
from torch import nn

from kan_engine import least_squares, optim, presets_io
from kan_engine.config import RunConfig, apply_overrides
from kan_engine.errors import ConfigError
from kan_engine.events import Event, StepMetrics
from kan_engine.kan import KANLinear
from kan_engine.levenberg_marquardt import LevenbergMarquardt
from kan_engine.trainer import Trainer

F64 = torch.float64  # the fits here are exact to rounding: in float64


def kan(widths: list[int], grid: int = 5, scale_base: float = 0.5, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers = [
        KANLinear(a, b, grid_size=grid, scale_base=scale_base, init="noise")
        for a, b in zip(widths, widths[1:], strict=False)
    ]
    return nn.Sequential(*layers).double()


def data(n: int, inputs: int, outputs: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(n, inputs, generator=generator, dtype=F64) * 2 - 1
    return x, torch.rand(n, outputs, generator=generator, dtype=F64)


@pytest.mark.parametrize("grid", [3, 12])
def test_both_routes_give_the_same_normal_equations_with_pruned_edges_and_two_outputs(
    grid: int,
) -> None:
    net = kan([2, 3, 2], grid=grid)
    net[0].set_edge_mask(torch.tensor([[1, 0], [1, 1], [0, 1]], dtype=torch.bool))
    x, y = data(50, 2, 2)
    params = list(net.parameters())[::-1]  # any order: the step vector follows it
    owners = least_squares._kan_owners(net)
    assert owners  # KAN layers only: the sensitivity route
    fast = least_squares._by_sensitivities(net, owners, params, x, y)
    general = least_squares._per_sample(net, params, x, y)
    assert torch.allclose(fast.jtj, general.jtj, rtol=0, atol=1e-13)
    assert torch.allclose(fast.jtr, general.jtr, rtol=0, atol=1e-13)
    assert torch.allclose(fast.errors, general.errors, rtol=0, atol=1e-13)
    # and Jᵀr is half the gradient of the mean squared error, by autograd
    loss = nn.functional.mse_loss(net(x), y)
    grads = torch.autograd.grad(loss, params)
    assert torch.allclose(2 * fast.jtr, torch.cat([g.reshape(-1) for g in grads]), atol=1e-14)
    assert fast.loss.item() == pytest.approx(loss.detach().item(), rel=1e-12)


def test_a_model_with_other_parameters_takes_the_per_sample_route() -> None:
    net = nn.Sequential(KANLinear(2, 3, grid_size=4), nn.Linear(3, 1)).double()
    assert least_squares._kan_owners(net) == {}
    x, y = data(20, 2, 1)
    equations = least_squares.normal_equations(net, list(net.parameters()), x, y)
    size = sum(p.numel() for p in net.parameters())
    assert equations.jtj.shape == (size, size)
    assert torch.linalg.eigvalsh(equations.jtj).min() > -1e-12  # JᵀJ is positive semi-definite


class Fit:
    """An LM fit of `net` to (x, y), counting the Jacobians it computes."""

    def __init__(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        self.net, self.x, self.y = net, x, y
        self.params = list(net.parameters())
        self.optimizer = LevenbergMarquardt([{"params": self.params, "name": "kan"}])
        self.jacobians = 0

    def system(self) -> least_squares.NormalEquations:
        self.jacobians += 1
        return least_squares.normal_equations(self.net, self.params, self.x, self.y)

    def objective(self) -> torch.Tensor:
        with torch.no_grad():
            return nn.functional.mse_loss(self.net(self.x), self.y)

    def steps(self, n: int) -> list[float]:
        losses = []
        for _ in range(n):
            self.optimizer.step(self.system, self.objective)
            losses.append(self.objective().item())
        return losses


def test_it_recovers_a_teacher_layer_exactly_and_then_stops_computing() -> None:
    # one layer is linear in its weights: Gauss-Newton's model is exact, the fit must be too
    teacher, student = kan([2, 3], seed=3), kan([2, 3], seed=4)
    x, _ = data(300, 2, 3)
    with torch.no_grad():
        y = teacher(x)
    fit = Fit(student, x, y)
    losses = fit.steps(40)
    assert all(b <= a for a, b in zip(losses, losses[1:], strict=False))  # never worse
    assert losses[-1] < 1e-26, losses[-1]  # the teacher's function, to rounding
    assert fit.jacobians < 40  # converged: the last steps computed nothing
    idle = fit.jacobians
    fit.steps(3)
    assert fit.jacobians == idle
    optim.forget_state(fit.optimizer)  # what the trainer does when it refits a grid
    fit.steps(1)
    assert fit.jacobians == idle + 1


def test_a_refused_step_leaves_the_weights_as_they_were() -> None:
    net = kan([1, 1])
    x, y = data(40, 1, 1)
    fit = Fit(net, x, y)
    before = [p.detach().clone() for p in fit.params]
    fit.objective = lambda: torch.tensor(float("inf"), dtype=F64)  # type: ignore[method-assign]
    fit.steps(1)  # every try is refused: nothing lowers an infinite objective... nor is finite
    assert all(torch.equal(a, b) for a, b in zip(before, fit.params, strict=True))
    state = fit.optimizer.state[fit.params[0]]
    assert state["converged"] and state["damping"] > 1e3


FUNCTION: dict[str, Any] = {
    "optim.optimizer": "lm",
    "data.function_train": 300,
    "data.function_test": 300,
    "data.test_every_epoch": False,
    "train.epochs": 2,
    "train.steps_per_epoch": 15,
    "train.log_every": 1,
    "kan.grid_schedule": [3, 8],
    "kan.grid_stage_epochs": 1,
}


def function_config(**overrides: Any) -> RunConfig:
    preset = presets_io.resolve("function")[0]
    return apply_overrides(preset, {**FUNCTION, **overrides}, source="test")


def test_the_function_preset_with_lm_fits_through_the_trainer(runs_dir: Path) -> None:
    recorder = Recorder()
    trainer = Trainer(function_config(), sink=recorder, out_dir=runs_dir)
    summary = trainer.run()
    assert isinstance(trainer.optimizer, LevenbergMarquardt)
    assert summary["test_rmse"] < 5e-3, summary["test_rmse"]  # targets' std ~ 1.6
    assert not [e for e in recorder.events if type(e).__name__ == "GradNormWarning"]


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        (
            {"data.dataset": "digits", "data.task": "auto", "model.width": [64, 2, 10]},
            "regression runs only",
        ),
        ({"kan.reg_weight": 0.01}, "kan.reg_weight"),
        ({"train.huber_delta": 0.5}, "train.huber_delta"),
        ({"model.width": [2, 40, 40, 1]}, "up to 4,096 parameters"),
        ({"train.batch_size": 100}, "the whole training split"),
    ],
)
def test_lm_refuses_what_it_cannot_fit_before_training(
    runs_dir: Path, overrides: dict[str, Any], reason: str
) -> None:
    config = function_config(**overrides)
    with pytest.raises(ConfigError) as error:
        Trainer(config, sink=Recorder(), out_dir=runs_dir).run()
    assert error.value.key == "optim.optimizer" and reason in error.value.reason
    assert not runs_dir.exists()  # no run folder left, nor the folder made for it


@pytest.mark.parametrize("optimizer", ["lm", "lbfgs"])
def test_the_weight_average_follows_full_batch_steps(runs_dir: Path, optimizer: str) -> None:
    """Evaluation and best.pt use the average when train.ema_decay is set; the full-batch
    optimizers' steps once left it at the weights of the last grid update."""
    config = function_config(
        **{"optim.optimizer": optimizer, "optim.lbfgs_iters": 3, "train.ema_decay": 0.5,
           "kan.grid_schedule": [], "kan.grid_size": 5, "kan.grid_update_every": 0}
    )  # fmt: skip
    trainer = Trainer(config, sink=Recorder(), out_dir=runs_dir)
    trainer.setup()
    start = {k: v.clone() for k, v in trainer.ema.model_state().items()}
    trainer.run()
    averaged, trained = trainer.ema.model_state(), trainer.model.state_dict()
    moved = [k for k in start if not torch.equal(start[k], averaged[k])]
    assert "kan.0.spline_weight" in moved  # the average moved with the fit...
    spline = "kan.0.spline_weight"
    assert torch.allclose(averaged[spline], trained[spline], rtol=0, atol=1e-3)  # ...to it


def test_an_lm_fit_stopped_mid_stage_resumes_to_the_same_weights(runs_dir: Path) -> None:
    whole = Trainer(function_config(), sink=Recorder(), out_dir=runs_dir / "whole")
    whole.run()
    recorder = Recorder()
    first = Trainer(function_config(), sink=recorder, out_dir=runs_dir / "parts")

    def stop(event: Event) -> None:  # epoch 2 (grid 8), its fourth step
        if isinstance(event, StepMetrics) and event.global_step == 19:
            first.stop()

    recorder.hooks.append(stop)
    assert first.run()["status"] == "stopped"
    resumed = Trainer.from_run_dir(first.run_dir, sink=Recorder())
    resumed.run()
    for name, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
