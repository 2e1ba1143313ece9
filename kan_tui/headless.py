"""Headless training: print the trainer's events, stop cleanly on signals, return an exit code.

The reporter is the trainer's event sink and is called from the training loop, so every handler is
cheap: step events (already sampled by the trainer) update a Rich progress display that redraws at
most four times a second, and grid updates are only counted. On a terminal it shows an epoch bar and
a batch bar with notices and warnings printed above them; when stdout is a file or a pipe it prints
one plain line per epoch and per notice instead, so logs stay readable and greppable, plus a
progress line within an epoch every PROGRESS_EVERY_S seconds or every tenth of the epoch, whichever
comes later (Keras' `verbose=2` rhythm: a log shows life without flooding). Accuracies are
percentages with two decimals, as everywhere else (`formatting.pct`). Either way the
run ends with a summary table. Colour is left to Rich, which honours NO_COLOR.

This module never imports textual (a headless run on a server must not need it) and imports torch
only through the trainer the caller hands in.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn
from rich.table import Table
from rich.text import Text

from kan_engine.errors import KanError
from kan_engine.events import (
    CheckpointWritten,
    EarlyStopped,
    EpochEnd,
    Event,
    Failed,
    Finished,
    GradNormWarning,
    Notice,
    RunStarted,
    StepMetrics,
)
from kan_engine.runs import RunWriteError
from kan_engine.untrusted import printable
from kan_tui import exit_codes
from kan_tui.formatting import count, num, pct, sig
from kan_tui.signals import (
    Stoppable,
    ignore_late_signals,
    stop_on_signals,
)

# gradient-norm warnings printed per epoch; the rest are counted in the epoch line
WARNINGS_PER_EPOCH = 5
PROGRESS_EVERY_S = 30.0  # in a log: at most one progress line per this many seconds...
PROGRESS_SHARE = 0.1  # ...and per this share of an epoch's steps
CLASSES_SHOWN = 20  # class names listed in the run header of the user's own data
USER_DATASETS = ("images", "csv")
RATE_SMOOTHING = 0.2  # weight of the newest throughput sample in the ETA's running average


class FollowingProgress(Progress):
    """A Rich progress display that calls `before_draw` before each redraw (4 per second)."""

    def __init__(self, before_draw: Callable[[], None], *columns: Any, **options: Any) -> None:
        self.before_draw = before_draw  # first: Progress draws while it is set up
        super().__init__(*columns, **options)

    def get_renderables(self) -> Any:
        self.before_draw()
        yield from super().get_renderables()


def _raise_broken_pipe() -> None:
    raise BrokenPipeError(32, "Broken pipe")


class HeadlessReporter:
    """Event sink for headless runs: Rich progress on a terminal, plain lines otherwise."""

    def __init__(
        self, console: Console, interactive: bool, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.console = console
        self.interactive = interactive
        self._clock = clock
        self._steps_done: Callable[[], int] | None = None  # the trainer's host step counter
        self._last_progress = (clock(), 0)  # (when, step of the epoch) of the last progress line
        self._rate: float | None = None  # smoothed samples/s
        self.epochs = 0
        self.batch_size = 1
        self.run_dir = ""
        self.summary: dict[str, Any] | None = None
        self._base_lr_mult = 1.0  # multiplier of the group whose LR is printed as "lr"
        self._regression = False
        self._epoch_seconds: list[float] = []
        self._warnings_this_epoch = 0
        self._progress: Progress | None = None
        self._epoch_task = TaskID(0)
        self._batch_task = TaskID(0)
        self._lost = False  # stdout closed or full: nothing more is printed
        # running totals at the last epoch row, so the epoch line can say this epoch's counts
        self._totals: dict[str, Any] = {"layers": {}, "grid": 0, "warnings": 0, "skipped": 0}
        # Rich's own answer to a closed pipe is SystemExit(1): the run would die unsaved
        console.on_broken_pipe = _raise_broken_pipe  # type: ignore[method-assign]

    def __enter__(self) -> HeadlessReporter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the live display (idempotent), so that what follows prints below it."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def follow(self, steps_done: Callable[[], int]) -> None:
        """Move the batch bar from `steps_done` (the trainer's host-side step counter: no device
        read) at each redraw, not only at the sampled step events every `log_every` steps."""
        self._steps_done = steps_done

    def _sync_bar(self) -> None:
        """Called by the live display before each redraw (its own thread: an int is read)."""
        progress, steps_done = self._progress, self._steps_done
        if steps_done is None or progress is None:
            return
        task = next(t for t in progress.tasks if t.id == self._batch_task)
        if not task.total:
            return
        step = steps_done() % int(task.total)
        if step > task.completed:  # an epoch's end resets the bar; never move it back
            progress.update(self._batch_task, completed=step)

    def __call__(self, event: Event) -> None:
        """Show the event; a stdout that is gone (`| head -1`, a full disk under `> file`) must
        not end a run: the reporter goes quiet, says so once on stderr, and training goes on
        (the run folder holds every event anyway)."""
        if self._lost:
            return
        try:
            self._show(event)
        except OSError as exc:  # BrokenPipeError, ENOSPC
            self._lose_stdout(exc)

    def _lose_stdout(self, exc: OSError) -> None:
        self._lost = True
        devnull = os.open(os.devnull, os.O_WRONLY)
        with contextlib.suppress(OSError, ValueError):
            os.dup2(devnull, sys.stdout.fileno())  # so the exit-time flush has nowhere to fail
        self.console.file = open(os.devnull, "w")  # noqa: SIM115 (lives as long as the console)
        with contextlib.suppress(Exception):
            self.close()
        reason = exc.strerror or type(exc).__name__
        with contextlib.suppress(OSError):
            os.write(2, f"note: stdout is gone ({reason}): training goes on, quietly\n".encode())

    def _show(self, event: Event) -> None:
        match event:
            case StepMetrics():
                self._step(event)
            case EpochEnd():
                self._epoch(event)
            case GradNormWarning():
                self._grad_warning(event)
            case Notice():
                warning = event.level == "warning"
                self._line(
                    f"{'warning' if warning else 'note'}: {event.message}",
                    "yellow" if warning else "cyan",
                )
            case CheckpointWritten(reason="stop" | "manual"):
                self._line(f"checkpoint ({event.reason}, epoch {event.epoch}): {event.path}")
            case EarlyStopped():
                metric, best = "val_acc", pct(event.best_val_acc)
                if event.best_val_rmse is not None:
                    metric, best = "val_rmse", sig(event.best_val_rmse)
                self._line(
                    f"early stop at epoch {event.epoch}: no better {metric} in "
                    f"{count(event.patience, 'epoch')} (best {best} at epoch {event.best_epoch})",
                    "yellow",
                )
            case RunStarted():
                self._started(event)
            case Finished():
                ignore_late_signals()  # summary.json is written: nothing is left to stop
                self.close()
                self.summary = event.summary
                self._summary(summary_rows({"run_dir": self.run_dir, **event.summary}))
            case Failed():
                self.close()

    def _line(self, text: str, style: str | None = None) -> None:
        # soft_wrap: a log line is never cut or wrapped at the console width (80 in a pipe);
        # printable: lines quote paths, names and data (CSV headers, class folders) as they are
        self.console.print(
            printable(text), style=style, markup=False, highlight=False, soft_wrap=True
        )

    def _started(self, event: RunStarted) -> None:
        self.run_dir = event.run_dir
        totals = event.totals  # a resume's counts so far: the next epoch row counts on from them
        layers = dict(totals.get("grid_updates_per_layer", {}))
        self._totals = {
            "layers": layers,
            "grid": sum(layers.values()),
            "warnings": totals.get("grad_norm_warnings", 0),
            "skipped": totals.get("skipped_steps", 0),
        }
        self.epochs = event.epochs
        self.batch_size = int(event.config.get("train", {}).get("batch_size", 1))
        mults = event.config.get("optim", {}).get("lr_mult", {})
        self._base_lr_mult = float(mults.get("cnn", 1.0))
        resumed = f", resuming at epoch {event.start_epoch}" if event.start_epoch > 1 else ""
        self._line(
            f"run {event.run_dir}: {event.config.get('model', {}).get('name', '?')} "
            f"({_millions(event.params.get('total', 0))} params) on {event.dataset} "
            f"(train {event.train_size}, val {event.val_size}, test {event.test_size}), "
            f"device {event.device}, {count(event.epochs, 'epoch')}{resumed}"
        )
        if event.data:
            self._line(f"data {event.data}")
        if event.task == "regression":
            self._regression = True
        elif event.classes and event.dataset in USER_DATASETS:  # found in the user's files
            shown = ", ".join(event.classes[:CLASSES_SHOWN])
            if len(event.classes) > CLASSES_SHOWN:
                shown += f", ... ({len(event.classes)} in all)"
            self._line(f"classes {shown}")
        if not self.interactive:
            return
        self._progress = FollowingProgress(
            self._sync_bar,
            TextColumn("{task.description}"),
            BarColumn(bar_width=12),  # the whole batch row fits 80 columns
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            console=self.console,
            refresh_per_second=4,
        )
        self._epoch_task = self._progress.add_task(
            "epoch", total=event.epochs, completed=event.start_epoch - 1, info=""
        )
        self._batch_task = self._progress.add_task("batch", total=event.steps_per_epoch, info="")
        self._progress.start()

    def _step(self, event: StepMetrics) -> None:
        sample = event.samples_per_s
        if math.isfinite(sample) and sample > 0:  # the ETA follows a running average, not a jump
            old = self._rate
            self._rate = sample if old is None else old + RATE_SMOOTHING * (sample - old)
        rate = max(self._rate or 0.0, 1e-9)
        epoch_left = (event.steps_per_epoch - event.step) * self.batch_size / rate
        per_epoch = (
            sum(self._epoch_seconds) / len(self._epoch_seconds)
            if self._epoch_seconds
            else event.steps_per_epoch * self.batch_size / rate
        )
        run_left = epoch_left + (self.epochs - event.epoch) * per_epoch
        score = f"rmse {sig(event.rmse)}" if event.rmse is not None else f"acc {pct(event.acc)}"
        info = f"loss {self._loss(event.loss)} {score} lr {self._lr(event.lr):.2g} {rate:,.0f}/s"
        if self._progress is None:
            self._progress_line(event, f"{info}  epoch ETA {_clock(epoch_left)}")
            return
        self._progress.update(
            self._batch_task, completed=event.step, info=f"{info} ETA {_clock(epoch_left)}"
        )
        self._progress.update(self._epoch_task, info=f"ETA {_clock(run_left)}")

    def _progress_line(self, event: StepMetrics, info: str) -> None:
        """In a log: a line within the epoch once both PROGRESS_EVERY_S seconds and
        PROGRESS_SHARE of its steps have passed since the last one (or since it began)."""
        now = self._clock()
        when, step = self._last_progress
        if step > event.step:  # a new epoch began since
            step = 0
        due = now - when >= PROGRESS_EVERY_S
        if not due or event.step - step < PROGRESS_SHARE * event.steps_per_epoch:
            return
        self._last_progress = (now, event.step)
        self._line(
            f"epoch {event.epoch}/{self.epochs}  step {event.step}/{event.steps_per_epoch}  {info}"
        )

    def _epoch(self, event: EpochEnd) -> None:
        self._epoch_seconds.append(event.seconds)
        self._warnings_this_epoch = 0
        self._last_progress = (self._clock(), 0)
        parts = [f"epoch {event.epoch}/{self.epochs}", f"train_loss {self._loss(event.train_loss)}"]
        if event.task == "regression":
            parts += [f"{name} {sig(value)}" for name, value in event.metrics.items()]
        else:
            parts += [
                f"train_acc {pct(event.train_acc)}",
                f"val_loss {event.val_loss:.3f}",
                f"val_acc {pct(event.val_acc)}",
            ]
            if event.test_acc is not None:
                parts.append(f"test_acc {pct(event.test_acc)}")
        if event.grid_size is not None:
            parts.append(f"grid {event.grid_size}")
        grid, warnings, skipped = self._this_epoch(event)
        parts += [f"lr {self._lr(event.lr):.3g}", f"grid_updates_this_epoch {grid}"]
        if warnings:
            parts.append(f"grad_warnings_this_epoch {warnings}")
        if skipped:
            parts.append(f"skipped_steps_this_epoch {skipped}")
        parts.append(f"{event.seconds:.1f}s")
        self._line("  ".join(parts))
        if self._progress is not None:
            best = f"best val_acc {pct(event.best_val_acc)} (epoch {event.best_epoch})"
            if event.best_val_rmse is not None:
                best = f"best val_rmse {sig(event.best_val_rmse)} (epoch {event.best_epoch})"
            self._progress.update(self._epoch_task, completed=event.epoch, info=best)
            self._progress.reset(self._batch_task, info="")

    def _loss(self, value: float) -> str:
        """A classification's cross-entropy to 3 decimals; a regression's MSE (standardised
        targets) falls far below 0.001, so it keeps its significant digits."""
        return num(value) if self._regression else f"{value:.3f}"

    def _this_epoch(self, event: EpochEnd) -> tuple[int, int, int]:
        """(grid-update steps, gradient-norm warnings, skipped steps) of this epoch alone: the
        event holds running totals, and its grid count is layer refits (every layer is refit at
        each grid-update step), so the steps are the largest per-layer increase."""
        layers = event.grid_updates_per_layer or {}
        grid = max(
            (n - self._totals["layers"].get(name, 0) for name, n in layers.items()),
            default=event.grid_updates - self._totals["grid"],
        )
        counts = (
            grid,
            event.grad_norm_warnings - self._totals["warnings"],
            event.skipped_steps - self._totals["skipped"],
        )
        self._totals = {
            "layers": dict(layers),
            "grid": event.grid_updates,
            "warnings": event.grad_norm_warnings,
            "skipped": event.skipped_steps,
        }
        return counts

    def _grad_warning(self, event: GradNormWarning) -> None:
        """Printed up to the cap per epoch; a warning naming the layer that went non-finite (the
        first of a streak) is always printed and not counted, so spikes cannot hide it."""
        if not event.layer:
            self._warnings_this_epoch += 1
            if self._warnings_this_epoch > WARNINGS_PER_EPOCH:
                return
        layer = f" in {event.layer}" if event.layer else ""
        more = (
            " (further warnings this epoch are only counted)"
            if (self._warnings_this_epoch == WARNINGS_PER_EPOCH)
            else ""
        )
        self._line(
            f"warning: gradient norm {event.norm:.3g} ({event.reason}{layer}, threshold "
            f"{event.threshold:.3g}) at step {event.global_step}: {event.action}{more}",
            "yellow",
        )

    def _summary(self, rows: dict[str, str]) -> None:
        """A boxed table on a terminal; aligned `label  value` lines in a log (no box)."""
        if not self.interactive:
            width = max(map(len, rows)) + 2
            for label, value in rows.items():
                self._line(f"{label:<{width}}{value}")
            return
        table = Table(title="summary", box=box.SIMPLE, show_header=False)
        table.add_column("label", style="bold")
        table.add_column("value")
        for label, value in rows.items():
            table.add_row(label, Text(printable(value)))  # a str cell would be Rich markup
        self.console.print(table)

    def _lr(self, lrs: dict[str, float]) -> float:
        """The base LR times the schedule factor: what `--lr` set, as the schedule moves it."""
        return lrs.get("cnn", math.nan) / self._base_lr_mult


def summary_rows(summary: dict[str, Any]) -> dict[str, str]:
    """The run's outcome as label -> text, for the table at the end (missing entries left out)."""
    params = summary.get("params")
    best_epoch = summary.get("best_epoch") or None  # 0: no epoch finished, so there is no best
    seconds = summary.get("seconds")
    rows = {
        "status": summary.get("status"),
        "epochs run": summary.get("epochs_run"),
        "best epoch": best_epoch,
        "best val_acc": _pct_or_none(summary.get("best_val_acc")) if best_epoch else None,
        "test_acc": _pct_or_none(summary.get("test_acc")),
        "best val_rmse": _sig_or_none(summary.get("best_val_rmse")) if best_epoch else None,
        **{key: _sig_or_none(summary.get(key)) for key in ("test_rmse", "test_mae", "test_r2")},
        "seconds": None if seconds is None else f"{seconds:.1f}",
        "params": _millions(params.get("total", 0)) if isinstance(params, dict) else params,
        "device": summary.get("device"),
        "run folder": summary.get("run_dir"),
    }
    return {label: str(value) for label, value in rows.items() if value is not None}


def train(trainer: Stoppable, *, debug: bool = False, quiet: bool = False) -> int:
    """Run in the foreground and return the exit code; KanError (bad config, no data) propagates,
    except a file of the run that cannot be written (a full disk): that is a failed run, exit 1.

    Ctrl-C is the trainer's own business (the first one finishes the step, writes `last.pt` and
    the `stopped` summary, then raises KeyboardInterrupt; a second one raises at once): here it
    only becomes exit code 130. SIGHUP (a dropped SSH session) and SIGTERM (a scheduler, torchrun)
    get the same clean stop, and exit 128 + their number. `quiet` (torchrun ranks other than 0,
    whose trainer emits nothing) leaves out the stop messages; failures are still printed.
    """
    try:
        with stop_on_signals(trainer, quiet=quiet) as caught:
            summary = trainer.run()
    except RunWriteError as exc:
        if debug:
            traceback.print_exc()
        print(f"error: training failed: {printable(exc)}", file=sys.stderr)
        return exit_codes.FAILED
    except KanError:
        raise
    except KeyboardInterrupt:
        if not quiet:
            run_dir = getattr(trainer, "run_dir", None)
            if run_dir is not None and not os.path.isdir(run_dir):
                message = "interrupted before training started: no run folder was kept"
            else:
                message = "interrupted: the run can continue with `kan-tui resume`"
            print(message, file=sys.stderr)
        return exit_codes.for_signal(caught[0]) if caught else exit_codes.INTERRUPTED
    except Exception as exc:
        if debug:
            traceback.print_exc()
        print(f"error: training failed: {type(exc).__name__}: {printable(exc)}", file=sys.stderr)
        return exit_codes.FAILED
    status = summary.get("status", "failed")
    if status == "stopped":
        return exit_codes.for_signal(caught[0]) if caught else exit_codes.INTERRUPTED
    return exit_codes.for_status(status)


def _sig_or_none(value: Any) -> str | None:
    return sig(float(value)) if isinstance(value, (int, float)) else None


def _pct_or_none(value: Any) -> str | None:
    """A summary's accuracy as a percentage; a value that is no number (a damaged or edited
    summary.json) as it is, and None when absent."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return pct(value)
    return str(value)


def _millions(count: int) -> str:
    return f"{count / 1e6:.2f} M" if count >= 100_000 else f"{count:,}"


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "-:--:--"
    whole = int(seconds)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"
