"""Where a training step's time goes: milliseconds per step, kernels launched per step, top ops.

At small batches a GPU step is bound by the host launching kernels, not by arithmetic, so the
figures that matter are the kernel count and the host time per step. Runs the trainer's own step
(`Trainer._train_step`: forward, backward, clipping, fused optimizer, grid updates when due) on
real batches of the preset's data, first `--warmup` untimed steps (compilation, allocator), then
`--steps` timed ones, then the same number under torch.profiler.

    python bench/step_profile.py --preset lite --device cuda --data-dir DIR
    python bench/step_profile.py --preset sprint --device cuda --set kan.prob_update_grid=0
"""

from __future__ import annotations

import argparse
import tempfile
import time
from itertools import islice
from pathlib import Path

from torch.profiler import ProfilerActivity, profile

from kan_engine import presets_io, runs
from kan_engine.trainer import Trainer
from kan_tui import options


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="lite")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--top", type=int, default=15, help="rows of the op table")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    preset, name = presets_io.resolve(args.preset)
    named = {"device": args.device, "data_dir": args.data_dir}
    config = options.resolve(preset, f"preset {name}", args.sets, named)
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(config, sink=lambda event: None, out_dir=Path(out), preset_name=name)
        trainer.setup()
        # what run() and _train() set up before the first step
        trainer.metrics = runs.MetricsLog(trainer.run_dir / runs.METRICS)
        trainer._tick = time.perf_counter()
        device = trainer.device
        batches = trainer.data.batches("train", config.train.batch_size, shuffle=True, epoch=1)

        def run(n: int) -> float:
            start = time.perf_counter()
            for x, y in islice(batches, n):
                trainer._train_step(x, y)
            trainer._settle()  # waits for the device
            return (time.perf_counter() - start) * 1e3 / n

        run(args.warmup)
        ms = run(args.steps)
        activities = [ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(ProfilerActivity.CUDA)
        with profile(activities=activities) as prof:
            run(args.steps)
    events = prof.key_averages()
    launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel"))
    print(
        f"{name} on {device}, batch {config.train.batch_size}: {ms:.2f} ms/step "
        f"({config.train.batch_size / ms * 1e3:,.0f} samples/s), "
        f"{launches / args.steps:.0f} kernel launches/step"
    )
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.top))


if __name__ == "__main__":
    main()
