"""The run folder as a training run writes it: its lock, `metrics.jsonl`, checkpoints, summary.

Rank 0 alone writes (under torchrun every rank holds the same state, so one copy is all there is
to write) and reports events, for every rank; the other ranks' calls are no-ops. The lock
(`run_lock`) is taken before anything in the folder is written and held until the run returns, so
two processes never train one folder. A resume's clean-up happens under the lock too: the
temporary files of writes a kill cut short go, and `metrics.jsonl` is cut back to the offset that
`last.pt` recorded (the rows after it belong to steps about to be replayed), so each epoch row
appears exactly once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kan_engine import checkpoint as ckpt
from kan_engine import resume_plan, run_lock, runs
from kan_engine.config import RunConfig, apply_overrides
from kan_engine.distributed import Dist
from kan_engine.errors import KanError, RunDirError
from kan_engine.events import CheckpointWritten, Event, EventSink, Failed, Notice


def create(
    out_dir: Path,
    preset_name: str,
    config: RunConfig,
    dist: Dist,
    init_weights: dict[str, torch.Tensor] | None = None,
) -> tuple[Path, RunConfig]:
    """A new run folder with its config.toml (made by rank 0; every rank gets its path), and
    the config it holds. `init_weights` (a model state dict) are written into the folder first
    (`runs.INIT`), and the config's `model.init_from` names them: a start-over resume of a run
    killed in its first epoch starts from them again, and the folder is whole on its own."""
    if init_weights is not None:
        config = apply_overrides(config, {"model.init_from": runs.INIT}, "init_weights")

    def make() -> Path:
        path = runs.create_run_dir(Path(out_dir), preset_name)
        if init_weights is not None:
            ckpt.save(path / runs.INIT, {"model": init_weights})
        runs.write_config(path, config)
        return path

    return dist.on_main(make), config


class RunFolder:
    """One run folder; events go to its `metrics.jsonl` and to `sink`."""

    def __init__(self, path: Path, dist: Dist, sink: EventSink) -> None:
        self.path = Path(path)
        self.dist = dist
        self.sink = sink
        self.metrics: runs.MetricsLog | None = None  # open on rank 0 while the run trains
        self._lock: run_lock.RunLock | None = None

    @contextlib.contextmanager
    def claimed(self, plan: resume_plan.ResumePlan | None) -> Iterator[None]:
        """Hold the folder's lock (rank 0) for the block. A resume also checks that last.pt is
        still the one it read, since another process may have trained the run before the lock
        was free. Raises RunLockedError when another process holds the lock."""
        self.dist.on_main(lambda: self._claim(plan))
        try:
            yield
        finally:
            if self._lock is not None:
                self._lock.release()

    def _claim(self, plan: resume_plan.ResumePlan | None) -> None:
        lock = run_lock.RunLock(self.path)
        lock.acquire()
        try:
            if plan is not None:
                plan.check_unchanged()
        except BaseException:
            lock.release()
            raise
        self._lock = lock

    @contextlib.contextmanager
    def logging(self, plan: resume_plan.ResumePlan | None, config: RunConfig) -> Iterator[None]:
        """`metrics.jsonl` open for the block (rank 0). Before it opens, a resume's leftovers
        go, config.toml gets an extension's epochs, the log is cut back to the checkpoint's
        offset."""
        if self.dist.is_main:
            if plan is not None:
                runs.remove_leftovers(self.path)
                if plan.write_config:
                    runs.write_config(self.path, config)
                runs.truncate_metrics(self.path, plan.metrics_offset)
            self.metrics = runs.MetricsLog(self.path / runs.METRICS)
        try:
            yield
        finally:
            if self.metrics is not None:
                self.metrics.close()

    def discard(self) -> None:
        """Delete the folder (rank 0), and the `--out` folders made for it: a new run that
        trained nothing goes again, leaving nothing behind."""
        if self.dist.is_main:
            runs.remove_new_run_dir(self.path)

    def emit(self, event: Event) -> None:
        if not self.dist.is_main:  # rank 0 reports for every rank
            return
        self.metrics.write(event.to_record())
        self.sink(event)

    def report_failure(self, event: Failed) -> None:
        """Log (where the log is open) and report a failure, on every rank; a log that cannot be
        written is tolerated (a full disk is a likely cause)."""
        if self.metrics is not None:
            with contextlib.suppress(KanError):  # runs.RunWriteError: the log cannot be written
                self.metrics.write(event.to_record())
        self.sink(event)

    def save_checkpoint(
        self, which: str, reason: str, epoch: int, state: Callable[[], dict[str, Any]]
    ) -> None:
        """Write `state()` to last.pt or best.pt (`which`) and report it."""
        if not self.dist.is_main:  # every rank holds the same state; rank 0 writes it
            return
        path = runs.checkpoint_path(self.path, which)
        ckpt.save(path, state())
        self.emit(CheckpointWritten(str(path), epoch, reason))

    def load_best(self, model: nn.Module, device: torch.device) -> bool:
        """best.pt's evaluated weights into `model` (for the final test); False when there is no
        best.pt or it is damaged (a warning: a damaged best.pt costs the test, not the run)."""
        best = runs.checkpoint_path(self.path, "best")
        if not best.exists():
            return False
        try:
            state = ckpt.load(best, device)
            with ckpt.fitting(best, str(self.path / runs.CONFIG)):
                model.load_state_dict(ckpt.evaluated_weights(state))
        except RunDirError as exc:
            self.emit(Notice(f"{exc}: no test accuracy", "warning"))
            return False
        return True

    def write_summary(self, summary: dict[str, Any]) -> None:
        if self.dist.is_main:
            runs.write_summary(self.path, summary)
