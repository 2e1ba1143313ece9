"""The learning-quality recipe: random erasing, label smoothing, the weight average (EMA), the
gradient-norm monitor's judgement, the same-shape MLP control, and a short run that learns and
does not fall off at its end."""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F

from kan_engine import data, models
from kan_engine.config import DataSection
from kan_engine.ema import WeightAverage
from kan_engine.monitor import MIN_HISTORY, GradNormMonitor
from kan_engine.run_setup import evaluate
from kan_engine.trainer import Trainer


@pytest.fixture(scope="module")
def digits() -> data.DataBundle:
    return data.load(DataSection(dataset="digits"), device=torch.device("cpu"), seed=0)


# ---------------------------------------------------------------------- random erasing


def test_erasing_rectangles_have_the_configured_sizes(digits: data.DataBundle) -> None:
    none = digits._erasing(500, 0.0, (1, 0))
    assert (none[:, 1] == none[:, 0]).all()  # empty rectangles: nothing erased
    boxes = digits._erasing(2000, 1.0, (1, 0))
    height, width = digits.input_shape[1:]
    h, w = boxes[:, 1] - boxes[:, 0], boxes[:, 3] - boxes[:, 2]
    assert (h >= 1).all() and (w >= 1).all()
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] <= height).all()
    assert (boxes[:, 2] >= 0).all() and (boxes[:, 3] <= width).all()
    share = (h * w).double().mean() / (height * width)
    assert 0.08 < share < 0.3  # mean of U(0.02, 0.33), bent by rounding and the image's edges
    half = digits._erasing(4000, 0.5, (1, 0))
    erased = (half[:, 1] > half[:, 0]).double().mean()
    assert abs(erased - 0.5) < 0.05
    assert torch.equal(boxes, digits._erasing(2000, 1.0, (1, 0)))  # a function of (seed, epoch)
    assert not torch.equal(boxes, digits._erasing(2000, 1.0, (2, 0)))


def test_erase_sets_exactly_the_rectangle_to_the_mean() -> None:
    x = torch.randn(2, 3, 6, 5) + 10  # no zeros anywhere
    boxes = torch.tensor([[1, 3, 2, 5], [0, 0, 0, 0]])  # rows 1-2, cols 2-4; nothing
    out = data._erase(x, boxes)
    expected = x.clone()
    expected[0, :, 1:3, 2:5] = 0
    assert torch.equal(out, expected)


def test_erasing_replays_on_resume_and_leaves_the_order_alone(digits: data.DataBundle) -> None:
    options = {"shuffle": True, "epoch": 3, "augment": True}
    plain = list(digits.batches("train", 100, **options))
    erased = list(digits.batches("train", 100, erase_prob=1.0, **options))
    resumed = list(digits.batches("train", 100, erase_prob=1.0, skip=4, **options))
    assert all(torch.equal(a[1], b[1]) for a, b in zip(plain, erased, strict=True))
    assert any(not torch.equal(a[0], b[0]) for a, b in zip(plain, erased, strict=True))
    for (xa, ya), (xb, yb) in zip(erased[4:], resumed, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


# ---------------------------------------------------------------------- the weight average


def _tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))


def test_average_follows_the_documented_decay() -> None:
    model = _tiny_model()
    ema = WeightAverage(model, decay=0.9)
    weight = model[0].weight
    expected = weight.detach().clone()
    for t in range(1, 40):
        with torch.no_grad():
            weight.add_(torch.randn_like(weight))
        ema.update()
        d = min(0.9, (1 + t) / (10 + t))
        expected = d * expected + (1 - d) * weight.detach()
    assert torch.allclose(ema.model_state()["0.weight"], expected, atol=1e-5)
    assert not torch.allclose(expected, weight)


def test_applied_swaps_in_the_average_and_back_in_place() -> None:
    model = _tiny_model()
    ema = WeightAverage(model, decay=0.5)
    weight = model[0].weight
    storage = weight.data_ptr()
    with torch.no_grad():
        weight.add_(1.0)
    raw = weight.detach().clone()
    ema.update()
    with ema.applied():
        inside = weight.detach().clone()
        assert weight.data_ptr() == storage
    assert torch.equal(weight, raw)
    assert torch.allclose(inside, ema.model_state()["0.weight"])
    assert not torch.allclose(inside, raw)


def test_batchnorm_statistics_are_averaged_with_the_weights() -> None:
    model = _tiny_model()
    ema = WeightAverage(model, decay=0.5)
    bn = model[1]
    start = bn.running_mean.detach().clone()
    model.train()
    model(torch.randn(64, 3) + 3.0)  # moves the raw running statistics
    raw_mean, raw_var = bn.running_mean.detach().clone(), bn.running_var.detach().clone()
    ema.update()
    averaged = ema.model_state()["1.running_mean"]
    assert not torch.allclose(averaged, raw_mean) and not torch.allclose(averaged, start)
    with ema.applied():
        assert torch.allclose(bn.running_mean, averaged)
    assert torch.equal(bn.running_mean, raw_mean) and torch.equal(bn.running_var, raw_var)
    assert torch.equal(ema.model_state()["1.num_batches_tracked"], bn.num_batches_tracked)


def test_restart_and_state_round_trip() -> None:
    model = _tiny_model()
    ema = WeightAverage(model, decay=0.99)
    with torch.no_grad():
        model[0].weight.add_(5.0)
        model[0].bias.add_(5.0)
    ema.update()
    ema.restart([model[0].weight])
    assert torch.equal(ema.model_state()["0.weight"], model[0].weight)
    assert not torch.equal(ema.model_state()["0.bias"], model[0].bias)  # untouched
    other = WeightAverage(_tiny_model(), decay=0.99)
    other.load_state_dict(ema.state_dict())
    assert int(other.updates) == 1
    for key, value in ema.model_state().items():
        assert torch.equal(other.model_state()[key], value)


# ---------------------------------------------------------------------- gradient-norm monitor


def _healthy_norms(steps: int, seed: int = 0) -> list[tuple[int, float]]:
    """Heavy-tailed norms of a run that fits its batches: log-normal around 0.05 with a slow
    fall, as a late, mostly fit run's norms look (single batches 10-50x the median)."""
    rng = random.Random(seed)
    return [(s, 0.05 * math.exp(rng.gauss(0, 1.0)) * (1 - 0.5 * s / steps)) for s in range(steps)]


def test_a_healthy_run_gets_no_spike_warnings() -> None:
    monitor = GradNormMonitor(clip=1.0)
    warnings = []
    norms = _healthy_norms(20_000)
    for i in range(0, len(norms), 20):  # read back once per logging interval, as the trainer
        warnings += monitor.scan(norms[i : i + 20])
    assert warnings == []


def test_first_steps_are_not_judged_but_an_injected_spike_is_at_once() -> None:
    monitor = GradNormMonitor(clip=1.0)
    early = monitor.scan([(s, 30.0 + s) for s in range(MIN_HISTORY - 1)])  # a fresh model
    assert early == []
    monitor.scan(_healthy_norms(300)[MIN_HISTORY:])
    warnings = monitor.scan([(500, 0.05), (501, 80.0), (502, 0.04)])
    assert [(w.global_step, w.reason, w.action) for w in warnings] == [
        (501, "spike", "clipped to 1")
    ]


def test_without_clipping_spikes_are_judged_against_the_median() -> None:
    monitor = GradNormMonitor(clip=0.0)
    monitor.scan([(s, 0.01) for s in range(100)])
    assert [w.global_step for w in monitor.scan([(100, 0.5)])] == [100]
    assert monitor.scan([(101, 0.05)]) == []


# ---------------------------------------------------------------------- the same-shape control


@pytest.mark.parametrize("name", ["rapid_kan_lite", "rapid_kan", "rapid_kan_power"])
def test_mlp_control_matches_the_kan_model_size(name: str) -> None:
    kan = models.count_params(models.build(name, (1, 28, 28), 10))["total"]
    mlp_model = models.build(f"{name}_mlp", (1, 28, 28), 10)
    mlp = models.count_params(mlp_model)["total"]
    assert abs(mlp - kan) / kan < 0.005
    assert not models.kan_layers(mlp_model)
    assert mlp_model.eval()(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize(
    ("name", "target"),
    [("rapid_kan_lite", 8.3e6), ("rapid_kan", 26.6e6), ("rapid_kan_power", 58.5e6)],
)
def test_rapid_models_keep_the_notes_sizes(name: str, target: float) -> None:
    total = models.count_params(models.build(name, (1, 28, 28), 10))["total"]
    assert abs(total - target) / target <= 0.10


# ---------------------------------------------------------------------- a run with the recipe


def test_label_smoothing_changes_the_objective_not_the_reported_loss(tiny_config) -> None:
    trainer = Trainer(tiny_config(**{"train.label_smoothing": 0.2}), sink=lambda e: None)
    trainer.setup()
    x, y = next(trainer.data.batches("train", 64, shuffle=False))
    objective, loss, _ = trainer.stepper.loss(x, y)
    logits = trainer.model(x)
    assert torch.allclose(loss, F.cross_entropy(logits, y))
    assert torch.allclose(objective, F.cross_entropy(logits, y, label_smoothing=0.2))
    assert not torch.allclose(objective, loss)


def test_recipe_run_learns_and_keeps_its_best_at_the_end(tiny_config, runs_dir, recorder) -> None:
    config = tiny_config(
        **{
            "model.name": "rapid_kan_lite",
            "train.epochs": 8,
            "schedule.warmup_epochs": 1.0,
            "train.batch_size": 128,
            "optim.lr": 0.004,
            "data.augment": True,
            "data.erase_prob": 0.5,
            "train.label_smoothing": 0.1,
            "train.ema_decay": 0.99,
            "kan.prob_update_grid": 0.1,
            "kan.grid_update_until": 30,
        }
    )
    trainer = Trainer(config, sink=recorder, out_dir=runs_dir, preset_name="recipe")
    summary = trainer.run()
    rows = [e for e in recorder.events if type(e).__name__ == "EpochEnd"]
    assert summary["status"] == "finished" and summary["skipped_steps"] == 0
    assert summary["best_val_acc"] > 0.9 and summary["test_acc"] > 0.9
    assert rows[-1].val_acc >= summary["best_val_acc"] - 0.02  # no fall at the end
    assert summary["grid_updates"] > 0 and rows[-1].grid_updates == summary["grid_updates"]
    assert summary["grad_norm_warnings"] == 0
    best = torch.load(trainer.run_dir / "checkpoints" / "best.pt", weights_only=True)
    assert best["ema"]["updates"] > 0  # the averaged weights were kept and judged
    assert evaluate(trainer.run_dir)["acc"] == pytest.approx(summary["test_acc"])
    # the raw weights are a different model: evaluation used the average
    assert any(not torch.equal(best["ema"]["model"][k], v) for k, v in best["model"].items())
