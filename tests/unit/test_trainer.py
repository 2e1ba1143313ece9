"""The trainer end to end on digits (CPU, the small `kan` baseline, ~20 steps per epoch)."""

from __future__ import annotations

import errno
import json
import signal
import threading
import tomllib
from pathlib import Path
from typing import Any

import pytest
import torch

from kan_engine import cuda_graph, presets_io, runs
from kan_engine import trainer as trainer_mod
from kan_engine.checkpoint import CheckpointWriteError
from kan_engine.config import to_data
from kan_engine.events import CheckpointWritten, EpochEnd, Notice, StepMetrics
from kan_engine.run_setup import evaluate
from kan_engine.trainer import Trainer

WAIT = 120  # seconds: a safety net for a hung run, never a synchronisation delay


def load(path: Path) -> dict[str, Any]:
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Any], dict]:
    """One 2-epoch run shared by the read-only tests below."""
    from conftest import TINY, Recorder

    from kan_engine.config import RunConfig, apply_overrides

    config = apply_overrides(RunConfig(), {**TINY, "data.test_every_epoch": True}, "test")
    recorder = Recorder()
    trainer = Trainer(
        config, sink=recorder, out_dir=tmp_path_factory.mktemp("runs"), preset_name="tiny"
    )
    summary = trainer.run()
    return trainer.run_dir, recorder.events, summary


def test_run_folder_holds_config_metrics_summary_and_checkpoints(finished_run) -> None:
    run_dir, events, summary = finished_run
    assert run_dir.name.endswith("-tiny")
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "checkpoints",
        "config.toml",
        "metrics.jsonl",
        "run.lock",  # held while the run trained (run_lock.py); it stays, unlocked
        "summary.json",
    ]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    config = presets_io.read_file(run_dir / "config.toml")  # loadable as a preset
    assert to_data(config) == events[0].config
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["event"] == "run_started"
    rows = [r for r in records if r["event"] == "epoch"]
    assert [r["epoch"] for r in rows] == [1, 2]
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "grid_updates", "seconds"):
        assert isinstance(rows[-1][key], float | int)
    assert set(rows[-1]["lr"]) == {"cnn", "kan", "other"}
    assert rows[-1]["test_acc"] is not None  # test_every_epoch
    assert json.loads((run_dir / "summary.json").read_text()) == summary
    assert summary["status"] == "finished" and summary["epochs_run"] == 2
    assert summary["best_val_acc"] > 0.5 and summary["test_acc"] > 0.5
    assert summary["params"]["total"] > 0 and summary["device"] == "cpu"


def test_checkpoints_load_with_weights_only(finished_run) -> None:
    run_dir, _, summary = finished_run
    last = load(run_dir / "checkpoints" / "last.pt")
    assert last["epoch"] == 3 and last["step_in_epoch"] == 0  # the position to continue from
    assert last["counters"]["epochs_run"] == 2
    assert {"model", "optimizer", "schedule", "scaler", "rng", "grid_rng", "config"} <= set(last)
    assert any(k.endswith("grid") for k in last["model"])  # KAN grids travel with the weights
    best = load(run_dir / "checkpoints" / "best.pt")
    assert best["counters"]["best_epoch"] == summary["best_epoch"]


def test_grid_updates_agree_in_events_summary_and_metrics(finished_run) -> None:
    run_dir, events, summary = finished_run
    updates = [e for e in events if e.event == "grid_update"]
    assert updates, "prob_update_grid 0.2 over ~40 steps must update"
    per_layer: dict[str, int] = {}
    for e in updates:
        per_layer[e.layer] = per_layer.get(e.layer, 0) + 1
        assert e.count == per_layer[e.layer]
    assert summary["grid_updates_per_layer"] == per_layer
    assert summary["grid_updates"] == len(updates) == updates[-1].total
    rows = runs.read_metrics(run_dir)
    assert sum(r["event"] == "grid_update" for r in rows) == len(updates)
    assert [r for r in rows if r["event"] == "epoch"][-1]["grid_updates"] == len(updates)


def test_evaluate_matches_the_summary(finished_run) -> None:
    run_dir, _, summary = finished_run
    result = evaluate(run_dir, "test", "best")
    assert result["acc"] == pytest.approx(summary["test_acc"])
    assert result["n"] > 0


def test_step_metrics_are_sampled_every_log_every_steps(finished_run) -> None:
    _, events, _ = finished_run
    steps = [e for e in events if isinstance(e, StepMetrics)]
    assert steps and all(e.global_step % 5 == 0 for e in steps)
    assert all(e.loss == e.loss and e.samples_per_s > 0 for e in steps)  # no NaN


def test_input_range_is_reported_once(finished_run) -> None:
    _, events, _ = finished_run
    notes = [e for e in events if isinstance(e, Notice) and "first KAN layer" in e.message]
    assert len(notes) == 1 and "outside the grid" in notes[0].message


def test_early_stopping_after_patience_epochs(tiny_config, runs_dir, recorder, monkeypatch):
    never_better = {"loss": 1.0, "acc": 0.5}
    monkeypatch.setattr(trainer_mod, "eval_split", lambda *args: never_better)
    config = tiny_config(**{"train.epochs": 10, "train.patience": 2})
    summary = Trainer(config, sink=recorder, out_dir=runs_dir).run()
    assert summary["status"] == "early_stopped"
    assert summary["epochs_run"] == 3 and summary["best_epoch"] == 1
    (stop,) = recorder.of("early_stop")
    assert (stop.epoch, stop.best_epoch, stop.patience) == (3, 1, 2)


def test_injected_nan_is_skipped_and_its_layer_named(tiny_config, runs_dir, recorder):
    trainer = Trainer(tiny_config(**{"train.epochs": 1}), sink=recorder, out_dir=runs_dir)
    trainer.setup()
    layer = trainer.kan["kan.1"]

    def inject(module: Any, inputs: Any, output: torch.Tensor) -> torch.Tensor | None:
        return output * float("nan") if module.training and trainer.forward_step == 3 else None

    layer.register_forward_hook(inject)
    summary = trainer.run()
    (warning,) = recorder.of("grad_norm_warning")
    assert (warning.global_step, warning.reason) == (3, "non-finite")
    assert warning.layer == "kan.1 (output)" and warning.action == "skipped step"
    assert summary["status"] == "finished" and summary["skipped_steps"] == 1
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert all(torch.isfinite(b).all() for b in trainer.model.buffers())


def test_absurd_lr_restores_twice_then_diverges(tiny_config, runs_dir, recorder):
    config = tiny_config(
        **{
            "optim.optimizer": "sgd",
            "optim.lr": 10.0,
            "train.clip_grad_norm": 0.0,
            "train.epochs": 5,
            "schedule.name": "constant",
            "schedule.warmup_epochs": 0,
        }
    )
    summary = Trainer(config, sink=recorder, out_dir=runs_dir).run()
    assert summary["status"] == "diverged" and summary["restores"] == 2
    halvings = [e for e in recorder.of("notice") if "halved" in e.message]
    assert len(halvings) == 2
    assert recorder.of("grad_norm_warning")[-1].action.endswith("diverged")
    assert runs.read_summary(Path(summary["run_dir"]))["status"] == "diverged"


def params_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("stop_at", ["epoch_end", "mid_epoch"])
def test_resume_gives_the_weights_of_an_uninterrupted_run(
    stop_at: str, tiny_config, runs_dir, recorder
):
    from conftest import Recorder

    config = tiny_config(**{"kan.prob_update_grid": 0.3})
    whole = Trainer(config, sink=Recorder(), out_dir=runs_dir)
    whole.run()

    first = Trainer(config, sink=recorder, out_dir=runs_dir)

    def stop_once(event: Any) -> None:
        at_end = isinstance(event, EpochEnd) and event.epoch == 1
        mid = isinstance(event, StepMetrics) and event.global_step == 10
        if (at_end if stop_at == "epoch_end" else mid) and not first.controls.stopping:
            first.stop()

    recorder.hooks.append(stop_once)
    assert first.run()["status"] == "stopped"
    # a kill -9 after the checkpoint may have left rows behind it, the last one half written
    with open(first.run_dir / "metrics.jsonl", "a") as handle:
        handle.write(json.dumps({"event": "epoch", "epoch": 99}) + '\n{"event": "ep')

    again = Recorder()
    resumed = Trainer.from_run_dir(first.run_dir, sink=again)
    summary = resumed.run()
    assert summary["status"] == "finished"
    assert again.events[0].start_epoch == (2 if stop_at == "epoch_end" else 1)
    expected, got = params_of(whole.model), params_of(resumed.model)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.allclose(expected[key].float(), got[key].float(), atol=1e-6), key
    rows = runs.read_metrics(first.run_dir)
    assert [r["epoch"] for r in rows if r["event"] == "epoch"] == [1, 2]
    assert summary["grid_updates"] == runs.read_summary(whole.run_dir)["grid_updates"]


def test_pause_checkpoint_resume_stop_from_another_thread(tiny_config, runs_dir, recorder):
    trainer = Trainer(tiny_config(**{"train.epochs": 50}), sink=recorder, out_dir=runs_dir)
    first_step, go_on = threading.Event(), threading.Event()

    def hold_first_step(event: Any) -> None:
        if isinstance(event, StepMetrics) and not first_step.is_set():
            first_step.set()
            assert go_on.wait(WAIT)  # the loop is held while the test thread calls pause()

    recorder.hooks.append(hold_first_step)
    paused = recorder.when(lambda e: isinstance(e, Notice) and e.message.startswith("paused"))
    manual = recorder.when(lambda e: isinstance(e, CheckpointWritten) and e.reason == "manual")
    resumed = recorder.when(lambda e: isinstance(e, Notice) and e.message == "resumed")
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(trainer.run()))
    thread.start()
    assert first_step.wait(WAIT)
    trainer.pause()
    go_on.set()
    assert paused.wait(WAIT) and trainer.paused
    steps_when_paused = len(recorder.of("step"))
    trainer.request_checkpoint()
    assert manual.wait(WAIT)
    assert len(recorder.of("step")) == steps_when_paused  # nothing trained while paused
    trainer.resume()
    assert resumed.wait(WAIT) and not trainer.paused
    trainer.stop()
    thread.join(WAIT)
    assert not thread.is_alive()
    assert result["status"] == "stopped" and result["epochs_run"] < 50
    last = load(trainer.run_dir / "checkpoints" / "last.pt")
    assert last["counters"]["global_step"] == trainer.c.global_step
    assert recorder.of("checkpoint")[-1].reason == "stop"


def test_ctrl_c_stops_after_the_step_and_reraises(tiny_config, runs_dir, recorder):
    trainer = Trainer(tiny_config(), sink=recorder, out_dir=runs_dir)

    def ctrl_c(event: Any) -> None:
        if isinstance(event, StepMetrics) and event.global_step == 5:
            signal.raise_signal(signal.SIGINT)

    recorder.hooks.append(ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    assert runs.read_summary(trainer.run_dir)["status"] == "stopped"
    last = load(trainer.run_dir / "checkpoints" / "last.pt")
    assert (last["epoch"], last["step_in_epoch"]) == (1, 5)  # step 5 completed, no step 6


def test_keyboard_interrupt_inside_the_loop_is_a_stop(tiny_config, runs_dir, recorder):
    trainer = Trainer(tiny_config(), sink=recorder, out_dir=runs_dir)

    def interrupt(event: Any) -> None:
        if isinstance(event, StepMetrics) and event.global_step == 5:
            raise KeyboardInterrupt

    recorder.hooks.append(interrupt)
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    assert runs.read_summary(trainer.run_dir)["status"] == "stopped"
    last = load(trainer.run_dir / "checkpoints" / "last.pt")
    assert (last["epoch"], last["step_in_epoch"]) == (1, 5)


def test_disk_full_keeps_the_previous_checkpoint(tiny_config, runs_dir, recorder, monkeypatch):
    trainer = Trainer(tiny_config(), sink=recorder, out_dir=runs_dir)
    real_save = torch.save

    def full_disk(obj: Any, handle: Any) -> None:
        handle.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    def arm(event: Any) -> None:
        if isinstance(event, EpochEnd) and event.epoch == 2:
            monkeypatch.setattr(torch, "save", full_disk)

    recorder.hooks.append(arm)
    with pytest.raises(CheckpointWriteError, match="No space left on device"):
        trainer.run()
    monkeypatch.setattr(torch, "save", real_save)
    checkpoints = trainer.run_dir / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best.pt", "last.pt"]  # no temp
    assert load(checkpoints / "last.pt")["counters"]["epochs_run"] == 1
    assert runs.read_summary(trainer.run_dir)["status"] == "failed"
    (failed,) = recorder.of("failed")
    assert "last.pt" in failed.error or "best.pt" in failed.error


def test_bad_config_raises_before_training_and_leaves_no_folder(tiny_config, runs_dir, recorder):
    from kan_engine.errors import ConfigError

    trainer = Trainer(tiny_config(**{"model.name": "nope"}), sink=recorder, out_dir=runs_dir)
    with pytest.raises(ConfigError, match="model.name"):
        trainer.run()
    assert not trainer.run_dir.exists() and recorder.events == []


def test_a_refused_run_leaves_no_out_folder_it_made(tiny_config, tmp_path, recorder) -> None:
    from kan_engine.errors import ConfigError

    kept = tmp_path / "kept"
    kept.mkdir()
    for out, gone in ((kept / "new" / "runs", kept / "new"), (kept, None)):
        trainer = Trainer(tiny_config(**{"model.name": "nope"}), sink=recorder, out_dir=out)
        with pytest.raises(ConfigError):
            trainer.run()
        assert not trainer.run_dir.exists()
        assert gone is None or not gone.exists()  # made for the run: removed with it
        assert kept.is_dir()  # there before: kept


def test_a_ctrl_c_inside_a_checkpoint_write_stops_the_run_instead_of_failing_it(
    tiny_config, runs_dir, recorder, monkeypatch
) -> None:
    """torch's zip writer turns a KeyboardInterrupt raised in its write callback into a
    RuntimeError ("unexpected pos"): a second Ctrl-C while a stopping run saved ended it as
    failed, exit 1."""
    trainer = Trainer(tiny_config(**{"train.epochs": 3}), sink=recorder, out_dir=runs_dir)
    real_save = torch.save

    def interrupted_write(obj: Any, handle: Any) -> None:
        monkeypatch.setattr(torch, "save", real_save)  # once: the interrupt's own save works
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise RuntimeError("[enforce fail at inline_container.cc:672] unexpected pos")  # noqa: B904

    def arm(event: Any) -> None:
        if isinstance(event, EpochEnd) and event.epoch == 2:
            monkeypatch.setattr(torch, "save", interrupted_write)

    recorder.hooks.append(arm)
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    checkpoints = trainer.run_dir / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best.pt", "last.pt"]  # no temp
    assert runs.read_summary(trainer.run_dir)["status"] == "stopped"
    assert recorder.of("failed") == []


def test_grid_update_keeps_moments_and_stops_after_until(tiny_config, runs_dir, recorder):
    config = tiny_config(
        **{
            "train.epochs": 1,
            "kan.prob_update_grid": 0.0,
            "kan.grid_update_every": 1,
            "kan.grid_update_until": 5,
        }
    )
    trainer = Trainer(config, sink=recorder, out_dir=runs_dir)
    summary = trainer.run()
    steps = summary["global_step"]
    assert summary["grid_updates_per_layer"] == {"kan.0": 5, "kan.1": 5}
    state = trainer.optimizer.state
    for layer in trainer.kan.values():
        assert int(state[layer.spline_weight]["step"]) == steps  # refits keep the moments
        assert int(state[layer.base_weight]["step"]) == steps


def test_run_dir_names_get_a_suffix_on_collision(tmp_path: Path) -> None:
    first = runs.create_run_dir(tmp_path, "lite", now=0)
    second = runs.create_run_dir(tmp_path, "lite", now=0)
    assert second.name == f"{first.name}-2"
    assert runs.create_run_dir(tmp_path, "../evil name", now=0).parent == tmp_path


def test_config_toml_round_trips(finished_run) -> None:
    run_dir, events, _ = finished_run
    assert tomllib.loads((run_dir / "config.toml").read_text())["model"]["name"] == "kan"


@pytest.mark.slow
def test_grid_updates_do_not_hurt_rapid_kan_training(tiny_config, runs_dir) -> None:
    """Rapid KAN lite (BatchNorm + squash before each KAN layer) once lost all accuracy with grid
    updates (step losses in the thousands, val acc 0.10 after one epoch): refits on 64 rows blew
    up outside the batch and every refit reset the Adam moments. With an update every 2nd step
    it must now train like without."""
    from conftest import Recorder

    def train(every: int) -> tuple[EpochEnd, list[float]]:
        recorder = Recorder()
        overrides = {
            "model.name": "rapid_kan_lite",
            "train.epochs": 1,
            "train.log_every": 1,
            "schedule.warmup_epochs": 0,
            "kan.prob_update_grid": 0.0,
            "kan.grid_update_every": every,
        }
        Trainer(tiny_config(**overrides), sink=recorder, out_dir=runs_dir).run()
        return recorder.of("epoch")[-1], [e.loss for e in recorder.of("step")]

    (plain, plain_losses), (updated, updated_losses) = train(0), train(2)
    assert updated.grid_updates >= 20  # 2 layers, ~11 updates each
    assert max(updated_losses) <= 1.5 * max(plain_losses)  # no spike
    assert updated.train_loss <= 1.25 * plain.train_loss
    assert updated.val_acc >= plain.val_acc - 0.05


def test_cuda_graphs_are_used_only_where_they_can_be(tiny_config, runs_dir, recorder) -> None:
    """The decision, without a GPU: never on the CPU (silently); on CUDA off with a notice that
    names every reason (fp16's scaler, sgd), on with a notice otherwise."""
    on_cpu = Trainer(tiny_config(**{"train.cuda_graphs": True}), sink=recorder, out_dir=runs_dir)
    on_cpu.setup()
    assert on_cpu.graphed is None and not on_cpu._notices
    cuda = torch.device("cuda")  # what setup would pick on a GPU machine
    config = tiny_config(**{"optim.optimizer": "sgd"})
    used, message = cuda_graph.usable(config, cuda, distributed=False, use_scaler=True)
    assert used is False
    assert "fp16" in message and "sgd" in message
    used, message = cuda_graph.usable(tiny_config(), cuda, distributed=False, use_scaler=False)
    assert used is True
    assert "CUDA graph" in message


def test_a_model_that_cannot_be_compiled_still_trains_eagerly() -> None:
    """train.compile is best effort: a failure inside torch.compile runs the frame eagerly."""
    from kan_engine.train_step import best_effort_compile

    def failing_backend(graph: Any, example_inputs: Any) -> Any:
        raise RuntimeError("this backend compiles nothing")

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.SiLU())
    x = torch.randn(5, 4)
    with pytest.raises(Exception, match="compiles nothing"):  # as torch.compile alone does
        torch.compile(model, backend=failing_backend)(x)
    torch._dynamo.reset()
    out = best_effort_compile(model, backend=failing_backend)(x)
    torch.testing.assert_close(out, model(x))
    out.sum().backward()
    assert model[0].weight.grad is not None
    torch._dynamo.reset()
