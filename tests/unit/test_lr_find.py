"""The LR range test: on problems whose stable LR range is known, and on a real config.

Linear least squares with plain gradient descent is stable exactly for lr < 2/L, L the largest
eigenvalue of the Hessian X^T X / n. The suggestion must lie below 2/L (stable), within a factor
of 40 of it, and training at the suggested LR must actually be fast: a few hundred steps remove
more than 99 % of the excess loss, while 2.5/L blows up.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kan_engine.config import RunConfig
from kan_engine.lr_find import find_lr, range_test, suggest


def regression(lam_max: float, n: int = 512, dim: int = 8, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Inputs whose covariance has eigenvalues spread log-evenly from lam_max/10 to lam_max, and
    noisy linear targets."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g))
    scales = torch.logspace(math.log10(lam_max / 10), math.log10(lam_max), dim).sqrt()
    x = torch.randn(n, dim, generator=g)
    x = x / x.std(0) * scales @ q.t()  # (n, dim)
    y = x @ torch.randn(dim, generator=g) + 0.1 * torch.randn(n, generator=g)  # (n,)
    return x, y


def full_batches(x: Tensor, y: Tensor) -> Iterator[tuple[Tensor, Tensor]]:
    while True:
        yield x, y


def mse(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    x, y = batch
    return 0.5 * F.mse_loss(model(x).squeeze(1), y)


@pytest.mark.parametrize("lam_max", [0.5, 4.0, 40.0])
def test_suggestion_lies_in_the_stable_fast_range_of_least_squares(lam_max: float) -> None:
    x, y = regression(lam_max)
    hessian_max = float(torch.linalg.eigvalsh(x.t() @ x / len(x)).max())
    model = nn.Linear(x.shape[1], 1, bias=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    result = range_test(model, opt, full_batches(x, y), mse, start=1e-6, end=1e3, steps=300)
    assert result.suggestion is not None
    assert 0.05 / hessian_max <= result.suggestion < 2 / hessian_max, result.suggestion
    assert "above 4x" in result.stop_reason  # it diverged past 2/L and stopped there
    assert result.lrs[-1] > 2 / hessian_max
    optimum = float(mse(Solved(torch.linalg.lstsq(x, y.unsqueeze(1)).solution), (x, y)))
    start = float(mse(Solved(torch.zeros(x.shape[1], 1)), (x, y))) - optimum
    assert gradient_descent(x, y, result.suggestion) - optimum < 0.01 * start
    blown = gradient_descent(x, y, 2.5 / hessian_max)
    assert not math.isfinite(blown) or blown - optimum > start


class Solved(nn.Module):
    def __init__(self, weight: Tensor) -> None:
        super().__init__()
        self.weight = weight  # (dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.weight


def gradient_descent(x: Tensor, y: Tensor, lr: float, steps: int = 300) -> float:
    """Final loss of full-batch gradient descent from zero at a fixed LR."""
    model = nn.Linear(x.shape[1], 1, bias=False)
    nn.init.zeros_(model.weight)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        mse(model, (x, y)).backward()
        opt.step()
    return float(mse(model, (x, y)).detach())


def test_model_optimizer_and_generators_are_restored() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, labels = torch.randn(64, 4), torch.randint(0, 3, (64,))
    F.cross_entropy(model(x), labels).backward()  # some optimizer state to restore
    opt.step()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    moments = {k: v.clone() for k, v in opt.state[model[0].weight].items()}
    rng = torch.get_rng_state()
    model.eval()

    def ce(m: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        return F.cross_entropy(m(batch[0]), batch[1])

    result = range_test(model, opt, full_batches(x, labels), ce, steps=50)
    assert len(result.lrs) > 10
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    for key, value in opt.state[model[0].weight].items():
        assert torch.equal(value, moments[key]), key
    assert opt.param_groups[0]["lr"] == 1e-3
    assert not model.training
    assert torch.equal(torch.get_rng_state(), rng)


def test_restored_even_when_the_loss_function_raises() -> None:
    model = nn.Linear(3, 1)
    before = model.weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    calls = 0

    def flaky(m: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        nonlocal calls
        calls += 1
        if calls == 8:
            raise RuntimeError("boom")
        return m(batch[0]).square().mean()

    with pytest.raises(RuntimeError, match="boom"):
        range_test(model, opt, full_batches(torch.randn(8, 3), torch.zeros(8)), flaky, steps=20)
    assert torch.equal(model.weight, before)


RISE = 1e-3  # where the loss of `recorded_shape` starts to rise


def recorded_shape(lr: float, noise: float) -> float:
    """The shape of Rapid KAN lite's sweep on Fashion-MNIST (see kan_engine/lr_find.py): flat at
    2.3 up to 3e-6, a fast fall to 0.6 by 2e-5 (Adam learns already there), a long plateau, then
    a rise from RISE on that reaches about 4 at 1e-2."""
    x = math.log10(lr)
    fall = 1.7 / (1 + math.exp(-6 * (x + 5.1)))
    rise = 0.6 * (10 ** max(0.0, x - math.log10(RISE)) - 1)
    return 2.3 - fall + rise + noise


def test_suggestion_on_a_recorded_shape_is_below_the_rise_not_at_the_first_fall() -> None:
    """The steepest fall (the rule before, 1.6e-5 on the real sweep) is where learning starts;
    the suggestion must sit below where the loss rises, within a factor 20 of it."""
    g = torch.Generator().manual_seed(0)
    model = nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def loss(m: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        noise = 0.15 * float(torch.randn(1, generator=g))
        return m.weight.sum() * 0 + recorded_shape(opt.param_groups[0]["lr"], noise)

    x = torch.zeros(1, 1)
    result = range_test(model, opt, full_batches(x, x), loss, start=1e-7, end=10, steps=200)
    assert "above 4x" in result.stop_reason
    assert result.suggestion is not None and RISE / 20 <= result.suggestion < RISE / 2
    assert result.best_lr is not None and result.suggestion == result.best_lr / 10


def test_no_suggestion_without_a_fall() -> None:
    lrs = [10 ** (-7 + 8 * i / 199) for i in range(200)]
    assert suggest(lrs, [1.0] * 200) is None  # flat
    assert suggest(lrs, [1.0 + i / 100 for i in range(200)]) is None  # only rises
    assert suggest(lrs, [1.0 - i / 10_000 for i in range(200)]) is None  # falls 2 %: noise
    early = [1.0 if i != 5 else 0.1 for i in range(200)]
    assert suggest(lrs, early) is None  # lowest while the average still settles
    falls = [1.0 - i / 400 for i in range(150)] + [math.inf]  # stopped by a non-finite loss
    assert suggest(lrs[:151], falls) == pytest.approx(lrs[149] / 10)


def test_find_lr_on_a_config(tiny_config: Callable[..., RunConfig]) -> None:
    seen: list[float] = []
    result = find_lr(tiny_config(), steps=60, progress=lambda step, lr, loss: seen.append(lr))
    assert seen == result.lrs[: len(seen)] and len(seen) >= 30
    assert result.suggestion is not None and 1e-7 <= result.suggestion <= 10
    assert min(result.smoothed) < result.smoothed[0]  # the loss fell somewhere


def test_lr_find_command_prints_the_curve_and_the_suggestion(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from typer.testing import CliRunner

    from kan_tui.cli import app

    monkeypatch.setenv("COLUMNS", "72")
    args = ["lr-find", "--dataset", "digits", "--model", "kan", "--device", "cpu", "--steps", "40"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[-1].startswith("suggested lr: ")
    assert 1e-7 <= float(lines[-1].split(": ")[1]) <= 10
    assert "LR range test: kan on digits" in result.stdout
    assert max(len(line) for line in lines) <= 72  # fits the terminal
    assert "\x1b[" not in result.stdout  # no colours in a pipe
    bad = CliRunner().invoke(app, ["lr-find", "--start", "1", "--end", "0.1"])
    assert bad.exit_code == 2 and "need 0 < start < end" in bad.stderr
