"""The activation viewer: each edge's curve is the layer's own function, importance ranks edges.

Layers are given random spline coefficients and a refit, non-uniform grid, so a viewer that
ignored the spline part, the base part or the moved knots would fail.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY

from kan_engine import activations, history, models, runs
from kan_engine.config import RunConfig, apply_overrides
from kan_engine.errors import ConfigError
from kan_engine.kan import KANLinear
from kan_engine.trainer import Trainer


def trained_like_layer(in_features: int = 5, out_features: int = 3) -> KANLinear:
    torch.manual_seed(0)
    layer = KANLinear(in_features, out_features, grid_size=6, scale_base=2.5, scale_spline=0.7)
    with torch.no_grad():
        layer.spline_weight.normal_()  # far from the identity start
        layer.update_grid(torch.randn(256, in_features) * 0.6 + 0.2)  # non-uniform knots
    assert not layer._uniform
    return layer


def test_curve_equals_a_direct_computation_with_b_splines_and_weights() -> None:
    layer = trained_like_layer()
    for i, j in [(0, 0), (2, 1), (4, 2)]:
        low, high = activations.grid_range(layer, i)
        x = torch.linspace(low - 0.5, high + 0.5, 101)  # beyond the grid too
        inputs = torch.zeros(len(x), layer.in_features)
        inputs[:, i] = x
        basis = layer.b_splines(inputs)[:, i, :]  # (P, G+k) of input i
        spline = basis @ layer.spline_weight[j, :, i]
        base = layer.base_weight[j, i] * F.silu(x)
        direct = layer.scale_base * base + layer.scale_spline * spline
        torch.testing.assert_close(activations.edge_values(layer, i, j, x), direct.detach())


def test_edges_sum_to_the_layers_forward() -> None:
    """The layer (fast path) computes sum_i phi_ij(x_i): the curves are what it does."""
    layer = trained_like_layer()
    x = torch.rand(64, layer.in_features) * 3 - 1.3
    with torch.no_grad():
        out = layer(x)  # (64, out)
    for j in range(layer.out_features):
        total = sum(activations.edge_values(layer, i, j, x[:, i]) for i in range(layer.in_features))
        torch.testing.assert_close(total, out[:, j], atol=1e-5, rtol=1e-5)


def test_curve_covers_the_grid_range_and_marks_its_knots() -> None:
    layer = trained_like_layer()
    curve = activations.edge_curve(layer, 1, 2, points=50)
    low, high = activations.grid_range(layer, 1)
    assert curve.x[0] == pytest.approx(low) and curve.x[-1] == pytest.approx(high)
    assert len(curve.x) == len(curve.y) == 50
    assert len(curve.knots) == layer.grid_size + 1
    expected = activations.edge_values(layer, 1, 2, torch.tensor(curve.knots))
    assert curve.knot_values == pytest.approx(expected.tolist())
    with pytest.raises(ConfigError, match="no such edge"):
        activations.edge_curve(layer, 5, 0)


def test_importance_is_mean_absolute_phi_and_ranks_edges(monkeypatch: pytest.MonkeyPatch) -> None:
    layer = trained_like_layer()
    with torch.no_grad():
        layer.base_weight[1, 3] = 0.0
        layer.spline_weight[1, :, 3] = 0.0  # edge 3 -> 1 does nothing
        layer.spline_weight[0, :, 2] *= 50  # edge 2 -> 0 dominates
    inputs = torch.randn(40, layer.in_features)
    importance = activations.edge_importance(layer, inputs)
    assert importance.shape == (layer.out_features, layer.in_features)
    for i, j in [(0, 0), (3, 1), (4, 2)]:
        brute = activations.edge_values(layer, i, j, inputs[:, i]).abs().mean()
        assert float(importance[j, i]) == pytest.approx(float(brute), rel=1e-5, abs=1e-7)
    ranked = activations.rank_edges(importance, top=15)
    assert ranked[0][:2] == (2, 0) and ranked[-1][:2] == (3, 1) and ranked[-1][2] == 0.0
    monkeypatch.setattr(activations, "CHUNK_ELEMENTS", 16)  # many chunks, same numbers
    torch.testing.assert_close(activations.edge_importance(layer, inputs), importance)


def test_uniform_sample_follows_each_inputs_grid() -> None:
    layer = trained_like_layer()
    importance = activations.edge_importance(layer, samples=32)
    for i in range(layer.in_features):
        low, high = activations.grid_range(layer, i)
        x = low + (torch.arange(32) + 0.5) / 32 * (high - low)
        brute = activations.edge_values(layer, i, 0, x).abs().mean()
        assert float(importance[0, i]) == pytest.approx(float(brute), rel=1e-5)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-epoch run of the kan baseline on digits (with grid updates)."""
    overrides = {**TINY, "train.epochs": 1, "train.batch_size": 128, "kan.prob_update_grid": 0.5}
    config = apply_overrides(RunConfig(), overrides, source="test")
    out = tmp_path_factory.mktemp("viewer") / "runs"
    trainer = Trainer(config, sink=lambda event: None, out_dir=out, preset_name="tiny")
    trainer.run()
    return trainer.run_dir


def test_layers_from_a_checkpoint_compute_what_the_model_does(run_dir: Path) -> None:
    layers, epoch = activations.load_layers(run_dir, "last")
    assert list(layers) == ["kan.0", "kan.1"] and epoch == 1
    config = runs.read_config(run_dir)
    options = {name: getattr(config.kan, name) for name in models.OPTION_NAMES}
    model = models.build("kan", (1, 8, 8), 10, **options)
    state = torch.load(runs.checkpoint_path(run_dir, "last"), weights_only=True)["model"]
    model.load_state_dict(state)
    x = torch.rand(16, 64) * 2 - 1
    for name, layer in models.kan_layers(model).items():
        with torch.no_grad():
            torch.testing.assert_close(
                layers[name](x[:, : layer.in_features]), layer(x[:, : layer.in_features])
            )
    assert not layers["kan.0"]._uniform  # the refit grids came back too


def test_pick_layer_and_outside_share(run_dir: Path) -> None:
    layers, epoch = activations.load_layers(run_dir, "best")
    assert activations.pick_layer(layers, "kan.1")[0] == "kan.1"
    assert activations.pick_layer(layers, "-1")[0] == "kan.1"
    assert activations.pick_layer(layers, "0")[0] == "kan.0"
    with pytest.raises(ConfigError, match=r"known: kan.0 \(0\), kan.1 \(1\)"):
        activations.pick_layer(layers, "7")
    recorded = history.epoch_rows(run_dir)[0]["outside_grid"]["kan.1"]
    assert activations.outside_share(run_dir, "kan.1", epoch) == (recorded, 1)
    assert activations.outside_share(run_dir, "nope") is None


def test_inspect_command(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from kan_tui.cli import app

    monkeypatch.setenv("COLUMNS", "80")
    args = ["inspect", str(run_dir), "--layer", "kan.1", "--edge", "4", "7", "--top", "3"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "layer kan.1: 64 inputs -> 10 outputs" in out
    assert "inputs outside the grid:" in out
    assert "edge 4 -> 7" in out and "grid knots" in out
    assert "top 3 edges of kan.1, over a uniform sample" in out
    layers, _ = activations.load_layers(run_dir, "best")
    best = activations.rank_edges(activations.edge_importance(layers["kan.1"]), 1)[0]
    assert f"{best[0]} -> {best[1]}" in out.split("mean |phi|")[1].splitlines()[1]
    bad = CliRunner().invoke(app, ["inspect", str(run_dir), "--edge", "64", "0"])
    assert bad.exit_code == 2 and "no such edge" in bad.stderr
