"""The CUDA-graph training step against the eager one (needs a GPU; skipped elsewhere)."""

from __future__ import annotations

import pytest
import torch

from kan_engine.trainer import Trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_graph_replays_train_like_eager_steps(tiny_config, runs_dir, recorder) -> None:
    """One epoch (about 20 steps: 3 eager, a capture, replays, two eager grid-update steps and a
    short last batch in between), same seed and batches, float32: the replayed graph must end
    where eager steps end. A stale capture (an LR baked in, an optimizer state replaced) would
    be off by far more than rounding."""
    from conftest import Recorder

    settings = {
        "train.device": "cuda",
        "train.mixed_precision": "off",
        "train.epochs": 1,
        "kan.prob_update_grid": 0.0,
        "kan.grid_update_every": 7,
    }
    trainers = {}
    for graphs, sink in ((True, recorder), (False, Recorder())):
        config = tiny_config(**settings, **{"train.cuda_graphs": graphs})
        trainers[graphs] = Trainer(config, sink=sink, out_dir=runs_dir)
        trainers[graphs].run()
    graphed, eager = trainers[True], trainers[False]
    assert graphed.graphed is not None and graphed.graphed.captured
    assert eager.graphed is None
    assert graphed.c.grid_updates == eager.c.grid_updates and sum(eager.c.grid_updates.values())
    weights = zip(
        graphed.model.state_dict().items(), eager.model.state_dict().values(), strict=True
    )
    for (name, a), b in weights:
        torch.testing.assert_close(a.float(), b.float(), atol=1e-4, rtol=1e-3, msg=name)
