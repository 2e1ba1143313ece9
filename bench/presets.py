"""The presets run to the end of their schedules, over several seeds: accuracy, collapse, speed.

`bench/tta.py` answers "how fast does a model reach 90 %"; this answers "what does a preset give
when it is left alone": the test accuracy of the best-validation checkpoint (the number a user
gets), how much a seed's test accuracy fell between its best epoch and its last (a late collapse
that the best checkpoint hides, but that a run without early stopping would show), the epochs to
85 / 90 / 93 / 94 / 95 % test accuracy, training and wall seconds, and the trainer's gradient-norm
warnings and skipped steps. One seed proves nothing about a preset change, so every preset (and
every variant: a preset with its own overrides) runs with several seeds, and the table gives the
mean and the spread (half the max-min range) over them.

Each job is an ordinary `kan-tui run --headless` in its own process, into `<out>/<label>-s<seed>/`
(its log beside it, `<label>-s<seed>.log`), so every number printed is one a run folder recorded,
a stopped job continues with `kan-tui resume`, and several jobs can share one GPU (`--jobs N`
caps how many run at once; default: all). Jobs that run at once slow each other down: the seconds
columns are comparable between runs of the same `--jobs` on the same device only (`--jobs 1` for
timings that stand alone). The test split is evaluated after every epoch
(`data.test_every_epoch`) only to read the epochs to accuracy off; the best checkpoint and early
stopping follow validation accuracy, as always.

    python bench/presets.py --data-dir /usr/share/datasets/fashion-mnist --seeds 0,1,2 \\
        --json presets-h200.json
    python bench/presets.py --presets lite --variant lite_lr2=lite,optim.lr=0.002 --seeds 0,1
    python bench/presets.py --variant tiny=lite,train.epochs=2,data.dataset=digits \\
        --set train.device=cpu --seeds 0,1 --out /tmp/bp      # a smoke test
    python bench/presets.py --resume --out /tmp/bp            # continue the stopped jobs

Ctrl-C (or SIGTERM, SIGHUP) is passed on to the jobs as one SIGINT each: every run writes
`last.pt` and a `stopped` summary and exits, and the table of what exists is still printed. A
second Ctrl-C is passed on too (the runs stop at once, still writing their summaries), a third
kills them. `--resume --out DIR` (the jobs are read from DIR's `bench-presets.json` unless given
again) resumes stopped jobs, starts the ones never started and only tabulates the ended ones.

Exit code: 0 when every job finished, 1 when one failed or diverged, 2 for bad options, 128 + the
signal's number when stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from kan_engine import atomic, history, presets_io, runs
from kan_engine.errors import ConfigError, KanError
from kan_tui import options, signals

DEFAULT_PRESETS = "lite,standard,power"
DEFAULT_SEEDS = "0,1"
THRESHOLDS = (0.85, 0.90, 0.93, 0.94, 0.95)
PLAN = "bench-presets.json"  # in the out folder: the jobs, for --resume
DONE = ("finished", "early_stopped")  # ran to the end of the schedule
ENDED = (*DONE, "diverged", "failed")  # nothing left to run
EXIT_FAILED = 1
EXIT_USAGE = 2
STOPPED_CODES = frozenset({129, 130, 143})  # a child stopped by SIGHUP, SIGINT, SIGTERM
DASH = "—"
LABEL_RE = re.compile(r"[A-Za-z0-9_.-]+")
REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------- jobs


@dataclass(frozen=True)
class Job:
    """One preset (or variant) and seed; `sets` are its `--set` items, in order."""

    label: str
    preset: str  # a preset name or a .toml file
    seed: int
    sets: tuple[str, ...] = ()
    model: str = ""  # filled in by `check_jobs`

    @property
    def name(self) -> str:
        return f"{self.label}-s{self.seed}"


def split_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(item) for item in split_list(text)]
    except ValueError:
        raise ConfigError(
            "--seeds", text, "expected integers separated by commas (0,1,2)"
        ) from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError("--seeds", text, "expected distinct integers (0,1,2)")
    return seeds


def set_key(item: str, source: str = "--set") -> str:
    key, equals, _ = item.partition("=")
    if not equals or not key.strip():
        raise ConfigError(source, item, "expected section.key=value (e.g. optim.lr=0.003)")
    return key.strip()


def merge_sets(*groups: Iterable[str]) -> tuple[str, ...]:
    """`--set` items with later groups winning per key (`kan-tui run` refuses a key given twice
    with different values, so a variant's own value must replace a global one, not follow it)."""
    merged: dict[str, str] = {}
    for group in groups:
        for item in group:
            key = set_key(item)
            merged.pop(key, None)  # the later item takes the later place
            merged[key] = f"{key}={item.partition('=')[2].strip()}"
    return tuple(merged.values())


def preset_label(ref: str) -> str:
    """The label of a plain preset job: its name, or a .toml file's stem."""
    return Path(ref).stem if presets_io.is_path_like(ref) else ref


def check_label(label: str, source: str) -> str:
    if not LABEL_RE.fullmatch(label):
        raise ConfigError(source, label, "a label is letters, digits, '_', '-' and '.' only")
    return label


def parse_variant(text: str) -> tuple[str, str, list[str]]:
    """`LABEL=PRESET[,key=value,...]` -> (label, preset, set items). A piece without `=` belongs
    to the value before it (`kan.grid_range=[-1,1]`)."""
    label, equals, rest = text.partition("=")
    pieces = rest.split(",")
    preset = pieces[0].strip()
    if not equals or not preset:
        raise ConfigError("--variant", text, "expected LABEL=PRESET[,key=value,...]")
    sets: list[str] = []
    for piece in pieces[1:]:
        if "=" in piece or not sets:
            sets.append(piece.strip())
        else:
            sets[-1] += "," + piece
    for item in sets:
        set_key(item, "--variant")
    return check_label(label.strip(), "--variant"), preset, sets


def build_jobs(
    presets: Sequence[str],
    variants: Sequence[str],
    seeds: Sequence[int],
    global_sets: Sequence[str],
) -> list[Job]:
    """Every preset x seed, then every variant x seed; each job's `--set` items are
    `data.test_every_epoch=true`, the global ones, then the variant's own (later ones win)."""
    specs = [(check_label(preset_label(p), "--presets"), p, []) for p in presets]
    specs += [parse_variant(v) for v in variants]
    labels = [label for label, _, _ in specs]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ConfigError("--variant", ", ".join(repeated), "label given twice")
    if not specs:
        raise ConfigError("--presets", "", "no preset and no variant to run")
    base = ["data.test_every_epoch=true"]
    return [
        Job(label, preset, seed, merge_sets(base, global_sets, sets))
        for label, preset, sets in specs
        for seed in seeds
    ]


def check_jobs(jobs: Sequence[Job], data_dir: str | None) -> list[Job]:
    """Resolve every job's config as `kan-tui run` will (a typo fails here, before anything is
    started) and fill in the model's name."""
    checked = []
    for job in jobs:
        config, name = presets_io.resolve(job.preset)
        source = job.preset if presets_io.is_path_like(job.preset) else f"preset {name}"
        named = {"data_dir": data_dir, "seed": str(job.seed)}
        config = options.resolve(config, source, list(job.sets), named)
        checked.append(Job(job.label, job.preset, job.seed, job.sets, config.model.name))
    return checked


def run_command(job: Job, out: Path, data_dir: str | None) -> list[str]:
    command = [sys.executable, "-m", "kan_tui", "run", "--preset", job.preset, "--headless"]
    command += ["--seed", str(job.seed), "--out", str(out / job.name)]
    if data_dir is not None:
        command += ["--data-dir", data_dir]
    for item in job.sets:
        command += ["--set", item]
    return command


def resume_command(run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "kan_tui", "resume", "--headless", str(run_dir)]


def write_plan(out: Path, jobs: Sequence[Job], data_dir: str | None, command: str) -> None:
    plan = {"command": command, "data_dir": data_dir, "jobs": [asdict(job) for job in jobs]}
    atomic.write_text(out / PLAN, json.dumps(plan, indent=2) + "\n")


def read_plan(out: Path) -> tuple[list[Job], str | None] | None:
    """The jobs and data folder an earlier invocation wrote into `out` (None: no plan there)."""
    path = out / PLAN
    if not path.is_file():
        return None
    try:
        plan = json.loads(path.read_text("utf-8"))
        jobs = [
            Job(j["label"], j["preset"], int(j["seed"]), tuple(j["sets"]), j.get("model", ""))
            for j in plan["jobs"]
        ]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ConfigError("--resume", str(path), f"not a plan of this script ({exc})") from None
    return jobs, plan.get("data_dir")


# ---------------------------------------------------------------------- run folders


def job_run_dirs(job_dir: Path) -> list[Path]:
    """The run folders in a job's folder, newest first (normally exactly one)."""
    rows, _ = history.list_runs(job_dir, depth=1)
    return [row.path for row in rows]


def discover(out: Path) -> list[tuple[str, int, Path]]:
    """(label, seed, newest run folder) for each `<label>-s<seed>/` job folder in `out`."""
    found = []
    for path in sorted(Path(out).iterdir()) if Path(out).is_dir() else []:
        match = re.fullmatch(r"(.+)-s(-?\d+)", path.name)
        run_dirs = job_run_dirs(path) if match and path.is_dir() else []
        if match and run_dirs:
            found.append((match.group(1), int(match.group(2)), run_dirs[0]))
    return found


def _number(value: Any) -> float | None:
    """A finite JSON number (runs.py writes non-finite floats as strings), else None."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def first_epochs(
    rows: Sequence[dict[str, Any]], key: str = "test_acc", thresholds: Sequence[float] = THRESHOLDS
) -> dict[float, int | None]:
    """For each threshold, the first epoch whose `key` is at least the threshold (None: never)."""
    reached: dict[float, int | None] = dict.fromkeys(thresholds)
    for row in rows:
        acc = _number(row.get(key))
        for threshold in thresholds:
            if acc is not None and reached[threshold] is None and acc >= threshold:
                reached[threshold] = int(row["epoch"])
    return reached


@dataclass(frozen=True)
class RunStats:
    """One run folder's numbers. Accuracies are fractions; `collapse` is in points."""

    label: str
    seed: int
    run_dir: str
    preset: str
    model: str
    status: str
    params: int
    epochs_run: int
    best_epoch: int | None
    best_val_acc: float | None
    test_at_best: float | None  # the summary's (best.pt on the test split), else the epoch row's
    final_test: float | None  # the last epoch row's
    collapse: float | None  # best epoch's test accuracy minus the last epoch's, in points
    to_test: dict[float, int | None]
    train_seconds: float  # the epoch rows' training steps alone
    seconds: float | None  # the summary's: training and evaluation
    grad_norm_warnings: int
    skipped_steps: int
    device: str

    @property
    def done(self) -> bool:
        return self.status in DONE


def run_stats(run_dir: Path, label: str, seed: int, preset: str = "") -> RunStats:
    """The numbers of one run folder, from summary.json (if written) and metrics.jsonl.

    A run killed without a final summary still has its epoch rows; the best epoch, the warnings
    and the skipped steps then come from the last row."""
    run_dir = Path(run_dir)
    summary = runs.read_summary(run_dir) if (run_dir / runs.SUMMARY).is_file() else {}
    rows = history.epoch_rows(run_dir)
    last = rows[-1] if rows else {}
    stale = summary.get("status") in (None, "running")
    counters = last if stale else summary  # a summary still `running` is the one of the start
    best_epoch = counters.get("best_epoch") or last.get("best_epoch") or None
    by_epoch = {int(row["epoch"]): row for row in rows}
    best_row_test = _number(by_epoch.get(best_epoch, {}).get("test_acc"))
    final_test = _number(last.get("test_acc"))
    test_at_best = _number(summary.get("test_acc"))
    if test_at_best is None:
        test_at_best = best_row_test
    collapse = None
    if best_row_test is not None and final_test is not None:
        collapse = (best_row_test - final_test) * 100
    params = summary.get("params")
    return RunStats(
        label=label,
        seed=seed,
        run_dir=str(run_dir),
        preset=preset or str(summary.get("preset") or runs.preset_of(run_dir)),
        model=str(summary.get("model") or _config_model(run_dir)),
        status=str(summary.get("status") or "unknown"),
        params=int(params.get("total", 0)) if isinstance(params, dict) else 0,
        epochs_run=int(summary.get("epochs_run") or 0) if not stale else len(rows),
        best_epoch=int(best_epoch) if best_epoch else None,
        best_val_acc=_number(counters.get("best_val_acc")),
        test_at_best=test_at_best,
        final_test=final_test,
        collapse=collapse,
        to_test=first_epochs(rows),
        train_seconds=sum(_number(r.get("train_seconds", r.get("seconds"))) or 0.0 for r in rows),
        seconds=_number(summary.get("seconds")),
        grad_norm_warnings=int(counters.get("grad_norm_warnings") or 0),
        skipped_steps=int(counters.get("skipped_steps") or 0),
        device=str(summary.get("device") or ""),
    )


def _config_model(run_dir: Path) -> str:
    try:
        return runs.read_config(run_dir).model.name
    except (KanError, OSError):
        return "?"


def collect(out: Path, jobs: Sequence[Job] | None = None) -> list[RunStats]:
    """The stats of every job's newest run folder (jobs without one are left out); without
    `jobs`, of every `<label>-s<seed>/` folder found in `out`."""
    if jobs is None:
        return [run_stats(path, label, seed) for label, seed, path in discover(out)]
    stats = []
    for job in jobs:
        run_dirs = job_run_dirs(Path(out) / job.name)
        if run_dirs:
            stats.append(run_stats(run_dirs[0], job.label, job.seed, job.preset))
    return stats


# ---------------------------------------------------------------------- aggregation


@dataclass(frozen=True)
class LabelStats:
    """One label over its seeds: means, the spread of the test accuracy, worst cases."""

    label: str
    preset: str
    model: str
    params: int
    seeds_planned: int
    seeds_done: int
    seeds_aggregated: list[int]
    test_at_best_mean: float | None
    test_at_best_spread: float | None  # half the max-min range
    final_test_mean: float | None
    collapse_max: float | None  # points
    to_test_mean: dict[float, float | None]  # None when a seed never reached it
    train_seconds_mean: float | None
    seconds_mean: float | None
    grad_norm_warnings_max: int
    skipped_steps_max: int
    statuses: dict[str, int] = field(default_factory=dict)


def _mean(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def _spread(values: Iterable[float | None]) -> float | None:
    """Half the max-min range; None for fewer than two values (one seed has no spread)."""
    known = [v for v in values if v is not None]
    return (max(known) - min(known)) / 2 if len(known) > 1 else None


def aggregate(stats: Sequence[RunStats], planned: dict[str, int] | None = None) -> list[LabelStats]:
    """One row per label (in the order of `stats`). The means run over the label's ended runs
    (finished, early-stopped, diverged, failed), or over all of its runs when none has ended (a
    benchmark stopped early still shows something; its statuses say so). `planned`: seeds per
    label (default: the runs found)."""
    by_label: dict[str, list[RunStats]] = {}
    for run in stats:
        by_label.setdefault(run.label, []).append(run)
    rows = []
    for label, group in by_label.items():
        used = [r for r in group if r.status in ENDED] or group
        to_test: dict[float, float | None] = {}
        for threshold in THRESHOLDS:
            epochs = [r.to_test.get(threshold) for r in used]
            known = [e for e in epochs if e is not None]
            to_test[threshold] = sum(known) / len(known) if len(known) == len(epochs) else None
        collapses = [r.collapse for r in used if r.collapse is not None]
        rows.append(
            LabelStats(
                label=label,
                preset=group[0].preset,
                model=group[0].model,
                params=group[0].params,
                seeds_planned=(planned or {}).get(label, len(group)),
                seeds_done=sum(r.done for r in group),
                seeds_aggregated=[r.seed for r in used],
                test_at_best_mean=_mean(r.test_at_best for r in used),
                test_at_best_spread=_spread(r.test_at_best for r in used),
                final_test_mean=_mean(r.final_test for r in used),
                collapse_max=max(collapses) if collapses else None,
                to_test_mean=to_test,
                train_seconds_mean=_mean(r.train_seconds for r in used),
                seconds_mean=_mean(r.seconds for r in used),
                grad_norm_warnings_max=max(r.grad_norm_warnings for r in group),
                skipped_steps_max=max(r.skipped_steps for r in group),
                statuses=dict(Counter(r.status for r in group)),
            )
        )
    return rows


# ---------------------------------------------------------------------- tables


def _pct(value: float | None, spread: float | None = None) -> str:
    if value is None:
        return DASH
    return f"{value * 100:.2f}" + ("" if spread is None else f" ± {spread * 100:.2f}")


def _num(value: float | None, spec: str = ".1f") -> str:
    return DASH if value is None else format(value, spec)


def _statuses(counts: dict[str, int]) -> str:
    return ", ".join(s if n == 1 else f"{s} ×{n}" for s, n in counts.items())


def _threshold_headers() -> list[str]:
    return [f"ep → {t * 100:g} %" for t in THRESHOLDS]


def label_table(rows: Sequence[LabelStats]) -> list[list[str]]:
    header = ["label", "preset", "model", "params (M)", "seeds done", "test @ best val %"]
    header += ["final test %", "collapse (pts)", *_threshold_headers(), "train s", "wall s"]
    header += ["grad warn", "skipped", "status"]
    table = [header]
    for r in rows:
        table.append(
            [
                r.label,
                r.preset,
                r.model,
                f"{r.params / 1e6:.3f}",
                f"{r.seeds_done}/{r.seeds_planned}",
                _pct(r.test_at_best_mean, r.test_at_best_spread),
                _pct(r.final_test_mean),
                _num(r.collapse_max, ".2f"),
                *(_num(r.to_test_mean[t]) for t in THRESHOLDS),
                _num(r.train_seconds_mean),
                _num(r.seconds_mean),
                str(r.grad_norm_warnings_max),
                str(r.skipped_steps_max),
                _statuses(r.statuses),
            ]
        )
    return table


def run_table(stats: Sequence[RunStats]) -> list[list[str]]:
    header = ["label", "seed", "model", "params (M)", "status", "epochs", "best epoch"]
    header += ["test @ best val %", "final test %", "collapse (pts)", *_threshold_headers()]
    header += ["train s", "wall s", "grad warn", "skipped", "run folder"]
    table = [header]
    for r in stats:
        table.append(
            [
                r.label,
                str(r.seed),
                r.model,
                f"{r.params / 1e6:.3f}",
                r.status,
                str(r.epochs_run),
                _num(r.best_epoch, "d"),
                _pct(r.test_at_best),
                _pct(r.final_test),
                _num(r.collapse, ".2f"),
                *(_num(r.to_test[t], "d") for t in THRESHOLDS),
                _num(r.train_seconds),
                _num(r.seconds),
                str(r.grad_norm_warnings),
                str(r.skipped_steps),
                r.run_dir,
            ]
        )
    return table


def markdown_table(table: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = []
    for number, row in enumerate(table):
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if number == 0:
            lines.append("| " + " | ".join("-" * w for w in widths) + " |")
    return "\n".join(lines)


def markdown(labels: Sequence[LabelStats], stats: Sequence[RunStats], env: dict[str, Any]) -> str:
    """Both tables with a caption that says what the cells are."""
    caption = [
        f"presets to the end of their schedules: device {env.get('device', '?')}, "
        f"torch {env.get('torch', '?')}, commit {env.get('commit') or '?'}",
        "test @ best val: the best-validation checkpoint on the test split (mean ± half the "
        "max-min range over seeds); final test: the last epoch's; collapse: the largest drop "
        "from the best epoch's test accuracy to the last epoch's over seeds; ep → N %: the first "
        f"epoch with test accuracy ≥ N % (mean; {DASH}: a seed never reached it); train s: "
        "training steps alone; wall s: the run's training and evaluation. Means over the ended "
        "runs of a label (over all of them while none has ended).",
    ]
    if not stats:
        return "\n".join([*caption, "", "no run folder yet"])
    return "\n".join(
        [*caption, "", markdown_table(label_table(labels)), "", "per run:", ""]
        + [markdown_table(run_table(stats))]
    )


def to_json(
    labels: Sequence[LabelStats], stats: Sequence[RunStats], env: dict[str, Any]
) -> dict[str, Any]:
    """Plain data; thresholds as percent strings ("93")."""

    def keyed(table: dict[float, Any]) -> dict[str, Any]:
        return {f"{t * 100:g}": v for t, v in table.items()}

    label_rows = [{**asdict(r), "to_test_mean": keyed(r.to_test_mean)} for r in labels]
    run_rows = [{**asdict(r), "to_test": keyed(r.to_test), "done": r.done} for r in stats]
    thresholds = [f"{t * 100:g}" for t in THRESHOLDS]
    return {**env, "thresholds": thresholds, "labels": label_rows, "runs": run_rows}


def git_commit(repo: Path = REPO) -> str | None:
    """HEAD of the checkout, with "+dirty" when it has changes (None: no git, not a checkout)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}+dirty" if status else head or None


def device_info() -> dict[str, str]:
    """The device name and torch version (torch is imported here only: the jobs have ended)."""
    import torch

    if torch.cuda.is_available():
        device = torch.cuda.get_device_name(0)
    else:
        device = platform.processor() or "cpu"
    return {"device": device, "torch": torch.__version__}


# ---------------------------------------------------------------------- processes


@dataclass
class Launch:
    """A command to run for a job (a fresh run or a resume)."""

    job: Job
    command: list[str]
    log: Path
    kind: str  # "run" or "resume"


@dataclass
class Child:
    launch: Launch
    proc: subprocess.Popen[bytes]
    started: float
    signalled: int = 0  # SIGINTs passed on so far


class Signals:
    """Counts SIGINT / SIGTERM / SIGHUP to this script; the loop passes them on to the jobs."""

    def __init__(self) -> None:
        self.count = 0
        self.signum: int | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        self.signum = self.signum or signum
        what = ["stopping the jobs", "stopping the jobs at once", "killing the jobs"]
        message = f"\n{signal.Signals(signum).name}: {what[min(self.count, 3) - 1]}\n"
        os.write(2, message.encode())

    @contextlib.contextmanager
    def installed(self) -> Iterator[Signals]:
        with signals.handling(("SIGINT", "SIGTERM", "SIGHUP"), self):
            yield self


def note(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def start(launch: Launch) -> Child:
    """Start a job in its own session: a Ctrl-C at the terminal reaches this script alone, which
    passes it on exactly once (a second SIGINT would make a run abandon its step)."""
    launch.log.parent.mkdir(parents=True, exist_ok=True)
    with launch.log.open("ab") as log:
        log.write(f"$ {shlex.join(launch.command)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            launch.command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )
    note(f"{launch.kind} {launch.job.name} (pid {proc.pid}, log {launch.log})")
    return Child(launch, proc, time.monotonic())


def _log_tail(path: Path, lines: int = 5) -> str:
    with contextlib.suppress(OSError):
        text = path.read_text("utf-8", errors="replace").splitlines()
        return "\n".join("    " + line for line in text[-lines:])
    return ""


def ended(child: Child, code: int) -> None:
    seconds = time.monotonic() - child.started
    note(f"ended {child.launch.job.name}: exit {code} after {seconds:.1f} s")
    if code not in (0, *STOPPED_CODES):
        print(_log_tail(child.launch.log), file=sys.stderr)


def pass_on(children: Iterable[Child], count: int) -> None:
    """Bring each running job up to `count` signals: SIGINT twice, then SIGKILL."""
    for child in children:
        while child.signalled < count and child.proc.poll() is None:
            child.signalled += 1
            sig = signal.SIGINT if child.signalled < 3 else signal.SIGKILL
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.proc.pid, sig)


def run_all(launches: Sequence[Launch], max_jobs: int, signals: Signals) -> dict[str, int]:
    """Run the launches, at most `max_jobs` at once; returns {job name: exit code}. After a signal
    no new job starts and the running ones are stopped; no job outlives this function."""
    pending = deque(launches)
    running: list[Child] = []
    codes: dict[str, int] = {}
    try:
        while pending or running:
            while pending and not signals.count and len(running) < max_jobs:
                running.append(start(pending.popleft()))
            pass_on(running, signals.count)
            for child in list(running):
                code = child.proc.poll()
                if code is not None:
                    codes[child.launch.job.name] = code
                    ended(child, code)
                    running.remove(child)
            if signals.count and pending:
                note(f"not started: {', '.join(launch.job.name for launch in pending)}")
                pending.clear()
            time.sleep(0.2)
    finally:  # an unexpected error here: stop the jobs as a Ctrl-C would, then kill them
        pass_on(running, 1)
        deadline = time.monotonic() + 60
        for child in running:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(max(0.0, deadline - time.monotonic()))
            pass_on([child], 3)
            child.proc.wait()
    return codes


def plan_launches(
    jobs: Sequence[Job], out: Path, data_dir: str | None, resume: bool
) -> tuple[list[Launch], list[str]]:
    """(what to run, the jobs in error). Without `resume` a job folder holding a run is an error;
    with it, a stopped or crashed run is resumed (`kan-tui resume` starts over a run killed in its
    first epoch), a job without a run starts, an ended run is only tabulated."""
    launches: list[Launch] = []
    errors: list[str] = []
    for job in jobs:
        log = out / f"{job.name}.log"
        run_dirs = job_run_dirs(out / job.name)
        if not run_dirs:
            launches.append(Launch(job, run_command(job, out, data_dir), log, "run"))
            continue
        if not resume:
            errors.append(job.name)
            continue
        if len(run_dirs) > 1:
            note(f"{job.name}: {len(run_dirs)} run folders, the newest counts: {run_dirs[0]}")
        stats = run_stats(run_dirs[0], job.label, job.seed, job.preset)
        if stats.status in ENDED:
            continue
        last = runs.checkpoint_path(run_dirs[0], "last")
        if last.exists() or stats.epochs_run <= 1:
            launches.append(Launch(job, resume_command(run_dirs[0]), log, "resume"))
        else:  # no checkpoint to continue from: a new run folder beside it (the newest counts)
            note(f"{job.name}: {run_dirs[0]} has no last.pt: starting anew")
            launches.append(Launch(job, run_command(job, out, data_dir), log, "run"))
    return launches, errors


# ---------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--presets", default=None, help=f"default: {DEFAULT_PRESETS} (none when --variant only)"
    )
    parser.add_argument("--seeds", default=None, help=f"default: {DEFAULT_SEEDS}")
    parser.add_argument(
        "--variant",
        dest="variants",
        action="append",
        default=[],
        metavar="LABEL=PRESET[,KEY=VALUE,...]",
        help="a preset with its own overrides (repeatable)",
    )
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--data-dir", default=None, help="folder holding the data set")
    parser.add_argument(
        "--out", type=Path, default=None, help="default: runs/bench-presets-<stamp>"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--jobs", type=int, default=None, help="jobs at once (default: all)")
    parser.add_argument(
        "--resume", action="store_true", help="continue the stopped jobs of --out DIR"
    )
    return parser.parse_args(argv)


def jobs_of(args: argparse.Namespace) -> tuple[list[Job], str | None, bool]:
    """(jobs, data folder, whether from the plan): the command line's, or with `--resume` and no
    jobs given, those of the plan in `--out`."""
    given = args.presets is not None or args.variants or args.seeds is not None
    if args.resume and not given:
        plan = read_plan(args.out)
        if plan is None:
            raise ConfigError("--resume", str(args.out / PLAN), "missing: give the jobs again")
        if args.sets or args.data_dir:
            note(f"--set / --data-dir ignored: the jobs are those of {args.out / PLAN}")
        return (*plan, True)
    presets = args.presets if args.presets is not None else ("" if args.variants else None)
    jobs = build_jobs(
        split_list(DEFAULT_PRESETS if presets is None else presets),
        args.variants,
        parse_seeds(args.seeds or DEFAULT_SEEDS),
        args.sets,
    )
    return jobs, args.data_dir, False


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(["python", "bench/presets.py", *(sys.argv[1:] if argv is None else argv)])
    if args.resume and (args.out is None or not args.out.is_dir()):
        raise ConfigError("--resume", "", "needs --out DIR, the folder of an earlier invocation")
    if args.jobs is not None and args.jobs < 1:
        raise ConfigError("--jobs", str(args.jobs), "must be at least 1")
    if args.out is None:
        args.out = Path("runs") / f"bench-presets-{time.strftime('%Y%m%d-%H%M%S')}"
    jobs, data_dir, from_plan = jobs_of(args)
    jobs = check_jobs(jobs, data_dir)
    launches, errors = plan_launches(jobs, args.out, data_dir, args.resume)
    if errors:
        reason = f"job folders hold runs already: {', '.join(errors)} (--resume, or another --out)"
        raise ConfigError("--out", str(args.out), reason)
    env = {"commit": git_commit(), "command": command, "out": str(args.out)}
    env["date"] = time.strftime("%Y-%m-%d %H:%M:%S %z")
    args.out.mkdir(parents=True, exist_ok=True)
    if not from_plan:
        write_plan(args.out, jobs, data_dir, command)
    with Signals().installed() as signals:
        codes = run_all(launches, args.jobs or max(1, len(launches)), signals)
        stats = collect(args.out, jobs)
        labels = aggregate(stats, dict(Counter(job.label for job in jobs)))
        env.update(device_info())
    print("\n" + markdown(labels, stats, env) + "\n")
    if args.json is not None:
        atomic.write_text(args.json, runs.dumps(to_json(labels, stats, env)) + "\n")
        print(f"JSON in {args.json}")
    print(f"run folders and logs in {args.out}")
    if signals.signum is not None:
        return 128 + signals.signum
    bad = any(code not in (0, *STOPPED_CODES) for code in codes.values())
    return EXIT_FAILED if bad or any(r.status in ("diverged", "failed") for r in stats) else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KanError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt:  # before any job started (checking the configs)
        sys.exit(128 + signal.SIGINT)
