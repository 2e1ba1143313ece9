"""The CUDA-graph training step against the eager one (needs a GPU; skipped elsewhere)."""

from __future__ import annotations

import pytest
import torch

from kan_engine.events import EpochEnd, StepMetrics
from kan_engine.trainer import Trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_graph_replays_train_like_eager_steps(tiny_config, runs_dir, recorder) -> None:
    """Same seed and batches, float32, two epochs (3 eager steps, a capture, replays, eager
    grid-update steps and a short last batch in between): the replayed graph must train like
    eager steps. A stale capture (an LR baked in at its warm-up value, an optimizer state that
    was replaced) changes the loss curve by far more than the tolerances here. Weights are
    compared by the relative norm of their difference, not element by element: Adam turns
    rounding-level differences of near-zero gradients (the GEMMs inside a capture may sum in
    another order) into updates of a fraction of the LR on those elements."""
    from conftest import Recorder

    settings = {
        "train.device": "cuda",
        "train.mixed_precision": "off",
        "kan.prob_update_grid": 0.0,
        "kan.grid_update_every": 7,
    }
    trainers, sinks = {}, {True: recorder, False: Recorder()}
    for graphs, sink in sinks.items():
        config = tiny_config(**settings, **{"train.cuda_graphs": graphs})
        trainers[graphs] = Trainer(config, sink=sink, out_dir=runs_dir)
        trainers[graphs].run()
    graphed, eager = trainers[True], trainers[False]
    assert graphed.graphed is not None and graphed.graphed.captured
    assert eager.graphed is None
    assert graphed.c.grid_updates == eager.c.grid_updates and sum(eager.c.grid_updates.values())

    losses = [[e.loss for e in sinks[g].of(StepMetrics.event)] for g in (True, False)]
    assert len(losses[0]) == len(losses[1]) >= 6
    for a, b in zip(*losses, strict=True):
        assert a == pytest.approx(b, rel=0.02)
    accuracies = [[e.val_acc for e in sinks[g].of(EpochEnd.event)] for g in (True, False)]
    for a, b in zip(*accuracies, strict=True):
        assert a == pytest.approx(b, abs=0.02)
    weights = zip(
        graphed.model.state_dict().items(), eager.model.state_dict().values(), strict=True
    )
    for (name, a), b in weights:
        if a.is_floating_point():
            change = float((a - b).norm() / b.norm().clamp_min(1e-12))
            assert change < 0.02, name


def test_graph_captures_the_weight_average_and_label_smoothing(tiny_config, runs_dir) -> None:
    """The EMA update and the smoothed objective are inside the captured step: a graphed run's
    averaged weights (what validation judged) match an eager run's, and they differ from the raw
    weights (the average was updated at all, also in replays)."""
    settings = {
        "train.device": "cuda",
        "train.mixed_precision": "off",
        "kan.prob_update_grid": 0.0,
        "train.ema_decay": 0.9,
        "train.label_smoothing": 0.1,
        "data.augment": True,
        "data.erase_prob": 0.5,
    }
    trainers = {}
    for graphs in (True, False):
        config = tiny_config(**settings, **{"train.cuda_graphs": graphs})
        trainers[graphs] = Trainer(config, sink=lambda e: None, out_dir=runs_dir)
        trainers[graphs].run()
    graphed, eager = trainers[True], trainers[False]
    assert graphed.graphed is not None and graphed.graphed.captured
    assert int(graphed.ema.updates) == int(eager.ema.updates) == graphed.c.global_step
    averaged = graphed.ema.model_state()
    for name, value in eager.ema.model_state().items():
        if value.is_floating_point():
            change = float((averaged[name] - value).norm() / value.norm().clamp_min(1e-12))
            assert change < 0.02, name
    # the end of a run loads best.pt's averaged weights into the model: compare last.pt's
    last = torch.load(graphed.run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert any(not torch.equal(last["model"][k], v) for k, v in last["ema"]["model"].items())
