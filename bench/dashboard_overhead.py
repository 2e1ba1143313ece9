"""What does the live dashboard cost the training run? (target: at most 3 % of samples/s)

Trains the same short config headless (the trainer on the main thread, events dropped) and with
the Textual dashboard attached (Textual's headless driver at 80x24: thread worker, queue, drain
timer, plotext redraws, exactly as in a terminal), alternating the two so that drift on a shared
machine hits both alike. Throughput is read from each run's metrics.jsonl (the trainer's own
per-epoch samples/s, first epoch dropped as warm-up); the median of the per-pair ratios is the
answer. On a shared machine the runs are noisy, so it also prints the UI thread's own CPU time
while training: a steadier figure for what the dashboard takes from the trainer's GIL and cores.

    python bench/dashboard_overhead.py [--repeats 3] [--epochs 6] [--model kan] [--threads 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from kan_engine.config import RunConfig, apply_overrides
from kan_engine.trainer import Trainer
from kan_tui.app import create_app
from kan_tui.screens.dashboard import DashboardScreen


def bench_config(args: argparse.Namespace) -> RunConfig:
    return apply_overrides(
        RunConfig(),
        {
            "model.name": args.model,
            "data.dataset": "digits",
            "train.epochs": args.epochs,
            "train.batch_size": args.batch_size,
            "train.patience": 0,
            "train.device": args.device,
            "train.log_every": args.log_every,
            "schedule.warmup_epochs": 1,
        },
        source="bench",
    )


def samples_per_s(run_dir: Path) -> float:
    """Median of the per-epoch samples/s the trainer measured, without the first epoch."""
    rates = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["event"] == "epoch" and record["epoch"] > 1:
            rates.append(record["samples_per_s"])
    return statistics.median(rates)


def run_headless(config: RunConfig, out: Path) -> float:
    trainer = Trainer(config, sink=lambda event: None, out_dir=out, preset_name="headless")
    trainer.run()
    return samples_per_s(trainer.run_dir)


async def _run_dashboard(config: RunConfig, out: Path) -> tuple[Path, float]:
    """Run with the dashboard; returns the run folder and the UI thread's CPU share while
    training (CPU seconds of the UI thread per wall second, from the first step to the end)."""
    app = create_app(config=config, preset_name="dashboard", start=True, out_dir=out)
    async with app.run_test(size=(80, 24)) as pilot:
        while not isinstance(app.screen, DashboardScreen):
            await pilot.pause(0.05)
        screen = app.screen
        while screen.state.global_step == 0 and not screen.run.done.is_set():
            await pilot.pause(0.05)
        cpu, wall = time.thread_time(), time.perf_counter()
        while not screen.run.done.is_set():
            await pilot.pause(0.5)  # the harness's own wake-ups, kept rare
        share = (time.thread_time() - cpu) / (time.perf_counter() - wall)
        await pilot.pause()
        if screen.state.status != "finished":
            raise RuntimeError(f"dashboard run ended {screen.state.status}: {screen.state.error}")
        return Path(screen.state.run_dir), share


def run_dashboard(config: RunConfig, out: Path) -> tuple[float, float]:
    run_dir, share = asyncio.run(_run_dashboard(config, out))
    return samples_per_s(run_dir), share


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--log-every", type=int, default=5, help="more step events = more UI work")
    parser.add_argument("--model", default="kan")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = bench_config(args)
    rates: dict[str, list[float]] = {"headless": [], "dashboard": []}
    ui_share: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        run_headless(config, Path(tmp) / "warmup")  # imports, data cache, allocator
        for _ in range(args.repeats):
            rates["headless"].append(run_headless(config, Path(tmp) / "headless"))
            rate, share = run_dashboard(config, Path(tmp) / "dashboard")
            rates["dashboard"].append(rate)
            ui_share.append(share)
    pairs = [d / h for h, d in zip(rates["headless"], rates["dashboard"], strict=True)]
    print(
        f"config: {args.model} on digits, {args.epochs} epochs, batch {args.batch_size}, "
        f"log_every {args.log_every}, {args.device}, {args.threads} torch thread(s)"
    )
    print(f"{'mode':<10} {'runs':>4} {'median samples/s':>17}  all runs")
    for mode, values in rates.items():
        runs = " ".join(f"{v:,.0f}" for v in values)
        print(f"{mode:<10} {len(values):>4} {statistics.median(values):>17,.0f}  {runs}")
    ratio = statistics.median(pairs)
    print(f"pair ratios dashboard/headless: {' '.join(f'{p:.3f}' for p in pairs)}")
    print(f"median ratio: {ratio:.3f}  (cost {1 - ratio:+.1%}, target <= 3 %)")
    shares = " ".join(f"{s:.1%}" for s in ui_share)
    median_share = statistics.median(ui_share)
    print(f"UI thread CPU while training: median {median_share:.1%} of a core ({shares})")


if __name__ == "__main__":
    main()
