"""The training loop: read `_train` top to bottom; the parts around it have modules of their own.

One `Trainer` is one run folder (`runs.py`). It runs in the caller's thread (headless) or in a
background thread (the TUI), reports through typed events to a sink, and takes `pause`, `resume`,
`stop` and `request_checkpoint` from any thread (`controls.py`); the flags are read between steps,
so a control never interrupts a step and the loop never waits on the sink or the screen.

The parts, one job each: `train_step.py`, one step on the device (autocast, backward, clipping,
the optimizer step, the CUDA graph); `grid_policy.py`, when the KAN grids are refit and the refit;
`recovery.py`, what non-finite steps lead to (skip, restore with half the LR, `diverged`);
`counters.py`, what the loop counts; `train_state.py`, what a checkpoint holds and a resume puts
back; `run_folder.py`, what rank 0 writes (the lock, the log, checkpoints); `run_summary.py`, the
run's first events, its final test and summary.json.

Host syncs. Per-step values (loss, correct count, gradient norm, a finite flag) stay on the device
in `PendingSteps` and are read back together (`_settle`, one sync) at most once per `log_every`
steps; `train_step.py` says how a non-finite step is skipped meanwhile. On the CPU (and MPS), and
with fp16, every step is read back: there is no device queue to stall, or the loss scaler syncs
anyway. Steps with a grid update read back once too, because a refit must not see a non-finite
batch (the refit's solve dominates them).

Resume. `last.pt` holds the position (epoch, steps done in it) and the byte offset of
`metrics.jsonl` when it was written. `from_run_dir` checks the folder first (`resume_plan`: the
config.toml must agree with the config in last.pt, a run that is over is not resumed), `run` cuts
`metrics.jsonl` back to that offset, reloads every state, and the data order, a pure function of
(seed, epoch), is replayed with `skip`; so each epoch row appears exactly once and the weights
equal those of an uninterrupted run. `run` holds the run folder's lock from before anything in it
is written until it returns, so two processes never train one folder.

Many processes (torchrun, see `distributed.py`). The model is wrapped in DistributedDataParallel
without the per-forward buffer broadcast (`distributed.wrap`): the KAN grids are buffers, and they
stay identical because every rank makes the same grid update decisions on the same samples
(`grid_policy.py`). BatchNorm running statistics, the only buffers that drift apart, are averaged
at each epoch end. Whether a step is skipped is all-reduced, the stop flag is agreed on at logging
steps and epoch starts, and the train, validation and test sums are all-reduced, so every rank
takes the same branches and reaches the same collectives. Rank 0 alone writes the run folder and
emits events; checkpoints hold the unwrapped model, so they resume in one process or in many.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from kan_engine import (
    cuda_graph,
    distributed,
    models,
    optim,
    resume_plan,
    run_folder,
    spline_gather,
    tracking,
)
from kan_engine import data as data_mod
from kan_engine.config import RunConfig, check_names
from kan_engine.controls import Controls
from kan_engine.counters import Counters, Window
from kan_engine.errors import ConfigError, KanError
from kan_engine.events import EarlyStopped, EventSink, GradNormWarning, Notice, StepMetrics
from kan_engine.grid_policy import GridPolicy
from kan_engine.grid_stages import GridStages
from kan_engine.monitor import GradNormMonitor, PendingSteps, find_nonfinite_layer
from kan_engine.recovery import Recovery
from kan_engine.run_setup import (
    build_model,
    eval_split,
    load_initial,
    pick_device,
    seed_everything,
)
from kan_engine.run_summary import RunReport
from kan_engine.train_state import TrainState
from kan_engine.train_step import TrainStep


class Trainer:
    """One run folder trained to its end (see the module docstring)."""

    def __init__(
        self,
        config: RunConfig,
        *,
        sink: EventSink,
        out_dir: Path = Path("runs"),
        preset_name: str = "custom",
        run_dir: Path | None = None,
        raw: data_mod.datasets.Raw | None = None,
        init_weights: dict[str, Tensor] | None = None,
    ) -> None:
        """Creates the run folder (with config.toml) unless `run_dir` names an existing one
        (`from_run_dir` does that). Nothing heavy happens until `setup()` / `run()`. `raw`: the
        data as `data.read` gave it (the CLI reads and checks it before making the folder).
        `init_weights`: a state dict the new run starts from (a pruned model, whose widths
        `config` has), kept in the folder and named by `model.init_from`."""
        self.preset_name = preset_name
        self._fresh = run_dir is None
        self.dist = distributed.current()  # rank 0 of many, or the only process
        if run_dir is None:
            run_dir, config = run_folder.create(
                out_dir, preset_name, config, self.dist, init_weights
            )
        self.config = config
        self.folder = run_folder.RunFolder(run_dir, self.dist, tracking.with_trackers(sink, config))
        self.run_dir = self.folder.path
        self.controls = Controls()
        self._plan: resume_plan.ResumePlan | None = None  # a resume's checked plan
        self._consistent = True  # the in-memory state is a position a checkpoint may record
        self.model: nn.Module | None = None
        self.epoch = 1
        self.step_in_epoch = 0
        self.c = Counters()
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
        trainer._notices += [Notice(message, level) for message, level in plan.notices]
        return trainer

    # ------------------------------------------------------------------ controls (any thread)

    @property
    def paused(self) -> bool:
        return self.controls.paused

    def pause(self) -> None:
        self.controls.pause()

    def resume(self) -> None:
        self.controls.resume()

    def stop(self) -> None:
        """Finish the current step, write last.pt, end with status `stopped`."""
        self.controls.stop()

    def request_checkpoint(self) -> None:
        self.controls.request_checkpoint()

    # ------------------------------------------------------------------ the run

    def run(self) -> dict[str, Any]:
        """Train to the end; returns the summary (also in summary.json).

        Raises KanError for bad config or missing data before training starts, and
        RunLockedError when another process trains in the run folder (`run_lock`: rank 0 holds
        the folder's lock until the run ends). A first Ctrl-C (main thread) stops after the
        current step, then KeyboardInterrupt is re-raised once the checkpoint and summary are
        written; anything unexpected emits Failed and is re-raised.
        """
        with self.folder.claimed(self._plan):
            try:
                self.setup()
            except (KanError, KeyboardInterrupt):
                # bad input, or Ctrl-C while loading data / building the model: nothing was
                # trained, so a new run folder goes again (a resumed one is left as it was)
                if self._fresh:
                    self.folder.discard()
                raise
            with self.folder.logging(self._plan, self.config):
                self.report.start(self.epoch, self._notices, self.c)
                if self._fresh and self.dist.is_main:
                    forward = functools.partial(self.stepper.loss, local=True)
                    notice = self.grids.input_range(self.model, self.data, forward)
                    if notice is not None:
                        self.folder.emit(notice)
                    self.folder.write_summary(self.report.summary("running", self.c))
                try:
                    with self.controls.sigint_as_stop():
                        status = self._train()
                except KeyboardInterrupt:
                    self._save_after_interrupt()
                    self.report.finish("stopped", self.c)
                    raise
                except BaseException as exc:
                    self.report.fail(exc, self.c)
                    raise
                summary = self.report.finish(status, self.c)
        if self.controls.interrupted:
            raise KeyboardInterrupt
        return summary

    def setup(self) -> None:
        """Load data, build model, optimizer and schedule; restore a checkpoint when resuming.
        Raises KanError on bad config or missing data. Tests call it to reach `model` early."""
        if self.model is not None:
            return
        config, train, dist = self.config, self.config.train, self.dist
        check_names(config)
        if dist.enabled:
            if config.optim.optimizer in optim.FULL_BATCH:
                reason = f"{config.optim.optimizer} trains in one process only"
                raise ConfigError("", "optim.optimizer", reason)
            self.device = distributed.device_for(train.device, dist.local_rank)
            self._notices.append(Notice(distributed.batch_notice(train.batch_size, dist.world)))
        else:
            self.device = pick_device(train.device)
        seed_everything(train.seed)
        self.data = data_mod.load(config.data, device=self.device, seed=train.seed, raw=self._raw)
        self._raw = None  # the bundle holds its own copy
        self._notices += [Notice(warning, "warning") for warning in self.data.warnings]
        self.model = build_model(config, self.data, self.device)
        plan = self._plan
        if config.model.init_from and (plan is None or plan.state is None):
            # before the optimizer and the weight average are made from the parameters
            load_initial(self.model, config.model.init_from, self.run_dir, self.device)
        self.kan = models.kan_layers(self.model)
        if self.kan and self.dist.is_main:  # before RunStarted: straight to the sink
            spline_gather.prepare(
                self.model, self.device, lambda text: self.folder.sink(Notice(text))
            )
        self.c.grid_updates = {name: 0 for name in self.kan}
        step = self.stepper = TrainStep(
            config, self.model, self.kan, self.data, self.device, dist, self._notices
        )
        self.optimizer, self.schedule, self.ema = step.optimizer, step.schedule, step.ema
        self.graphed = step.graphed
        full_batch = config.optim.optimizer in optim.FULL_BATCH  # converges to a zero gradient
        self.monitor = GradNormMonitor(train.clip_grad_norm, vanishing=not full_batch)
        self.pending = PendingSteps()
        self.grids = GridPolicy(config, self.kan, self.ema, dist, self.folder.emit)
        self.stages = GridStages(config.kan, self.kan, step.steps_per_epoch)
        self.train_state = TrainState(
            self.folder, step, self.monitor, self.grids, self.preset_name, self.data
        )
        self.report = RunReport(self.folder, step, self.data, self.preset_name)
        self._window = Window()
        self._last_ok = True
        if plan is not None and plan.state is not None:
            self.epoch, self.step_in_epoch, self.c = self.train_state.restore(
                plan.state, restart_patience=plan.restart_patience
            )
        self.recovery = Recovery(step, self._diagnose, self.folder.emit)  # remembers this state

    # ------------------------------------------------------------------ the loop

    def _train(self) -> str:
        """The loop. Returns the final status."""
        train = self.config.train
        while self.epoch <= train.epochs:
            if self.c.patience_exhausted(train.patience):  # a resumed run that stopped early
                return "early_stopped"
            self.model.train()
            self._enter_stage()
            batches = self.data.batches(
                "train",
                train.batch_size,
                shuffle=True,
                epoch=self.epoch,
                skip=self.step_in_epoch,
                steps=train.steps_per_epoch,
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
                if self.recovery.diverged:
                    return "diverged"
            self._settle()
            if self.recovery.diverged:
                return "diverged"
            self._end_epoch()
            if self.c.patience_exhausted(train.patience):
                self.folder.emit(self._early_stopped(self.epoch - 1))
                return "early_stopped"
        return "finished"

    def _train_step(self, x: Tensor, y: Tensor) -> None:
        """Forward, backward, clip, step (skipped on device if non-finite), grid update if due.

        A CUDA graph replays the step when there is one and the step needs nothing else (a grid
        update needs hooks on the forward; the last batch of an epoch may be shorter)."""
        self._consistent = False
        step = self.forward_step = self.c.global_step
        self.schedule.apply(step)
        grid_due = self.grids.due(self.stages.stage_step(step, self.epoch))
        kan_inputs: dict[str, Tensor] = {}
        full = len(y) == self.config.train.batch_size  # a graph keeps the shape it was captured at
        if self.graphed is not None and not grid_due and full:
            values = self.graphed(x, y)  # one process only (no graphs under torchrun): weight 1
        else:
            capture = self.grids.capture_inputs() if grid_due else contextlib.nullcontext({})
            weight = self.stepper.shard_weight(len(y), self.step_in_epoch)
            with capture as kan_inputs:
                values = self.stepper(x, y, eager=grid_due, weight=weight)
        self.pending.add(step, values, (x, y))
        self.c.global_step += 1
        self.step_in_epoch += 1
        log_due = self.c.global_step % self.config.train.log_every == 0
        if log_due or grid_due or not self.stepper.deferred:
            self._settle()
        if grid_due and self._last_ok:
            self.grids.refit(kan_inputs, self.c)
            if self.stepper.full_batch:  # its state describes the old coefficients
                optim.forget_state(self.optimizer)
        self._advance_clock()
        self._consistent = True
        if log_due:
            self._log_step()

    def _settle(self) -> None:
        """Read back pending steps (one sync): sums, norm warnings, the non-finite policy."""
        finite_norms: list[tuple[int, float]] = []
        c, w = self.c, self._window
        for health in self.pending.drain():
            self._last_ok = health.ok
            if health.ok:
                c.add_step(health)
                w.add_step(health)
                if math.isfinite(health.norm):
                    finite_norms.append((health.global_step, health.norm))
                continue
            step, norm, batch = health.global_step, health.norm, health.batch
            self._warn(self.recovery.non_finite_step(c, step, norm, batch))
            if self.recovery.diverged:
                break
        for warning in self.monitor.scan(finite_norms):
            self._warn(warning)

    def _log_step(self) -> None:
        w = self._window
        w.loss, w.correct, w.samples = self.dist.all_sum([w.loss, w.correct, w.samples])
        now = time.perf_counter()
        samples = max(w.samples, 1)
        regression = self.data.task.regression
        self.folder.emit(
            StepMetrics(
                epoch=self.epoch,
                step=self.step_in_epoch,
                global_step=self.c.global_step,
                steps_per_epoch=self.stepper.steps_per_epoch,
                loss=w.loss / samples if w.samples else float("nan"),
                acc=None if regression else w.correct / samples,
                rmse=math.sqrt(w.correct / samples) if regression else None,
                lr=self.schedule.lrs(),
                grad_norm=w.norm,
                samples_per_s=w.samples / max(now - w.started, 1e-9),
            )
        )
        self._window = Window(started=now)

    def _end_epoch(self) -> None:
        """Validate (and test), update best / patience, emit the epoch row, write checkpoints."""
        self._consistent = False
        c, batch_size = self.c, self.config.train.batch_size
        self._advance_clock()  # the caller's _settle waited for the steps' queued device work
        train_seconds = c.epoch_seconds
        c.reduce_epoch_sums(self.dist)
        self.dist.average_batchnorm_stats(self.model)
        amp_dtype = self.stepper.amp_dtype
        with self.stepper.evaluated_weights():
            val = eval_split(self.model, self.data, "val", batch_size, amp_dtype, self.dist)
            test = None
            if self.config.data.test_every_epoch:
                test = eval_split(self.model, self.data, "test", batch_size, amp_dtype, self.dist)
        self._advance_clock()
        outside = {name: layer.outside_grid_share() for name, layer in self.kan.items()}
        row, improved = c.close_epoch(
            self.epoch,
            val,
            test,
            task=self.data.task,
            grid_size=self.stages.grid_for(self.epoch) if self.stages.active else None,
            lr=self.schedule.lrs(),
            outside_grid=outside,
            train_seconds=train_seconds,
        )
        finished = self.epoch
        self.epoch += 1
        self.step_in_epoch = 0
        self.folder.emit(row)
        if improved:
            self._save("best", "best", finished)
        self._save("last", "epoch", finished)
        self.recovery.remember()
        self._consistent = True

    def _enter_stage(self) -> None:
        """Refine the grids when this epoch starts a stage of `kan.grid_schedule` (or a resume
        lands in one); the optimizer state, which fits the old coefficients, is dropped."""
        size = self.stages.due(self.epoch)
        if size is None:
            return
        forward = functools.partial(self.stepper.loss, local=True)
        inputs = self.grids.first_batch_inputs(self.model, self.data, forward)
        self.stages.refine(size, inputs)
        optim.forget_state(self.optimizer)
        self.monitor.restart()
        self.folder.emit(Notice(f"grid extended to {size} intervals (epoch {self.epoch})"))

    def _serve_controls(self) -> bool:
        """Between steps: pause (waiting here), checkpoint requests; True when asked to stop."""
        controls = self.controls
        if controls.paused and not controls.stopping:
            self._settle()
            self._advance_clock()
            self.folder.emit(Notice(f"paused at epoch {self.epoch}, step {self.step_in_epoch}"))
            controls.wait_while_paused(self._serve_checkpoint_request)
            self._tick = self._window.started = time.perf_counter()
            if not controls.stopping:
                self.folder.emit(Notice("resumed"))
        self._serve_checkpoint_request()
        # every rank must leave at the same step: the flags are agreed on at logging steps and
        # epoch starts only
        agreed = not (self.c.global_step % self.config.train.log_every and self.step_in_epoch)
        if controls.stop_agreed(self.dist, agreed):
            self._settle()
            self.c.reduce_epoch_sums(self.dist)
            self._save("last", "stop", self.epoch)
            return True
        return False

    # ------------------------------------------------------------------ helpers of the loop

    def _serve_checkpoint_request(self) -> None:
        if self.controls.take_checkpoint_request():
            self._settle()
            self._save("last", "manual", self.epoch)

    def _diagnose(self, step: int, batch: tuple[Tensor, Tensor]) -> str:
        """Re-run a non-finite step's batch with checking hooks: where it went non-finite."""
        x, y = batch
        self.forward_step = step
        return find_nonfinite_layer(self.model, lambda: self.stepper.loss(x, y, local=True)[0])

    def _early_stopped(self, finished: int) -> EarlyStopped:
        c, regression = self.c, self.data.task.regression
        return EarlyStopped(
            finished,
            c.best_epoch,
            None if regression else c.best_val_acc,
            self.config.train.patience,
            best_val_rmse=c.best_val_rmse if regression else None,
        )

    def _warn(self, warning: GradNormWarning) -> None:
        self.c.grad_norm_warnings += 1
        self.folder.emit(warning)

    def _advance_clock(self) -> None:
        now = time.perf_counter()
        self.c.epoch_seconds += now - self._tick
        self._tick = now

    # ------------------------------------------------------------------ checkpoints, the end

    def _save(self, which: str, reason: str, epoch: int) -> None:
        self.train_state.save(which, reason, epoch, (self.epoch, self.step_in_epoch), self.c)

    def _save_after_interrupt(self) -> None:
        """A KeyboardInterrupt landed somewhere in the loop: write last.pt if the state is a
        consistent position, else keep the previous last.pt (a half-done step is abandoned)."""
        if self._consistent:
            self._settle()
            self._save("last", "stop", self.epoch)
        else:
            self.folder.emit(
                Notice("interrupted inside a step: kept the previous last.pt", "warning")
            )
