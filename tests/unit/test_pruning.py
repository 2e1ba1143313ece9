"""Pruning: edge masks, attribution, node removal, and a pruned run that fine-tunes and resumes.

The models are flat KANs with random spline coefficients (far from their linear start), so a
score or a slice that ignored the spline part, the grid or an index would show."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
from conftest import TINY, regression_overrides
from torch import nn

from kan_engine import checkpoint as ckpt
from kan_engine import models, prune_run, pruning, resume_plan, runs
from kan_engine.config import RunConfig, apply_overrides
from kan_engine.errors import ConfigError
from kan_engine.kan import KANLinear
from kan_engine.trainer import Trainer


def flat_kan(width: list[int], seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A flat_kan of `width` with random coefficients; float64 on the textbook path when asked
    (the sums then agree to 1e-12 however the matmuls are blocked)."""
    torch.manual_seed(seed)
    model = models.build("flat_kan", (width[0],), width[-1], width=width)
    for layer in model.kan:
        with torch.no_grad():
            layer.spline_weight.normal_()
        if dtype == torch.float64:
            layer.fast = False
    return model.to(dtype)


def masked_copy(model: nn.Module, masks: list[torch.Tensor]) -> nn.Module:
    """The original with `masks` applied and nothing removed."""
    masked = copy.deepcopy(model)
    for layer, mask in zip(masked.kan, masks, strict=True):
        layer.set_edge_mask(mask)
    return masked


# ------------------------------------------------------------------ the mask in the layer


def test_a_masked_edge_computes_zero_gets_no_gradient_and_the_rest_is_unchanged() -> None:
    torch.manual_seed(0)
    layer = KANLinear(4, 3, grid_size=6)
    with torch.no_grad():
        layer.spline_weight.normal_()
    x = torch.randn(64, 4)
    before = layer.edge_functions(x).detach()  # (N, in, out)
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[1, 2] = mask[0, 0] = False
    layer.set_edge_mask(mask)
    after = layer.edge_functions(x).detach()
    assert torch.equal(after[:, 2, 1], torch.zeros(64)) and torch.equal(
        after[:, 0, 0], torch.zeros(64)
    )
    keep = mask.t()[None].expand_as(before)  # (N, in, out)
    assert torch.equal(after[keep], before[keep])
    out = layer(x)
    torch.testing.assert_close(out, after.sum(1), atol=1e-5, rtol=1e-5)  # the fast path agrees
    layer.fast = False
    torch.testing.assert_close(layer(x), out, atol=1e-5, rtol=1e-5)
    layer.fast = True
    layer(x).square().sum().backward()
    assert layer.base_weight.grad[1, 2] == 0 and layer.spline_weight.grad[1, :, 2].abs().sum() == 0
    assert layer.base_weight.grad[1, 1] != 0


def test_a_mask_survives_a_state_dict_round_trip_and_a_grid_refit() -> None:
    torch.manual_seed(1)
    layer = KANLinear(3, 2, grid_size=5)
    mask = torch.tensor([[True, False, True], [False, True, True]])
    layer.set_edge_mask(mask)
    fresh = KANLinear(3, 2, grid_size=5)  # built from a config: no mask
    fresh.load_state_dict(layer.state_dict())
    assert torch.equal(fresh.edge_mask, mask)
    x = torch.randn(50, 3)
    assert torch.equal(fresh(x), layer(x))
    fresh.update_grid(x * 2, grid_size=9)  # grid extension refits every edge
    assert fresh.spline_weight[0, :, 1].abs().sum() == 0 and fresh.base_weight[1, 0] == 0
    layer.load_state_dict(KANLinear(3, 2).state_dict())  # a state without a mask takes it away
    assert layer.edge_mask is None
    assert "edge_mask" not in KANLinear(3, 2).state_dict()  # unpruned layers are as before


# ------------------------------------------------------------------ attribution


def test_edges_below_the_threshold_are_masked_and_those_above_kept() -> None:
    model = flat_kan([4, 6, 3])
    x = torch.randn(256, 4)
    result = pruning.prune(model, x, 0.25, nodes=False)
    scored = zip(result.attribution.edges, result.masks, strict=True)
    for index, (scores, mask) in enumerate(scored):
        assert torch.equal(mask, scores >= 0.25), index
        assert scores.max() == 1.0  # each layer read against its strongest edge
        layer = result.model.kan[index]
        assert torch.equal(layer.edge_mask, mask) if not mask.all() else layer.edge_mask is None
        phi = layer.edge_functions(torch.randn(20, layer.in_features))  # (N, in, out)
        assert phi[:, ~mask.t()].abs().sum() == 0
    assert result.widths_after == result.widths_before == [4, 6, 3]
    assert 0 < result.edges_kept < 4 * 6 + 6 * 3 and not result.masks[0].all()
    assert model.kan[0].edge_mask is None  # the original is left as it was


def test_a_node_that_nothing_reads_scores_zero_and_is_removed() -> None:
    """Attribution flows back from the outputs: a hidden node with large incoming edges but no
    outgoing ones is worth nothing, and so are its incoming edges."""
    model = flat_kan([3, 4, 2])
    with torch.no_grad():
        model.kan[1].base_weight[:, 2] = 0
        model.kan[1].spline_weight[:, :, 2] = 0  # node 2 of the hidden layer feeds nothing
        model.kan[0].spline_weight[2] *= 10  # but receives a lot
    result = pruning.prune(model, torch.randn(256, 3), 0.01)
    scores = result.attribution
    assert scores.nodes[1][2] == 0 and scores.edges[0][2].abs().sum() == 0
    assert result.kept_nodes[1].tolist() == [0, 1, 3] and result.widths_after == [3, 3, 2]
    assert result.summary(pruning.live_edges(model)).startswith("kept ")
    assert "hidden width 4 -> 3" in result.summary(20)


def test_removed_nodes_give_smaller_widths_and_the_same_function_as_the_masked_original() -> None:
    model = flat_kan([5, 8, 6, 3], seed=2, dtype=torch.float64)
    x = torch.randn(512, 5, dtype=torch.float64)
    result = pruning.prune(model, x, 0.3)
    before, after = result.widths_before, result.widths_after
    assert before == [5, 8, 6, 3] and after[0] == 5 and after[-1] == 3
    assert after[1] < 8 or after[2] < 6  # something was cut out
    assert after == [len(kept) for kept in result.kept_nodes]
    assert [layer.in_features for layer in result.model.kan] == after[:-1]
    assert [layer.out_features for layer in result.model.kan] == after[1:]
    fresh = torch.randn(300, 5, dtype=torch.float64) * 1.5  # beyond the scored inputs too
    reference = masked_copy(model, result.masks)
    with torch.no_grad():
        torch.testing.assert_close(result.model(fresh), reference(fresh), atol=1e-12, rtol=0)
    # the pruned weights are those of a flat_kan built at the new widths (what the new run builds)
    rebuilt = models.build("flat_kan", (5,), 3, width=after).double()
    rebuilt.load_state_dict(result.model.state_dict())
    for layer in rebuilt.kan:
        layer.fast = False
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(fresh), result.model(fresh), atol=1e-12, rtol=0)


def test_a_second_prune_keeps_the_first_ones_masks() -> None:
    model = flat_kan([4, 5, 2], seed=3)
    x = torch.randn(256, 4)
    first = pruning.prune(model, x, 0.2, nodes=False)
    second = pruning.prune(first.model, x, 0.0, nodes=False)
    for a, b in zip(first.masks, second.masks, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("bad", [float("nan"), -0.1, float("inf")])
def test_a_threshold_must_be_a_number_at_least_zero(bad: float) -> None:
    with pytest.raises(ConfigError, match="--threshold: must be a number >= 0"):
        pruning.prune(flat_kan([2, 3, 1]), torch.randn(10, 2), bad)


def test_a_threshold_that_breaks_the_network_names_the_largest_that_does_not() -> None:
    model, x = flat_kan([4, 6, 3], seed=4), torch.randn(256, 4)
    for nodes in (True, False):
        with pytest.raises(ConfigError) as caught:
            pruning.prune(model, x, 1.5, nodes=nodes)
        message = str(caught.value)
        found = re.search(r"the largest threshold that keeps a network is ([0-9.e-]+)", message)
        assert found, message
        largest = float(found.group(1))
        pruning.prune(model, x, largest, nodes=nodes)  # the number shown works


def test_input_names_and_ranking() -> None:
    assert pruning.input_names((3,), None) == ["x1", "x2", "x3"]
    assert pruning.input_names((2,), ["age", "bmi"]) == ["age", "bmi"]
    assert pruning.input_names((1, 2, 2), None)[1] == "pixel (0, 1)"
    assert pruning.input_names((2, 1, 2), None)[2] == "channel 1 (0, 0)"
    model = flat_kan([3, 4, 1], seed=5)
    with torch.no_grad():
        model.kan[0].base_weight[:, 1] = 0
        model.kan[0].spline_weight[:, :, 1] = 0  # input x2 does nothing
    scores = pruning.attribute(list(model.kan), pruning.layer_inputs(model, torch.randn(128, 3)))
    ranked = pruning.rank_inputs(scores, ["x1", "x2", "x3"])
    assert ranked[-1] == ("x2", 0.0) and ranked[0][1] == 1.0


def test_models_without_kan_layers_are_refused() -> None:
    mlp = models.build("flat_mlp", (3,), 1, width=[3, 4, 1])
    with pytest.raises(ConfigError, match="model 'flat_mlp' has no KAN layers to prune"):
        pruning.kan_stack(mlp, "flat_mlp")


def test_nodes_are_removed_only_between_bare_kan_layers() -> None:
    assert pruning.nodes_removable(flat_kan([3, 4, 1]))
    normed = models.build("fast_exact_kan", (16,), 3)  # BatchNorm between its layers
    assert not pruning.nodes_removable(normed)
    normed.eval()
    result = pruning.prune(normed, torch.randn(64, 16), 0.3, nodes=False)
    assert result.widths_after == [16, 256, 3] and result.edges_kept < 16 * 256 + 256 * 3
    with pytest.raises(ValueError, match="bare KAN layers"):
        pruning.prune(normed, torch.randn(64, 16), 0.3)


# ------------------------------------------------------------------ a pruned run


@pytest.fixture
def function_run(tmp_path: Path) -> Path:
    """A [2, 6, 1] flat KAN fitted to exp(sin(pi x1) + x2^2) for 3 epochs (~2 s)."""
    overrides = regression_overrides(
        tmp_path, **{"model.width": [2, 6, 1], "train.epochs": 3, "kan.grid_schedule": [3, 5]}
    )
    config = apply_overrides(RunConfig(), overrides, "test")
    trainer = Trainer(config, sink=lambda e: None, out_dir=tmp_path / "runs", preset_name="fit")
    trainer.run()
    return trainer.run_dir


def test_a_pruned_run_fine_tunes_with_its_masks_exactly_zero(function_run: Path) -> None:
    pruned = prune_run.prepare(function_run, threshold=0.2, epochs=2)
    widths = pruned.result.widths_after
    assert pruned.config.model.width == widths and pruned.config.kan.grid_schedule == []
    assert pruned.config.kan.grid_size == 5  # the grid the run ended on
    trainer = prune_run.trainer(pruned, sink=lambda e: None, out_dir=function_run.parent)
    config = runs.read_config(trainer.run_dir)
    assert config.model.init_from == runs.INIT and config.model.width == widths
    summary = trainer.run()
    assert summary["status"] == "finished" and summary["epochs_run"] == 2
    start = ckpt.load(trainer.run_dir / runs.INIT)["model"]
    assert any(name.endswith(".edge_mask") for name in start)  # something to keep at zero
    for which in ("last", "best"):
        state = ckpt.load(runs.checkpoint_path(trainer.run_dir, which))["model"]
        for name in ("kan.0", "kan.1"):
            mask = start.get(f"{name}.edge_mask")
            if mask is None:
                assert f"{name}.edge_mask" not in state
                continue
            assert torch.equal(state[f"{name}.edge_mask"], mask)
            assert state[f"{name}.base_weight"][~mask].abs().sum() == 0
            assert state[f"{name}.spline_weight"].permute(0, 2, 1)[~mask].abs().sum() == 0
            assert not torch.equal(state[f"{name}.base_weight"], start[f"{name}.base_weight"])


def test_a_pruned_run_killed_in_its_first_epoch_starts_over_from_the_pruned_weights(
    function_run: Path,
) -> None:
    pruned = prune_run.prepare(function_run, threshold=0.2, epochs=2)
    made = prune_run.trainer(pruned, sink=lambda e: None, out_dir=function_run.parent)
    plan = resume_plan.read(made.run_dir)  # no last.pt: a start-over
    assert plan.state is None
    again = Trainer.from_run_dir(made.run_dir, sink=lambda e: None, plan=plan)
    again.setup()
    expected = pruned.result.model.state_dict()
    for name, value in again.model.state_dict().items():
        assert torch.equal(value, expected[name]), name


def test_digits_keeps_its_accuracy_after_pruning_and_a_short_fine_tune(tmp_path: Path) -> None:
    """A [64, 16, 10] flat KAN trained 8 epochs on digits, pruned at 0.1, keeps 56-64 % of its
    edges; after 3 epochs of fine-tuning its test accuracy is within 1.5 points of the
    original's. Measured over seeds 0-4 (2-core CPU, ~1.5 s each): original 94.4-95.0 %, pruned
    -0.3 to -2.2 points before fine-tuning, -0.8 to +0.6 after it (this test is seed 0: 94.71 %,
    94.43 %, 94.15 %)."""
    overrides = {
        **TINY,
        "model.name": "flat_kan",
        "model.width": [64, 16, 10],
        "train.epochs": 8,
        "schedule.warmup_epochs": 1,
        "kan.prob_update_grid": 0.05,
    }
    config = apply_overrides(RunConfig(), overrides, "test")
    source = Trainer(config, sink=lambda e: None, out_dir=tmp_path, preset_name="digits")
    source.run()
    pruned = prune_run.prepare(source.run_dir, threshold=0.1, epochs=3)
    assert pruned.result.edges_kept < 0.7 * pruned.edges_before
    assert pruned.pruned["acc"] >= pruned.original["acc"] - 0.03
    tuned = prune_run.trainer(pruned, sink=lambda e: None, out_dir=tmp_path).run()
    assert tuned["test_acc"] >= pruned.original["acc"] - 0.015, (pruned.original, tuned)
