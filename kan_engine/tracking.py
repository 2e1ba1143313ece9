"""Experiment trackers (`log.report_to`): the run's metrics where people already look.

Why a sink. The trainer already reports everything as typed events (`events.py`), read back from
the device at most once per `log_every` steps; a tracker is one more consumer of that stream, so it
adds no device sync and sees exactly what `metrics.jsonl` and the dashboard see. The run folder
stays the source of truth: a tracker that cannot start (not installed) or fails later (a full disk)
says so once, as a warning notice, and the run goes on without it.

TensorBoard is written through its own client (`torch.utils.tensorboard.SummaryWriter`) into
`<run>/tensorboard/`: step scalars against the global step (`step/...`), epoch scalars against
the epoch (`epoch/...`), the resolved config and the summary as text. A classification logs its
accuracies, a regression its RMSE, MAE and R² (and a grid schedule its grid size), under the
names of the epoch rows (`val_acc`, `val_rmse`, `test_r2`, `grid_size`).

MLflow is written through its own client (`MlflowClient`, never the fluent global state, so two
runs of one process do not share a run) into `$MLFLOW_TRACKING_URI` when that is set, else a
local SQLite store beside the run folders (`<out>/mlflow.db`; MLflow 3 refuses its old file
store): one MLflow run per run folder, in the experiment `kan-tui`, with the config as params
(dotted keys), the same step and epoch scalars, the summary's numbers as `summary/...` metrics
and its status. A resumed run continues its MLflow run (found by the run folder's tag), so
its metrics are one history.

W&B is written through `wandb.init` (console capture off, silent) into `<run>/wandb/`, offline
unless `$WANDB_MODE` says otherwise or `$WANDB_API_KEY` is set; the run's id is derived from the
run folder, so a resume continues it (`resume="allow"`). Step scalars plot against
`global_step`, epoch scalars against `epoch` (`define_metric`), the summary's numbers go to the
W&B summary.

trackio is written through its own API into its local store (`$TRACKIO_DIR`, by default in the
Hugging Face cache), project `kan-tui`, one trackio run per run folder (named by it; a resume
continues it); what trackio prints about itself is kept out of the run's log.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from kan_engine.config import RunConfig, dotted_items
from kan_engine.events import EpochEnd, Event, Failed, Finished, Notice, RunStarted, StepMetrics

EventSink = Callable[[Event], None]
FOLDER = "tensorboard"  # inside the run folder
MLFLOW_STORE = "mlflow.db"  # beside the run folders, unless $MLFLOW_TRACKING_URI says otherwise
EXPERIMENT = "kan-tui"
RUN_TAG = "kan_tui.run_dir"
ENDED_WELL = ("finished", "early_stopped", "stopped")  # summary statuses that are no failure
MLFLOW_STATUS = {"finished": "FINISHED", "early_stopped": "FINISHED", "stopped": "KILLED"}
PARAM_MAX = 500  # characters of an MLflow param value
BATCH_MAX = 100  # params per log_batch call


class Tracker(Protocol):
    name: str

    def __call__(self, event: Event) -> None: ...


class TensorBoardTracker:
    """Writes the event stream as TensorBoard scalars; opened at `RunStarted` (the run folder
    exists from then on), closed at `Finished` / `Failed`."""

    name = "tensorboard"

    def __init__(self) -> None:
        self.writer: Any = None

    def __call__(self, event: Event) -> None:
        match event:
            case RunStarted():
                from torch.utils.tensorboard import SummaryWriter  # ImportError: not installed

                self.writer = SummaryWriter(log_dir=str(Path(event.run_dir) / FOLDER))
                self.writer.add_text("config", _code(event.config), 0)
            case StepMetrics() if self.writer is not None:
                step = event.global_step
                for key, value in _under("step", step_scalars(event)).items():
                    self.writer.add_scalar(key, value, step)
            case EpochEnd() if self.writer is not None:
                for key, value in _under("epoch", epoch_scalars(event)).items():
                    self.writer.add_scalar(key, value, event.epoch)
                self.writer.flush()
            case Finished() if self.writer is not None:
                self.writer.add_text("summary", _code(event.summary), 0)
                self.close()
            case Failed() if self.writer is not None:
                self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class MlflowTracker:
    """Writes the event stream to an MLflow run; opened at `RunStarted`, ended at `Finished`
    (its status) or `Failed`."""

    name = "mlflow"

    def __init__(self) -> None:
        self.client: Any = None
        self.run_id = ""

    def __call__(self, event: Event) -> None:
        match event:
            case RunStarted():
                self._open(event)
            case StepMetrics() if self.client is not None:
                self._log(step_scalars(event), "step", event.global_step)
            case EpochEnd() if self.client is not None:
                self._log(epoch_scalars(event), "epoch", event.epoch)
            case Finished() if self.client is not None:
                summary = {k: v for k, v in event.summary.items() if _is_number(v)}
                self._log(summary, "summary", 0)
                status = MLFLOW_STATUS.get(str(event.summary.get("status")), "FAILED")
                self.client.set_terminated(self.run_id, status)
                self.client = None
            case Failed() if self.client is not None:
                self.client.set_terminated(self.run_id, "FAILED")
                self.client = None

    def _open(self, event: RunStarted) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient  # ImportError: not installed

        # after the import, which sets its loggers up: its INFO lines are not our log's
        logging.getLogger("mlflow").setLevel(logging.WARNING)

        run_dir = Path(event.run_dir).resolve()
        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{run_dir.parent / MLFLOW_STORE}"
        client = MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(EXPERIMENT)
        experiment = found.experiment_id if found else client.create_experiment(EXPERIMENT)
        earlier = client.search_runs(
            [experiment], filter_string=f"tags.`{RUN_TAG}` = '{_quoted(str(run_dir))}'"
        )
        if earlier:  # a resume: the same MLflow run goes on (its params are set already)
            self.run_id = earlier[0].info.run_id
            client.update_run(self.run_id, "RUNNING")
        else:
            run = client.create_run(experiment, run_name=run_dir.name, tags={RUN_TAG: str(run_dir)})
            self.run_id = run.info.run_id
            params = [Param(k, str(v)[:PARAM_MAX]) for k, v in dotted_items(event.config)]
            for start in range(0, len(params), BATCH_MAX):
                client.log_batch(self.run_id, params=params[start : start + BATCH_MAX])
        self.client = client

    def _log(self, scalars: dict[str, float], prefix: str, step: int) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        named = _under(prefix, scalars)
        metrics = [Metric(key, float(value), stamp, step) for key, value in named.items()]
        self.client.log_batch(self.run_id, metrics=metrics)


class WandbTracker:
    """Writes the event stream to a W&B run (offline by default); opened at `RunStarted`,
    finished at `Finished` / `Failed`."""

    name = "wandb"

    def __init__(self) -> None:
        self.run: Any = None

    def __call__(self, event: Event) -> None:
        match event:
            case RunStarted():
                self._open(event)
            case StepMetrics() if self.run is not None:
                scalars = _under("step", step_scalars(event))
                self.run.log({"global_step": event.global_step, **scalars})
            case EpochEnd() if self.run is not None:
                scalars = _under("epoch", epoch_scalars(event))
                self.run.log({"epoch": event.epoch, **scalars})
            case Finished() if self.run is not None:
                summary = {k: v for k, v in event.summary.items() if _is_number(v)}
                self.run.summary.update(summary)
                failed = event.summary.get("status") not in ENDED_WELL
                self.run.finish(exit_code=int(failed))
                self.run = None
            case Failed() if self.run is not None:
                self.run.finish(exit_code=1)
                self.run = None

    def _open(self, event: RunStarted) -> None:
        import wandb  # ImportError: not installed

        run_dir = Path(event.run_dir).resolve()
        mode = os.environ.get("WANDB_MODE") or (
            "online" if os.environ.get("WANDB_API_KEY") else "offline"
        )
        run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", EXPERIMENT),
            name=run_dir.name,
            id=hashlib.sha1(str(run_dir).encode()).hexdigest()[:16],
            resume="allow",
            dir=str(run_dir),
            mode=mode,
            config=event.config,
            reinit="create_new",
            settings=wandb.Settings(console="off", silent=True),
        )
        run.define_metric("global_step")
        run.define_metric("step/*", step_metric="global_step")
        run.define_metric("epoch")
        run.define_metric("epoch/*", step_metric="epoch")
        self.run = run


class TrackioTracker:
    """Writes the event stream to a trackio run; opened at `RunStarted`, finished at
    `Finished` / `Failed`."""

    name = "trackio"

    def __init__(self) -> None:
        self.run: Any = None
        self.step = 0  # the last global step logged

    def __call__(self, event: Event) -> None:
        match event:
            case RunStarted():
                import trackio  # ImportError: not installed

                with contextlib.redirect_stdout(io.StringIO()):  # its banner is not our log
                    self.run = trackio.init(
                        project=EXPERIMENT,
                        name=Path(event.run_dir).resolve().name,
                        config=event.config,
                        resume="allow",
                    )
            case StepMetrics() if self.run is not None:
                self.step = event.global_step
                scalars = _under("step", step_scalars(event))
                self.run.log(scalars, step=self.step)
            case EpochEnd() if self.run is not None:  # at the last step seen: one step axis
                scalars = _under("epoch", epoch_scalars(event))
                self.run.log({"epoch": event.epoch, **scalars}, step=self.step)
            case Finished() | Failed() if self.run is not None:
                import trackio

                with contextlib.redirect_stdout(io.StringIO()):
                    trackio.finish()  # the module's: it also forgets the run (its atexit would
                self.run = None  # finish it again, printing)


def _under(prefix: str, scalars: dict[str, float]) -> dict[str, float]:
    """`step/loss`, `epoch/val_acc`: one namespace per axis, the same in every tracker."""
    return {f"{prefix}/{key}": value for key, value in scalars.items()}


def _quoted(text: str) -> str:
    """Text inside an MLflow filter's single quotes."""
    return text.replace("\\", "\\\\").replace("'", "\\'")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def step_scalars(event: StepMetrics) -> dict[str, float]:
    """The numbers of a step event that a tracker plots: its task's training metric (accuracy,
    or a regression's RMSE; the other is None and left out) among them."""
    scalars = {"loss": event.loss, "acc": event.acc, "rmse": event.rmse}
    scalars |= {"grad_norm": event.grad_norm, "samples_per_s": event.samples_per_s}
    scalars |= {f"lr_{group}": lr for group, lr in event.lr.items()}
    return _numbers(scalars)


def epoch_scalars(event: EpochEnd) -> dict[str, float]:
    """The numbers of an epoch row that a tracker plots (running totals as they are recorded):
    a classification's accuracies or a regression's `metrics` (RMSE, MAE, R² of each split
    evaluated), whichever the row holds, and the grid of the epoch under a grid schedule."""
    scalars = {
        "train_loss": event.train_loss,
        "train_acc": event.train_acc,
        "val_loss": event.val_loss,
        "val_acc": event.val_acc,
        "best_val_acc": event.best_val_acc,
        "test_acc": event.test_acc,
        **event.metrics,
        "best_val_rmse": event.best_val_rmse,
        "grid_size": event.grid_size,
        "grid_updates": event.grid_updates,
        "grad_norm_warnings": event.grad_norm_warnings,
        "samples_per_s": event.samples_per_s,
    }
    scalars |= {f"outside_grid_{layer}": share for layer, share in event.outside_grid.items()}
    return _numbers(scalars)


def _numbers(scalars: dict[str, float | int | None]) -> dict[str, float]:
    """The scalars that hold a value, as floats: a metric of the other task (None) is no point."""
    return {key: float(value) for key, value in scalars.items() if value is not None}


TRACKERS: dict[str, Callable[[], Tracker]] = {
    "tensorboard": TensorBoardTracker,
    "mlflow": MlflowTracker,
    "wandb": WandbTracker,
    "trackio": TrackioTracker,
}


def with_trackers(sink: EventSink, config: RunConfig) -> EventSink:
    """`sink`, and after it every tracker `log.report_to` names; `sink` itself when none."""
    trackers: list[Tracker] = [TRACKERS[name]() for name in config.log.report_to]
    if not trackers:
        return sink

    def tee(event: Event) -> None:
        sink(event)
        for tracker in list(trackers):
            try:
                tracker(event)
            except Exception as exc:  # any failure of a tracker costs the tracker, not the run
                trackers.remove(tracker)
                sink(Notice(_failure(tracker.name, exc), "warning"))

    return tee


def _failure(name: str, exc: Exception) -> str:
    if isinstance(exc, ImportError):
        extra = f"pip install 'kan-tui[{name}]'"  # each tracker is an extra of its own name
        return f"log.report_to: {name} is not installed ({extra}): not logging to it"
    reason = " ".join(str(exc).split())[:200] or type(exc).__name__
    return f"log.report_to: {name} failed ({reason}): not logging to it any more"


def _code(data: dict[str, Any]) -> str:
    """JSON as a Markdown code block: TensorBoard's text plugin renders Markdown."""
    return "```\n" + json.dumps(data, indent=2, default=str) + "\n```"
