"""The training loop: read `_train` top to bottom; everything else is a named helper.

One `Trainer` is one run folder (`runs.py`). It runs in the caller's thread (headless) or in a
background thread (the TUI), reports through typed events to a sink, and takes `pause`, `resume`,
`stop` and `request_checkpoint` from any thread; the flags are read between steps, so a control
never interrupts a step and the loop never waits on the sink or the screen.

Host syncs. Per-step values (loss, correct count, gradient norm, a finite flag) stay on the device
in `PendingSteps` and are read back together at most once per `log_every` steps. Skipping a
non-finite step therefore cannot branch on the host on CUDA: there the optimizer is fused and gets
the flag as `found_inf` (the mechanism GradScaler uses), so the fused kernel skips the update on
the device; the flag is looked at on the next read-back. On the CPU (and MPS) the flag is read
every step: there is no asynchronous device queue to stall, so the read costs nothing. With fp16
the GradScaler reads its own overflow flag every step anyway. Steps with a grid update read back
once too, because a refit must not see a non-finite batch (the refit's solve dominates them).
With `train.cuda_graphs` on CUDA the whole step (forward, backward, clipping, the fused step with
its `found_inf`) is captured once and replayed (`cuda_graph.py`), the LRs are device tensors, and
steps with a grid update or a short batch run eagerly in between.

Non-finite policy. A non-finite loss or gradient norm skips the step (counted, with a warning
naming the first layer whose output or gradient went non-finite: the batch is re-run with hooks,
only then). MAX_BAD_STREAK skipped steps in a row restore the in-memory copy of the last epoch end
and halve every LR; after MAX_RESTORES restores the next streak stops the run as `diverged`.

Resume. `last.pt` holds the position (epoch, steps done in it) and the byte offset of
`metrics.jsonl` when it was written. `from_run_dir` checks the folder first (`resume_plan`: the
config.toml must agree with the config in last.pt, a run that is over is not resumed), `run` cuts
`metrics.jsonl` back to that offset (the rows after it belong to steps about to be replayed),
reloads every state, and the data order, a pure function of (seed, epoch), is replayed with
`skip`; so each epoch row appears exactly once and the weights equal those of an uninterrupted
run. `run` holds the run folder's lock (`run_lock`) from before anything in it is written until it
returns, so two processes never train one folder.

Many processes (torchrun, see `distributed.py`). The model is wrapped in DistributedDataParallel
without the per-forward buffer broadcast (`distributed.wrap`): the KAN grids are buffers, and they
stay identical because every rank makes the same grid update decision (the seeded `grid_rng`) on
the same samples (the step's inputs gathered from every rank). BatchNorm running statistics, the
only buffers that drift apart, are averaged at each epoch end. Whether a step is skipped is
all-reduced, the stop flag is agreed on at logging steps and epoch starts, and the train,
validation and test sums are all-reduced, so every rank takes the same branches and reaches the
same collectives. Rank 0 alone writes the run folder and emits events; checkpoints hold the
unwrapped model, so they resume in one process or in many.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import random
import shutil
import signal
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kan_engine import checkpoint as ckpt
from kan_engine import cuda_graph, distributed, models, optim, resume_plan, run_lock, runs
from kan_engine import data as data_mod
from kan_engine.config import RunConfig, check_names, to_data
from kan_engine.ema import WeightAverage
from kan_engine.errors import KanError, RunDirError
from kan_engine.events import (
    CheckpointWritten,
    EarlyStopped,
    EpochEnd,
    Event,
    EventSink,
    Failed,
    Finished,
    GradNormWarning,
    GridUpdated,
    Notice,
    RunStarted,
    StepMetrics,
)
from kan_engine.monitor import GradNormMonitor, PendingSteps, find_nonfinite_layer, keep_buffers
from kan_engine.run_setup import build_model, eval_split, pick_device, precision, seed_everything

MAX_BAD_STREAK = 3  # non-finite steps in a row before restoring the last good state
MAX_RESTORES = 2  # restores (each halving the LR) before the run is declared diverged
WIDE_OUTSIDE = 0.05  # share of first-KAN-layer inputs outside the grid worth a warning
# what `_checkpoint_state` writes and a resume reads: a last.pt without one of them is refused
RESUME_KEYS = resume_plan.RESUME_KEYS


@dataclass
class Counters:
    """Everything the loop counts that a resume must continue from (stored in checkpoints)."""

    global_step: int = 0
    grid_updates: dict[str, int] = field(default_factory=dict)
    grad_norm_warnings: int = 0
    skipped_steps: int = 0
    bad_streak: int = 0
    restores: int = 0
    best_val_acc: float = -1.0
    best_epoch: int = 0
    patience_from: int = 0  # early stopping counts stale epochs from here (an extended run)
    epochs_run: int = 0
    seconds: float = 0.0  # finished epochs
    # the epoch in progress
    epoch_loss: float = 0.0  # sum of per-sample losses of applied steps
    epoch_correct: float = 0.0
    epoch_samples: int = 0
    epoch_seconds: float = 0.0


@dataclass
class Window:
    """Host-side sums over the current logging interval (filled at read-back)."""

    loss: float = 0.0
    correct: float = 0.0
    samples: int = 0
    norm: float = float("nan")
    started: float = field(default_factory=time.perf_counter)


class Trainer:
    def __init__(
        self,
        config: RunConfig,
        *,
        sink: EventSink,
        out_dir: Path = Path("runs"),
        preset_name: str = "custom",
        run_dir: Path | None = None,
        raw: data_mod.datasets.Raw | None = None,
    ) -> None:
        """Creates the run folder (with config.toml) unless `run_dir` names an existing one
        (`from_run_dir` does that). Nothing heavy happens until `setup()` / `run()`. `raw`: the
        data as `data.read` gave it (the CLI reads and checks it before making the folder)."""
        self.config = config
        self.sink = sink
        self.preset_name = preset_name
        self._fresh = run_dir is None
        self.dist = distributed.current()  # rank 0 of many, or the only process
        if run_dir is None:

            def create() -> Path:
                path = runs.create_run_dir(Path(out_dir), preset_name)
                runs.write_config(path, config)
                return path

            run_dir = self.dist.on_main(create)
        self.run_dir = Path(run_dir)
        self._resume: dict[str, Any] | None = None
        self._metrics_offset: int | None = None  # where a resume cuts metrics.jsonl back to
        self._plan: resume_plan.ResumePlan | None = None
        self._lock: run_lock.RunLock | None = None  # held by rank 0 while `run` trains
        self._pause = threading.Event()
        self._stop = threading.Event()
        self._checkpoint_now = threading.Event()
        self._wake = threading.Event()
        self._interrupted = False
        self._consistent = True  # the in-memory state is a position a checkpoint may record
        self.model: nn.Module | None = None
        self.epoch = 1
        self.step_in_epoch = 0
        self.c = Counters()
        self.diverged = False
        self.forward_step = 0  # global step of the forward in progress (diagnosis re-runs too)
        self.graphed: cuda_graph.GraphedStep | None = None
        self._notices: list[Notice] = []
        self._raw = raw

    @classmethod
    def from_run_dir(
        cls,
        run_dir: Path,
        *,
        sink: EventSink,
        epochs: int | None = None,
        plan: resume_plan.ResumePlan | None = None,
    ) -> Trainer:
        """Continue a run from `checkpoints/last.pt`, with the run folder's config.toml, which
        must agree with the config the checkpoint trained with (`resume_plan`); `epochs`
        extends it. A run that is over raises RunFinished: there is nothing to train.

        A run killed before its first `last.pt` (at most one epoch row, which the start-over
        replays) starts over in the same folder. `run` takes the folder's lock before anything
        in it is written, then deletes the temporary files of writes a kill cut short.
        """
        if plan is None:
            plan = resume_plan.read(run_dir, epochs=epochs)
        if plan.done:
            raise resume_plan.RunFinished(plan.message)
        trainer = cls(plan.config, sink=sink, preset_name=plan.preset, run_dir=plan.run_dir)
        trainer._plan = plan
        trainer._resume = plan.state
        trainer._metrics_offset = plan.metrics_offset
        trainer._notices += [Notice(message, level) for message, level in plan.notices]
        return trainer

    # ------------------------------------------------------------------ controls (any thread)

    @property
    def paused(self) -> bool:
        return self._pause.is_set()

    def pause(self) -> None:
        self._pause.set()

    def resume(self) -> None:
        self._pause.clear()
        self._wake.set()

    def stop(self) -> None:
        """Finish the current step, write last.pt, end with status `stopped`."""
        self._stop.set()
        self._wake.set()

    def request_checkpoint(self) -> None:
        self._checkpoint_now.set()
        self._wake.set()

    # ------------------------------------------------------------------ the run

    def run(self) -> dict[str, Any]:
        """Train to the end; returns the summary (also in summary.json).

        Raises KanError for bad config or missing data before training starts, and
        RunLockedError when another process trains in the run folder (`run_lock`: rank 0 holds
        the folder's lock until the run ends). A first Ctrl-C (main thread) stops after the
        current step, then KeyboardInterrupt is re-raised once the checkpoint and summary are
        written; anything unexpected emits Failed and is re-raised.
        """
        self.metrics: runs.MetricsLog | None = None  # rank 0 alone writes the log
        self.dist.on_main(self._claim_run_dir)
        try:
            try:
                self.setup()
            except (KanError, KeyboardInterrupt):
                # bad input, or Ctrl-C while loading data / building the model: nothing was
                # trained, so a new run folder goes again (a resumed one is left as it was)
                if self._fresh and self.dist.is_main:
                    shutil.rmtree(self.run_dir, ignore_errors=True)
                raise
            if self.dist.is_main:
                self._prepare_run_dir()
                self.metrics = runs.MetricsLog(self.run_dir / runs.METRICS)
            try:
                return self._run_logged()
            finally:
                if self.metrics is not None:
                    self.metrics.close()
        finally:
            if self._lock is not None:
                self._lock.release()

    def _claim_run_dir(self) -> None:
        """Lock the run folder (rank 0); a resume also checks that last.pt is still the one it
        read, since another process may have trained the run before the lock was free."""
        lock = run_lock.RunLock(self.run_dir)
        lock.acquire()
        try:
            if self._plan is not None:
                self._plan.check_unchanged()
        except BaseException:
            lock.release()
            raise
        self._lock = lock

    def _prepare_run_dir(self) -> None:
        """Under the lock, before the log opens: a resume's leftovers go, config.toml gets an
        extension's epochs, metrics.jsonl is cut back to the checkpoint's offset."""
        if self._plan is not None:
            runs.remove_leftovers(self.run_dir)
            if self._plan.write_config:
                runs.write_config(self.run_dir, self.config)
        if self._metrics_offset is not None:
            runs.truncate_metrics(self.run_dir, self._metrics_offset)

    def _run_logged(self) -> dict[str, Any]:
        self._emit(self._run_started())
        for notice in self._notices:
            self._emit(notice)
        if self._fresh and self.dist.is_main:
            self._report_input_range()
            runs.write_summary(self.run_dir, self._summary("running"))
        try:
            with self._sigint_as_stop():
                status = self._train()
        except KeyboardInterrupt:
            self._save_after_interrupt()
            self._finish("stopped")
            raise
        except BaseException as exc:
            self._fail(exc)
            raise
        summary = self._finish(status)
        if self._interrupted:
            raise KeyboardInterrupt
        return summary

    def _train(self) -> str:
        """The loop. Returns the final status."""
        train = self.config.train
        while self.epoch <= train.epochs:
            if self._patience_exhausted():  # a resumed run that had already stopped early
                return "early_stopped"
            self.model.train()
            batches = self.data.batches(
                "train",
                train.batch_size,
                shuffle=True,
                epoch=self.epoch,
                skip=self.step_in_epoch,
                augment=self.config.data.augment,
                erase_prob=self.config.data.erase_prob,
                rank=self.dist.rank,
                world=self.dist.world,
            )
            self._tick = time.perf_counter()
            while True:
                if self._serve_controls():
                    return "stopped"
                batch = next(batches, None)
                if batch is None:
                    break
                self._train_step(*batch)
                if self.diverged:
                    return "diverged"
            self._settle()
            if self.diverged:
                return "diverged"
            self._end_epoch()
            if self._patience_exhausted():
                c = self.c
                finished = self.epoch - 1
                self._emit(EarlyStopped(finished, c.best_epoch, c.best_val_acc, train.patience))
                return "early_stopped"
        return "finished"

    def _train_step(self, x: Tensor, y: Tensor) -> None:
        """Forward, backward, clip, step (skipped on device if non-finite), grid update if due.

        A CUDA graph replays the step when there is one and the step needs nothing else (a grid
        update needs hooks on the forward; the last batch of an epoch may be shorter)."""
        self._consistent = False
        step = self.forward_step = self.c.global_step
        self.schedule.apply(step)
        grid_due = self._grid_update_due(step)
        kan_inputs: dict[str, Tensor] = {}
        full = len(y) == self.config.train.batch_size  # a graph keeps the shape it was captured at
        if self.graphed is not None and not grid_due and full:
            values = self.graphed(x, y)
        else:
            capture = self._capture_kan_inputs() if grid_due else contextlib.nullcontext({})
            with capture as kan_inputs:
                values = self._step_values(x, y, eager=grid_due)
        self.pending.add(step, values, (x, y))
        self.c.global_step += 1
        self.step_in_epoch += 1
        log_due = self.c.global_step % self.config.train.log_every == 0
        if log_due or grid_due or not self.deferred:
            self._settle()
        if grid_due and self._last_ok:
            self._update_grids(kan_inputs)
        self._advance_clock()
        self._consistent = True
        if log_due:
            self._log_step()

    # ------------------------------------------------------------------ setup

    def setup(self) -> None:
        """Load data, build model, optimizer and schedule; restore a checkpoint when resuming.
        Raises KanError on bad config or missing data. Tests call it to reach `model` early."""
        if self.model is not None:
            return
        config = self.config
        check_names(config)
        if self.dist.enabled:
            self.device = distributed.device_for(config.train.device, self.dist.local_rank)
            per_rank = distributed.per_rank_batch(config.train.batch_size, self.dist.world)
            self._notices.append(
                Notice(
                    f"torchrun: {self.dist.world} processes; global batch "
                    f"{config.train.batch_size} = {per_rank} per process (same LR as one process)"
                )
            )
        else:
            self.device = pick_device(config.train.device)
        seed_everything(config.train.seed)
        self.data = data_mod.load(
            config.data, device=self.device, seed=config.train.seed, raw=self._raw
        )
        self._raw = None  # the bundle holds its own copy
        self._notices += [Notice(warning, "warning") for warning in self.data.warnings]
        self.amp_dtype, use_scaler, message = precision(config, self.device)
        if message:
            self._notices.append(Notice(message, "warning"))
        if optim.warmup_capped(config.schedule, config.train.epochs):
            self._notices.append(
                Notice(
                    f"schedule.warmup_epochs ({config.schedule.warmup_epochs:g}) is not shorter "
                    f"than the run ({config.train.epochs} epochs): warming up over its first 10 %"
                )
            )
        self.model = build_model(config, self.data, self.device)
        self.train_model: nn.Module = self.model  # what a training step runs forward and back
        if self.dist.enabled:
            self.train_model = distributed.wrap(self.model, self.device)
        self.forward_model: nn.Module = self.train_model
        if config.train.compile:
            if self.device.type == "cuda":
                self.forward_model = torch.compile(self.train_model)
            else:
                self._notices.append(Notice(f"train.compile is CUDA-only: eager on {self.device}"))
        self.kan = models.kan_layers(self.model)
        for layer in self.kan.values():  # the layers gather regulariser statistics only if asked
            layer.track_regularization = config.kan.reg_weight > 0
        self.c.grid_updates = {name: 0 for name in self.kan}
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        decay = config.train.ema_decay
        self.ema = WeightAverage(self.model, decay) if decay > 0 else None
        graphs = self._cuda_graphs(use_scaler)
        self.optimizer = optim.build_optimizer(
            config, models.param_groups(self.model), self.device, capturable=graphs
        )
        self.steps_per_epoch = self.data.steps(
            "train", config.train.batch_size, world=self.dist.world
        )
        self.schedule = optim.Schedule(
            self.optimizer, config, self.steps_per_epoch, lr_device=self.device if graphs else None
        )
        self.graphed = cuda_graph.GraphedStep(self._step_values) if graphs else None
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)
        # on CUDA the optimizer is fused and skips non-finite steps itself (see module docstring)
        self.deferred = self.device.type == "cuda" and not use_scaler
        self.monitor = GradNormMonitor(config.train.clip_grad_norm)
        self.pending = PendingSteps()
        self.grid_rng = random.Random(f"kan-tui grid updates {config.train.seed}")
        self._window = Window()
        self._last_ok = True
        if self._resume is not None:
            self._load_state(self._resume)
        self._good = self._snapshot()

    def _cuda_graphs(self, use_scaler: bool) -> bool:
        """Whether training steps are replayed as a CUDA graph; a notice says why not when the
        config asks for graphs on CUDA and something else rules them out."""
        config = self.config
        if not config.train.cuda_graphs or self.device.type != "cuda":
            return False
        blockers = {
            "torchrun (DistributedDataParallel)": self.dist.enabled,
            "fp16 (the loss scaler reads its flag every step)": use_scaler,
            "train.compile (torch.compile manages its own graphs)": config.train.compile,
            "sgd (no capturable fused step)": config.optim.optimizer == "sgd",
        }
        reasons = [reason for reason, blocks in blockers.items() if blocks]
        if reasons:
            self._notices.append(Notice(f"train.cuda_graphs: off with {', '.join(reasons)}"))
        else:
            self._notices.append(Notice("training steps replayed as a CUDA graph"))
        return not reasons

    def _load_state(self, state: dict[str, Any]) -> None:
        path = runs.checkpoint_path(self.run_dir, "last")
        with ckpt.fitting(path, str(self.run_dir / runs.CONFIG)):
            self.model.load_state_dict(state["model"])
            optim.load_state(self.optimizer, state["optimizer"])
            self.schedule.load_state_dict(state["schedule"])
            if state["scaler"]:
                self.scaler.load_state_dict(state["scaler"])
            self.monitor.load_state_dict(state["monitor"])
            if self.ema is not None and state.get("ema"):
                self.ema.load_state_dict(state["ema"])
            self.grid_rng.setstate(ckpt.unpack_random(state["grid_rng"]))
            self.epoch = int(state["epoch"])
            self.step_in_epoch = int(state["step_in_epoch"])
            self.c = Counters(**state["counters"])
            ckpt.set_rng_state(state["rng"])  # last: building the model consumed random numbers
        if self._plan is not None and self._plan.restart_patience:
            self.c.patience_from = self.c.epochs_run
        if not self.dist.is_main:  # the epoch's sums so far are every rank's: count them once
            self.c.epoch_loss = self.c.epoch_correct = 0.0
            self.c.epoch_samples = 0

    def _run_started(self) -> RunStarted:
        sizes = self.data.sizes
        return RunStarted(
            run_dir=str(self.run_dir),
            config=to_data(self.config),
            device=str(self.device),
            params=models.count_params(self.model),
            dataset=self.data.name,
            train_size=sizes["train"],
            val_size=sizes["val"],
            test_size=sizes["test"],
            steps_per_epoch=self.steps_per_epoch,
            epochs=self.config.train.epochs,
            start_epoch=self.epoch,
        )

    def _report_input_range(self) -> None:
        """One Notice: the share of the first KAN layer's inputs outside its grid (first batch).

        Runs in training mode (BatchNorm on batch statistics, as in training) and puts the
        BatchNorm running statistics back afterwards.
        """
        if not self.kan:
            return
        name = next(iter(self.kan))
        low, high = self.config.kan.grid_range
        x, y = next(self.data.batches("train", self.config.train.batch_size, shuffle=False))
        with keep_buffers(self.model), torch.no_grad(), self._capture_kan_inputs() as inputs:
            self._loss(x, y, local=True)
        seen = inputs[name]  # (N, in)
        stats = torch.stack([((seen < low) | (seen > high)).float().mean(), seen.min(), seen.max()])
        outside, smallest, largest = stats.tolist()
        level = "warning" if outside > WIDE_OUTSIDE else "info"
        self._emit(
            Notice(
                f"inputs to the first KAN layer ({name}): {outside:.1%} outside the grid "
                f"[{low:g}, {high:g}] (seen {smallest:.2f} to {largest:.2f})",
                level,
            )
        )

    # ------------------------------------------------------------------ one step

    def _loss(
        self, x: Tensor, y: Tensor, *, eager: bool = False, local: bool = False
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(objective with regulariser, cross-entropy, correct count); `eager` bypasses
        torch.compile (hooks registered for one step would otherwise force recompiles); `local`
        bypasses DDP too, for a look at this rank's batch alone that starts no collective."""
        model = self.model if local else self.train_model if eager else self.forward_model
        if self.device.type == "cuda" and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        amp = self.amp_dtype
        # no cast cache: a CUDA graph capture must not keep casts made outside it (each weight
        # is used once per forward anyway)
        with torch.autocast(
            self.device.type, dtype=amp, enabled=amp is not None, cache_enabled=False
        ):
            logits = model(x)  # (N, classes)
        logits = logits.float()
        smoothing = self.config.train.label_smoothing
        objective = F.cross_entropy(logits, y, label_smoothing=smoothing)
        # the loss reported is the plain cross-entropy, comparable with the validation loss
        loss = F.cross_entropy(logits.detach(), y) if smoothing else objective
        weight = self.config.kan.reg_weight
        if weight > 0:
            reg = sum(layer.regularization_loss() for layer in self.kan.values())
            objective = objective + weight * reg
        correct = (logits.argmax(1) == y).sum()
        return objective, loss, correct

    def _step_values(self, x: Tensor, y: Tensor, eager: bool = False) -> Tensor:
        """One whole step on the device; its values packed for `PendingSteps` (what a CUDA
        graph captures, so nothing here may read back to the host on CUDA)."""
        objective, loss, correct = self._loss(x, y, eager=eager)
        weight = self._shard_weight(len(y))
        if weight != 1.0:
            objective = objective * weight
        norm, ok = self._backward_and_step(objective)
        if self.ema is not None:
            self.ema.update()
        return PendingSteps.pack(loss, correct, norm, ok)

    def _backward_and_step(self, objective: Tensor) -> tuple[Tensor, Tensor]:
        """Backward, clip, optimizer step unless non-finite; returns (grad norm, ok) on device."""
        self.scaler.scale(objective).backward()
        self.scaler.unscale_(self.optimizer)  # no-op without fp16
        norm = self._clip()
        ok = torch.isfinite(objective)
        if not self.scaler.is_enabled():  # fp16 overflow is the scaler's business, not divergence
            ok = ok & torch.isfinite(norm)
        ok = self.dist.all_true(ok)  # one rank's non-finite loss skips the step on every rank
        if self.deferred:
            self.optimizer.found_inf = (~ok).float()  # the fused kernel skips the update on device
            self.optimizer.step()
        elif ok.item():  # CPU / MPS: nothing to stall; fp16: the scaler syncs here anyway
            self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return norm, ok

    def _clip(self) -> Tensor:
        max_norm = self.config.train.clip_grad_norm
        if max_norm > 0:
            return torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        return torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None])

    # ------------------------------------------------------------------ read-back and health

    def _settle(self) -> None:
        """Read back pending steps (one sync): sums, norm warnings, the non-finite policy."""
        finite_norms: list[tuple[int, float]] = []
        c, w = self.c, self._window
        for health in self.pending.drain():
            self._last_ok = health.ok
            if health.ok:
                c.bad_streak = 0
                c.epoch_loss += health.loss * health.n
                c.epoch_correct += health.correct
                c.epoch_samples += health.n
                w.loss += health.loss * health.n
                w.correct += health.correct
                w.samples += health.n
                w.norm = health.norm
                if math.isfinite(health.norm):
                    finite_norms.append((health.global_step, health.norm))
                continue
            self._non_finite_step(health.global_step, health.norm, health.batch)
            if self.diverged:
                self.pending.drain()
                break
        for warning in self.monitor.scan(finite_norms):
            self._warn(warning)

    def _non_finite_step(self, step: int, norm: float, batch: tuple[Tensor, Tensor]) -> None:
        c = self.c
        c.skipped_steps += 1
        c.bad_streak += 1
        layer = self._diagnose(step, batch) if c.bad_streak == 1 else None
        self._repair_buffers()
        action = "skipped step"
        if c.bad_streak >= MAX_BAD_STREAK:
            if c.restores >= MAX_RESTORES:
                self.diverged = True
                action = f"skipped step; {c.restores} restores did not help: diverged"
            else:
                self._restore_good_state()
                action = "skipped step; restored last good state, lr halved"
        self._warn(GradNormWarning(step, norm, math.inf, "non-finite", action, layer))

    def _diagnose(self, step: int, batch: tuple[Tensor, Tensor]) -> str:
        x, y = batch
        self.forward_step = step
        return find_nonfinite_layer(self.model, lambda: self._loss(x, y, local=True)[0])

    def _repair_buffers(self) -> None:
        """A skipped step's forward may have put NaN into BatchNorm running statistics: take
        those buffers from the last good state (one check, only after a non-finite step)."""
        good = self._good["model"]
        with torch.no_grad():
            for name, buf in self.model.named_buffers():
                if buf.is_floating_point() and not torch.isfinite(buf).all():
                    buf.copy_(good[name])

    def _restore_good_state(self) -> None:
        c = self.c
        self.model.load_state_dict(self._good["model"])
        # a copy: loading may alias the snapshot's tensors, which later steps would then modify
        optim.load_state(self.optimizer, copy.deepcopy(self._good["optimizer"]))
        if self.graphed is not None:  # the loaded optimizer state lives in new tensors
            self.graphed.reset()
        self.schedule.scale *= 0.5
        self.schedule.apply(c.global_step)
        c.restores += 1
        c.bad_streak = 0
        self._emit(
            Notice(
                f"{MAX_BAD_STREAK} non-finite steps in a row: restored the state of the last "
                f"epoch end, learning rates halved (now x{self.schedule.scale:g} of the schedule)",
                "warning",
            )
        )

    def _snapshot(self) -> dict[str, Any]:
        """In-memory copy of model and optimizer (the "last good state")."""
        return copy.deepcopy(
            {"model": self.model.state_dict(), "optimizer": optim.portable_state(self.optimizer)}
        )

    def _warn(self, warning: GradNormWarning) -> None:
        self.c.grad_norm_warnings += 1
        self._emit(warning)

    def _log_step(self) -> None:
        w = self._window
        w.loss, w.correct, w.samples = self.dist.all_sum([w.loss, w.correct, w.samples])
        now = time.perf_counter()
        samples = max(w.samples, 1)
        self._emit(
            StepMetrics(
                epoch=self.epoch,
                step=self.step_in_epoch,
                global_step=self.c.global_step,
                steps_per_epoch=self.steps_per_epoch,
                loss=w.loss / samples if w.samples else float("nan"),
                acc=w.correct / samples,
                lr=self.schedule.lrs(),
                grad_norm=w.norm,
                samples_per_s=w.samples / max(now - w.started, 1e-9),
            )
        )
        self._window = Window(started=now)

    # ------------------------------------------------------------------ grid updates

    def _grid_update_due(self, step: int) -> bool:
        kan = self.config.kan
        draw = self.grid_rng.random()  # drawn every step: the stream is independent of settings
        if not self.kan or (kan.grid_update_until and step >= kan.grid_update_until):
            return False
        every = kan.grid_update_every
        return draw < kan.prob_update_grid or (every > 0 and (step + 1) % every == 0)

    @contextlib.contextmanager
    def _capture_kan_inputs(self) -> Iterator[dict[str, Tensor]]:
        """Record each KAN layer's input during the forwards inside the block (hooks exist only
        for that block)."""
        captured: dict[str, Tensor] = {}

        def hook(name: str, layer: nn.Module):
            def pre(module: nn.Module, args: tuple[Tensor, ...]) -> None:
                captured[name] = args[0].detach().reshape(-1, layer.in_features).float()  # (N, in)

            return pre

        handles = [layer.register_forward_pre_hook(hook(n, layer)) for n, layer in self.kan.items()]
        try:
            yield captured
        finally:
            for handle in handles:
                handle.remove()

    def _update_grids(self, inputs: dict[str, Tensor]) -> None:
        """Refit each KAN layer's grid to this step's inputs, in order.

        The grid never shrinks below the configured range (`keep_range`): a batch's extremes
        under-estimate where the next inputs fall. The optimizer moments of the refit coefficients
        are kept: the refit keeps the function and moves the knots little, so the moments still
        fit. Resetting them made the next step about lr on every coefficient at once, which cost
        Rapid KAN lite 2 points of digits val accuracy after 3 epochs (3 seeds: 0.965 vs 0.986).
        """
        counts = self.c.grid_updates
        with torch.no_grad():
            for name, layer in self.kan.items():
                # every rank refits on the whole global batch, so the grids stay identical
                samples = self.dist.gather_rows(inputs[name])  # (N_global, in)
                layer.update_grid(samples, keep_range=True)
                if self.ema is not None:  # an average over two grids would mean nothing
                    self.ema.restart(layer.parameters())
                counts[name] += 1
                self._emit(
                    GridUpdated(self.c.global_step, name, counts[name], sum(counts.values()))
                )

    # ------------------------------------------------------------------ epochs, checkpoints

    def _end_epoch(self) -> None:
        """Validate (and test), update best / patience, emit the epoch row, write checkpoints."""
        self._consistent = False
        c, train = self.c, self.config.train
        self._advance_clock()  # the caller's _settle waited for the steps' queued device work
        train_seconds = c.epoch_seconds
        self._reduce_epoch_sums()
        self.dist.average_batchnorm_stats(self.model)
        with self._evaluated_weights():
            val_loss, val_acc = eval_split(
                self.model, self.data, "val", train.batch_size, self.amp_dtype, self.dist
            )
            test_loss = test_acc = None
            if self.config.data.test_every_epoch:
                test_loss, test_acc = eval_split(
                    self.model, self.data, "test", train.batch_size, self.amp_dtype, self.dist
                )
        self._advance_clock()
        improved = val_acc > c.best_val_acc
        if improved:
            c.best_val_acc, c.best_epoch = val_acc, self.epoch
        samples = max(c.epoch_samples, 1)
        row = EpochEnd(
            epoch=self.epoch,
            train_loss=c.epoch_loss / samples if c.epoch_samples else float("nan"),
            train_acc=c.epoch_correct / samples,
            val_loss=val_loss,
            val_acc=val_acc,
            lr=self.schedule.lrs(),
            grid_updates=sum(c.grid_updates.values()),
            grad_norm_warnings=c.grad_norm_warnings,
            seconds=c.epoch_seconds,
            best_epoch=c.best_epoch,
            best_val_acc=c.best_val_acc,
            samples_per_s=c.epoch_samples / max(train_seconds, 1e-9),
            test_acc=test_acc,
            test_loss=test_loss,
            outside_grid={name: layer.outside_grid_share() for name, layer in self.kan.items()},
            grid_updates_per_layer=dict(c.grid_updates),
            skipped_steps=c.skipped_steps,
            train_seconds=train_seconds,
        )
        finished = self.epoch
        c.epochs_run = finished
        c.seconds += c.epoch_seconds
        c.epoch_loss = c.epoch_correct = c.epoch_seconds = 0.0
        c.epoch_samples = 0
        self.epoch += 1
        self.step_in_epoch = 0
        self._emit(row)
        if improved:
            self._save("best", "best", finished)
        self._save("last", "epoch", finished)
        self._good = self._snapshot()
        self._consistent = True

    def _evaluated_weights(self) -> contextlib.AbstractContextManager[None]:
        """The weights that validation and the test judge: the average when there is one."""
        return contextlib.nullcontext() if self.ema is None else self.ema.applied()

    def _advance_clock(self) -> None:
        now = time.perf_counter()
        self.c.epoch_seconds += now - self._tick
        self._tick = now

    def _shard_weight(self, n: int) -> float:
        """Loss weight of a rank's `n` samples: DDP averages the ranks' gradients, which is the
        global batch's mean only when the parts are equal; n * world / batch makes it exact for
        the last batch of an epoch too, whose parts may differ by one (1.0 in one process)."""
        if not self.dist.enabled:
            return 1.0
        batch = self.config.train.batch_size
        step_batch = min(batch, self.data.sizes["train"] - self.step_in_epoch * batch)
        return n * self.dist.world / step_batch

    def _reduce_epoch_sums(self) -> None:
        """The epoch's train sums of every rank, on every rank (a collective: at epoch end and
        before a stop's checkpoint, which so holds them whole)."""
        c = self.c
        loss, correct, samples = self.dist.all_sum([c.epoch_loss, c.epoch_correct, c.epoch_samples])
        c.epoch_loss, c.epoch_correct, c.epoch_samples = loss, correct, round(samples)

    def _patience_exhausted(self) -> bool:
        patience = self.config.train.patience
        # epochs since the best one, or since an extension of an early-stopped run
        stale_epochs = self.c.epochs_run - max(self.c.best_epoch, self.c.patience_from)
        return patience > 0 and stale_epochs >= patience

    def _checkpoint_state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": optim.portable_state(self.optimizer),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "monitor": self.monitor.state_dict(),
            "ema": None if self.ema is None else self.ema.state_dict(),
            "rng": ckpt.rng_state(),
            "grid_rng": ckpt.pack_random(self.grid_rng.getstate()),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "counters": dataclasses.asdict(self.c),
            "config": to_data(self.config),
            "preset": self.preset_name,
            "metrics_offset": self.metrics.offset,
        }

    def _save(self, which: str, reason: str, epoch: int) -> None:
        if not self.dist.is_main:  # every rank holds the same state; rank 0 writes it
            return
        path = runs.checkpoint_path(self.run_dir, which)
        ckpt.save(path, self._checkpoint_state())
        self._emit(CheckpointWritten(str(path), epoch, reason))

    # ------------------------------------------------------------------ controls, the end

    def _serve_controls(self) -> bool:
        """Between steps: pause (waiting here), checkpoint requests; True when asked to stop."""
        if self._pause.is_set() and not self._stop.is_set():
            self._settle()
            self._advance_clock()
            self._emit(Notice(f"paused at epoch {self.epoch}, step {self.step_in_epoch}"))
            while True:
                self._wake.clear()  # flags are read after clearing, so no wake-up is lost
                self._serve_checkpoint_request()
                if not self._pause.is_set() or self._stop.is_set():
                    break
                self._wake.wait()
            self._tick = self._window.started = time.perf_counter()
            if not self._stop.is_set():
                self._emit(Notice("resumed"))
        self._serve_checkpoint_request()
        if self._stop_requested():
            self._settle()
            self._reduce_epoch_sums()
            self._save("last", "stop", self.epoch)
            return True
        return False

    def _stop_requested(self) -> bool:
        """This process's stop flag; under torchrun, every rank must leave the loop at the same
        step, so the flags (set on any rank: a signal, rank 0's sink) are combined at logging
        steps and epoch starts only, one small collective each."""
        if not self.dist.enabled:
            return self._stop.is_set()
        if self.c.global_step % self.config.train.log_every and self.step_in_epoch:
            return False
        return self.dist.any(self._stop.is_set())

    def _serve_checkpoint_request(self) -> None:
        if self._checkpoint_now.is_set():
            self._checkpoint_now.clear()
            self._settle()
            self._save("last", "manual", self.epoch)

    @contextlib.contextmanager
    def _sigint_as_stop(self) -> Iterator[None]:
        """On the main thread, a first Ctrl-C becomes `stop()` (the step finishes, last.pt is
        written); a second one raises KeyboardInterrupt at once."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def on_sigint(signum: int, frame: FrameType | None) -> None:
            if self._interrupted:
                raise KeyboardInterrupt
            self._interrupted = True
            self.stop()

        previous = signal.signal(signal.SIGINT, on_sigint)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def _save_after_interrupt(self) -> None:
        """A KeyboardInterrupt landed somewhere in the loop: write last.pt if the state is a
        consistent position, else keep the previous last.pt (a half-done step is abandoned)."""
        if self._consistent:
            self._settle()
            self._save("last", "stop", self.epoch)
        else:
            self._emit(Notice("interrupted inside a step: kept the previous last.pt", "warning"))

    def _finish(self, status: str) -> dict[str, Any]:
        """Test with the best weights (finished / early-stopped runs), write summary.json."""
        test_loss = test_acc = None
        best = runs.checkpoint_path(self.run_dir, "best")

        def load_best() -> bool:
            if not best.exists():
                return False
            try:
                state = ckpt.load(best, self.device)
                with ckpt.fitting(best, str(self.run_dir / runs.CONFIG)):
                    self.model.load_state_dict(ckpt.evaluated_weights(state))
            except RunDirError as exc:  # a damaged best.pt costs the test, not the run
                self._emit(Notice(f"{exc}: no test accuracy", "warning"))
                return False
            return True

        # rank 0 reads best.pt and hands its weights on: only rank 0 is sure to see the file
        if status in ("finished", "early_stopped") and self.dist.on_main(load_best):
            self.dist.broadcast_state(self.model)
            test_loss, test_acc = eval_split(
                self.model,
                self.data,
                "test",
                self.config.train.batch_size,
                self.amp_dtype,
                self.dist,
            )
        summary = self._summary(status, test_acc, test_loss)
        if self.dist.is_main:
            runs.write_summary(self.run_dir, summary)
        if status != "failed":
            self._emit(Finished(summary))
        return summary

    def _summary(
        self, status: str, test_acc: float | None = None, test_loss: float | None = None
    ) -> dict[str, Any]:
        c = self.c
        return {
            "status": status,
            "best_epoch": c.best_epoch,
            "best_val_acc": c.best_val_acc if c.best_epoch else None,
            "test_acc": test_acc,
            "test_loss": test_loss,
            "epochs_run": c.epochs_run,
            "seconds": c.seconds + c.epoch_seconds,
            "params": models.count_params(self.model),
            "device": str(self.device),
            "run_dir": str(self.run_dir),
            "preset": self.preset_name,
            "model": self.config.model.name,
            "dataset": self.config.data.dataset,
            "global_step": c.global_step,
            "grid_updates": sum(c.grid_updates.values()),
            "grid_updates_per_layer": dict(c.grid_updates),
            "grad_norm_warnings": c.grad_norm_warnings,
            "skipped_steps": c.skipped_steps,
            "restores": c.restores,
            "processes": self.dist.world,
        }

    def _fail(self, exc: BaseException) -> None:
        """Report an unexpected error; tolerate a log or summary that cannot be written (a full
        disk is a likely cause)."""
        event = Failed(f"{type(exc).__name__}: {exc}", traceback.format_exc())
        if self.metrics is not None:
            with contextlib.suppress(KanError):  # runs.RunWriteError: the log cannot be written
                self.metrics.write(event.to_record())
        self.sink(event)
        with contextlib.suppress(Exception):
            self._finish("failed")

    def _emit(self, event: Event) -> None:
        if not self.dist.is_main:  # rank 0 reports for every rank
            return
        self.metrics.write(event.to_record())
        self.sink(event)
