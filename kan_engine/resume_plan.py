"""What a `resume` continues from, checked before anything trains or is written.

A run folder can lie: a config.toml cut at a line end is still valid TOML, and the defaults that
fill in the missing keys (50 epochs, another model) would train a different run in the old
folder. The checkpoint holds the config the run really trained with (`config`, written in the same
atomic file as the weights), so it is the witness: where config.toml disagrees with it on what the
run is (model, data, optimizer, schedule, epochs...), resume refuses with one line naming the key
and both values, and rewrites nothing. It does not silently take the checkpoint's instead: the two
copies disagree and only the user knows whether the file was damaged or edited on purpose, so the
way out is explicit: `--config-from-checkpoint` rewrites config.toml from last.pt, `--epochs N`
changes the one key that may change (the number of epochs). Keys that say where and how fast the
run trains (`RUNTIME_KEYS`: the device, the data folder...) may differ: resuming a CUDA run on the
CPU means editing `train.device`.

A run that is over (last.pt has every epoch, or its patience ran out, and summary.json says it
finished) has nothing to resume: `read` says so in `done` / `message` and the caller trains
nothing and writes nothing. When only the run's end is missing (killed in the final test, a
summary.json that could not be written or is damaged), the resume trains nothing and writes that
end. `--epochs N` extends any of them, or a stopped run, to N epochs; see `extend` for what that
does to the LR schedule.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kan_engine import checkpoint as ckpt
from kan_engine import runs
from kan_engine.config import RunConfig, apply_overrides, dotted_items, to_data, validate_config
from kan_engine.errors import ConfigError, KanError, RunDirError
from kan_engine.run_lock import RunLock

# what `TrainState.state_dict` (kan_engine/train_state.py) writes and a resume reads: a last.pt
# without one of them is refused
RESUME_KEYS = (
    "model", "optimizer", "schedule", "scaler", "monitor", "rng", "grid_rng", "epoch",
    "step_in_epoch", "counters", "config", "preset", "metrics_offset",
)  # fmt: skip
# config keys about where and how fast a run trains, not what it trains: they may differ from the
# checkpoint's (a CUDA run resumed on the CPU, a data set moved to another folder)
RUNTIME_KEYS = (
    "description", "data.data_dir", "train.device", "train.compile", "train.cuda_graphs",
    "train.log_every", "train.mixed_precision",
)  # fmt: skip
# what `eval` needs config.toml to agree with the checkpoint on: the model and its data split
EVAL_KEYS = ("model.", "kan.", "data.dataset", "data.target", "data.val_fraction", "train.seed")
FINAL_STATUSES = ("finished", "early_stopped")  # summary.json of a run that is over
LR_SCHEDULES_THAT_MOVE = ("cosine", "onecycle")  # those whose curve depends on train.epochs

Stamp = tuple[int, int, int]  # (inode, size, mtime_ns) of last.pt


class RunFinished(KanError):
    """`Trainer.from_run_dir` of a run that is over, without `epochs` to extend it."""


@dataclass
class ResumePlan:
    """Everything `Trainer.from_run_dir` needs, read and checked; nothing written yet."""

    run_dir: Path
    config: RunConfig  # what the resumed run trains with (an --epochs extension included)
    preset: str
    state: dict[str, Any] | None  # last.pt; None: start over (killed in the first epoch)
    metrics_offset: int  # where metrics.jsonl is cut back to
    stamp: Stamp | None  # last.pt when it was read: another process must not change it since
    done: str = ""  # "finished" / "early_stopped": nothing left to train
    message: str = ""  # the line that says so
    write_config: bool = False  # config.toml gets `config` (an extension, a restore)
    restart_patience: bool = False  # an early-stopped run extended: patience counts from here
    notices: list[tuple[str, str]] = field(default_factory=list)  # (message, level)

    @property
    def last(self) -> Path:
        return runs.checkpoint_path(self.run_dir, "last")

    def check_unchanged(self) -> None:
        """Called with the run lock held: last.pt is still the one read (no process trained the
        run between the read and the lock; resuming a stale state would replay its epochs)."""
        if _stamp(self.last) != self.stamp:
            raise RunDirError(
                f"{self.last}: changed while resume was reading it (another process trained "
                "this run meanwhile); run resume again"
            )


def read(
    run_dir: Path, *, epochs: int | None = None, config_from_checkpoint: bool = False
) -> ResumePlan:
    """Check a run folder for a resume; KanError (one line naming the file) when it cannot be.

    `epochs`: the run's new number of epochs (`resume --epochs N`, N above the epochs trained).
    `config_from_checkpoint`: take last.pt's config and rewrite config.toml from it.
    """
    run_dir = Path(run_dir)
    runs.check_run_folder(run_dir)
    runs.check_replaceable_files(run_dir)
    last = runs.checkpoint_path(run_dir, "last")
    stamp = _stamp(last)
    records = _metrics(run_dir)
    if stamp is None and sum(r.get("event") == "epoch" for r in records) <= 1:
        return _start_over(run_dir, records, epochs, config_from_checkpoint)
    state = ckpt.load(last, keys=RESUME_KEYS)
    preset, offset = state["preset"], state["metrics_offset"]
    if not isinstance(preset, str) or not _whole(offset) or offset < 0:
        raise RunDirError(f"{last}: not a kan-tui checkpoint (preset, metrics_offset)")
    epochs_run, best_epoch, patience_from = _position(state, last)
    trained = _validated(state["config"], f"{last}: config")
    plan = ResumePlan(run_dir, trained, preset, state, offset, stamp)
    if config_from_checkpoint:
        plan.write_config = True
        plan.notices.append((f"{run_dir / runs.CONFIG}: rewritten from {last}", "warning"))
    else:
        plan.config = _config_toml(run_dir, last)
        ignore = (*RUNTIME_KEYS, "train.epochs") if epochs is not None else RUNTIME_KEYS
        mismatch = differences(plan.config, trained, ignore=ignore)
        if mismatch:
            raise RunDirError(_mismatch(run_dir / runs.CONFIG, last, mismatch, run_dir))
    train = plan.config.train
    stale = epochs_run - max(best_epoch, patience_from)
    what = ""
    if train.patience > 0 and stale >= train.patience:
        plan.done = "early_stopped"
        what = (
            f"stopped early after epoch {epochs_run} (no better val_acc since epoch {best_epoch}, "
            f"patience {train.patience})"
        )
    elif state["epoch"] > train.epochs:
        plan.done = "finished"
        what = f"finished ({epochs_run} of {train.epochs} epochs trained)"
    if epochs is not None:
        extend(plan, epochs, epochs_run)
    elif plan.done and _summary_status(run_dir) not in FINAL_STATUSES:
        # the epochs are done but the ending is not (killed in the final test, summary.json not
        # written or damaged): the resume trains nothing and writes the test and the summary
        plan.done = ""
        message = f"{last}: {what}, but {runs.SUMMARY} does not say so: writing the run's end"
        plan.notices.append((message, "info"))
    elif plan.done:
        changed = f"{runs.CONFIG} rewritten from {last}" if plan.write_config else "nothing changed"
        plan.message = (
            f"{run_dir}: {what}: nothing to resume, {changed}; to train longer: "
            f"kan-tui resume {run_dir} --epochs N (N > {epochs_run})"
        )
    return plan


def extend(plan: ResumePlan, epochs: int, epochs_run: int) -> None:
    """Give the run `epochs` epochs in all (above those trained): finished, early-stopped and
    stopped runs alike.

    The LR schedule is a pure function of (epochs, steps per epoch, step) (`optim.lr_factor`), and
    it stays one: from the resume point on, the LR is the one an `epochs`-long run has at that
    step, and every later resume replays exactly that, since config.toml and each new checkpoint
    say `epochs`. For cosine and one-cycle that is a warm restart: a finished run's LR jumps from
    its floor back up to where the longer curve is at this step, then decays to the floor again at
    the new last epoch (constant and step schedules do not depend on the epochs). The first epochs
    keep the LRs they had (metrics.jsonl records them). An early-stopped run's patience counts
    from the resume point, or it would stop again before its first new epoch.
    """
    if epochs <= epochs_run:
        raise ConfigError(
            "--epochs",
            "",
            f"{epochs}: the run has trained {epochs_run} epochs already; give more to extend it",
        )
    old = plan.config.train.epochs
    if epochs != old:
        plan.config = apply_overrides(plan.config, {"train.epochs": epochs}, "--epochs")
        plan.write_config = True
        schedule = plan.config.schedule.name
        change = f"train.epochs {old} -> {epochs}"
        if schedule in LR_SCHEDULES_THAT_MOVE:
            change += (
                f": from epoch {epochs_run + 1} on, the LR follows the {schedule} schedule of "
                f"{epochs} epochs (a warm restart: above where the schedule of {old} left it, "
                f"down to its floor again at epoch {epochs})"
            )
        plan.notices.append((change, "info"))
    if plan.done == "early_stopped":
        plan.restart_patience = True
        patience = plan.config.train.patience
        again = f"early stopping: patience {patience} counts again from epoch {epochs_run + 1}"
        plan.notices.append((again, "info"))
    plan.done = ""


def restore_config(plan: ResumePlan) -> None:
    """`--config-from-checkpoint` of a run that is over: rewrite config.toml alone, under the run
    lock (a process training the run may be about to change last.pt)."""
    with RunLock(plan.run_dir):
        plan.check_unchanged()
        runs.write_config(plan.run_dir, plan.config)


def differences(
    ours: RunConfig,
    theirs: RunConfig,
    *,
    ignore: Sequence[str] = (),
    only: Sequence[str] | None = None,
) -> list[tuple[str, Any, Any]]:
    """(dotted key, our value, their value) where two configs differ, in schema order. Entries of
    `ignore` / `only` are keys, or prefixes ending in "."; None values are absent keys."""
    a, b = dict(dotted_items(to_data(ours))), dict(dotted_items(to_data(theirs)))
    keys = [*a, *(key for key in b if key not in a)]
    return [
        (key, a.get(key), b.get(key))
        for key in keys
        if a.get(key) != b.get(key)
        and not _matches(key, ignore)
        and (only is None or _matches(key, only))
    ]


def check_matches(config: RunConfig, state: dict[str, Any], path: Path, run_dir: Path) -> None:
    """`eval`: config.toml must agree with the checkpoint at `path` on the model and the data
    split (`EVAL_KEYS`), or the numbers would be those of another model or split. A checkpoint
    without a config (an older one) is not checked."""
    if "config" not in state:
        return
    trained = _validated(state["config"], f"{path}: config")
    mismatch = differences(config, trained, only=EVAL_KEYS)
    if mismatch:
        raise RunDirError(_mismatch(Path(run_dir) / runs.CONFIG, path, mismatch, Path(run_dir)))


# ------------------------------------------------------------------ helpers


def _start_over(
    run_dir: Path, records: list[dict[str, Any]], epochs: int | None, from_checkpoint: bool
) -> ResumePlan:
    """Killed before the first last.pt: train from scratch in the same folder. The run_started
    record, when there is one, holds the config the run started with: the witness here."""
    last = runs.checkpoint_path(run_dir, "last")
    if from_checkpoint:
        raise ConfigError("--config-from-checkpoint", "", f"{last}: not written yet")
    config = _config_toml(run_dir, None)
    started = next((r for r in records if r.get("event") == "run_started"), {})
    if isinstance(started.get("config"), dict):
        source = f"{run_dir / runs.METRICS}: run_started"
        ignore = (*RUNTIME_KEYS, "train.epochs") if epochs is not None else RUNTIME_KEYS
        mismatch = differences(config, _validated(started["config"], source), ignore=ignore)
        if mismatch:
            raise RunDirError(_mismatch(run_dir / runs.CONFIG, Path(source), mismatch, None))
    plan = ResumePlan(run_dir, config, runs.preset_of(run_dir), None, 0, None)
    message = f"{last} not written yet (killed in the first epoch): starting over"
    plan.notices.append((message, "warning"))
    if epochs is not None and epochs != config.train.epochs:
        plan.config = apply_overrides(config, {"train.epochs": epochs}, "--epochs")
        plan.write_config = True
    return plan


def _config_toml(run_dir: Path, last: Path | None) -> RunConfig:
    """config.toml; when it cannot be read and last.pt exists, the error says how to restore it."""
    try:
        return runs.read_config(run_dir)
    except (ConfigError, RunDirError) as exc:
        if last is None:
            raise
        raise RunDirError(
            f"{exc}; to rewrite it from {last}: kan-tui resume {run_dir} --config-from-checkpoint"
        ) from None


def _metrics(run_dir: Path) -> list[dict[str, Any]]:
    try:
        return runs.read_metrics(run_dir)
    except RunDirError as exc:
        raise RunDirError(
            f"{exc}; the run's log is damaged: move {runs.METRICS} aside to resume with a new one"
        ) from None


def _summary_status(run_dir: Path) -> str:
    """summary.json's status, "" when it is missing or damaged (the resume then rewrites it)."""
    try:
        status = runs.read_summary(run_dir).get("status")
    except KanError:
        return ""
    return status if isinstance(status, str) else ""


def _position(state: dict[str, Any], path: Path) -> tuple[int, int, int]:
    """(epochs trained, best epoch, epoch patience counts from) of a checkpoint, type-checked."""
    counters = state["counters"]
    if isinstance(counters, dict):
        values = (counters.get("epochs_run"), counters.get("best_epoch"))
        extra = counters.get("patience_from", 0)
        if all(map(_whole, (*values, extra, state["epoch"], state["step_in_epoch"]))):
            return int(values[0]), int(values[1]), int(extra)
    raise RunDirError(f"{path}: not a kan-tui checkpoint (epoch, step_in_epoch, counters)")


def _validated(data: Any, source: str) -> RunConfig:
    if not isinstance(data, dict):
        raise RunDirError(f"{source}: not a config (a {type(data).__name__})")
    return validate_config(data, source)


def _mismatch(
    config_path: Path, witness: Path, mismatch: list[tuple[str, Any, Any]], run_dir: Path | None
) -> str:
    key, here, there = mismatch[0]
    more = f" (and {len(mismatch) - 1} more keys)" if len(mismatch) > 1 else ""
    if [k for k, _, _ in mismatch] == ["train.epochs"]:
        hint = "to change the number of epochs, use kan-tui resume --epochs N"
    elif run_dir is not None:
        hint = f"put it back, or rewrite it: kan-tui resume {run_dir} --config-from-checkpoint"
    else:
        hint = "put it back as it was"
    return (
        f"{config_path}: {key}: {_show(here)} here, but {witness} says {_show(there)}, the "
        f"config the run trained with{more}: config.toml was edited or is damaged; {hint}"
    )


def _show(value: Any) -> str:
    return "(not set)" if value is None else json.dumps(value)


def _matches(key: str, patterns: Sequence[str]) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in patterns)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _stamp(path: Path) -> Stamp | None:
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        info = os.stat(path)
        return (info.st_ino, info.st_size, info.st_mtime_ns)
    return None
