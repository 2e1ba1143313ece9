"""The activation viewer on a pruned run (`kan-tui prune`): its masked edges are counted in the
info line and marked `pruned` where the ranking lists them, their curve is 0, and the symbolic fit
line says so instead of fitting."""

from __future__ import annotations

from pathlib import Path

from conftest import SIZE, regression_overrides, sync, wait_until
from textual.widgets import DataTable, Static

from kan_engine import prune_run
from kan_engine.config import RunConfig, apply_overrides
from kan_engine.trainer import Trainer
from kan_tui.app import create_app
from kan_tui.screens.activations import ActivationsScreen, EdgePlot


def pruned_run(tmp_path: Path) -> tuple[Path, int]:
    """A [2, 6, 1] fit pruned at 0.2, not fine-tuned (its last.pt is the pruned model), and the
    number of edges its first layer masks."""
    overrides = regression_overrides(tmp_path, **{"model.width": [2, 6, 1], "train.epochs": 2})
    config = apply_overrides(RunConfig(), overrides, "test")
    source = Trainer(config, sink=lambda e: None, out_dir=tmp_path / "runs", preset_name="fit")
    source.run()
    pruned = prune_run.prepare(source.run_dir, threshold=0.2, epochs=0)
    trainer = prune_run.trainer(pruned, sink=lambda e: None, out_dir=tmp_path / "pruned")
    trainer.stop()
    trainer.run()
    mask = pruned.result.model.kan[0].edge_mask
    assert mask is not None
    return trainer.run_dir, int((~mask).sum())


@sync
async def test_the_viewer_marks_pruned_edges(tmp_path: Path) -> None:
    run_dir, masked = pruned_run(tmp_path)
    app = create_app(out_dir=tmp_path / "pruned")
    async with app.run_test(size=SIZE) as pilot:
        await app.push_screen(ActivationsScreen(run_dir))
        screen = app.screen
        await wait_until(pilot, lambda: screen.view is not None, "the first layer")
        info = str(screen.query_one("#act-info", Static).content)
        layer = screen.view.layers["kan.0"]
        assert f"{masked} of {layer.edge_mask.numel()} edges pruned" in info
        table = screen.query_one(DataTable)
        cells = [str(table.get_row_at(r)[2]) for r in range(table.row_count)]
        assert cells.count("pruned") == masked  # every edge is listed: 12 < the top 50
        i, j = (int(v) for v in str(table.get_row_at(cells.index("pruned"))[1]).split(" -> "))
        screen.show_edge(i, j)
        plot = screen.query_one(EdgePlot)
        assert "(pruned: 0)" in plot.title and set(plot.curve.y) == {0.0}
        fit = str(screen.query_one("#act-fit", Static).content)  # no fit started, none drawn
        assert fit == f"{i} -> {j} is pruned: it is 0, no function to fit"
        assert "fit" not in plot.series
