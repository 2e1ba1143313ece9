"""Where a training step's time goes: milliseconds per step, kernels launched per step, top ops.

At small batches a GPU step is bound by the host launching kernels, not by arithmetic, so the
figures that matter are the kernel count and the host time per step. Runs a real training run of
the preset (`Trainer.run`: forward, backward, clipping, fused optimizer, grid updates when due,
CUDA graphs when on) and watches it through its events. Step metrics are emitted every `--steps`
steps here, and each one reads the device back, so the interval between two of them is exactly
`--steps` steps of device work. After `--steps` warm-up steps, one interval is timed with nothing
else running, then the next one is profiled (launch counts, top ops; the profiler's own overhead
would inflate a timed interval, so the two are never the same). An interval in which any other
event arrives (an epoch's end and its evaluation) is dropped and the phase starts again.

    python bench/step_profile.py --preset lite --device cuda --data-dir DIR
    python bench/step_profile.py --preset sprint --device cuda --set train.cuda_graphs=false
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from torch.profiler import ProfilerActivity, profile

from kan_engine import presets_io
from kan_engine.events import Event, StepMetrics
from kan_engine.trainer import Trainer
from kan_tui import options


class Probe:
    """Event sink: times one clean interval of `steps` steps, profiles the next, then stops."""

    def __init__(self, steps: int, cuda: bool) -> None:
        self.steps = steps
        self.trainer: Trainer | None = None
        self.activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        self.profiler = profile(activities=self.activities)
        self.phase = "warm-up"  # -> "timed" -> "profiled" -> "done"
        self.started: float | None = None  # start of the running interval (None: none runs)
        self.ms_per_step: float | None = None

    def __call__(self, event: Event) -> None:
        if self.phase == "done":
            return
        if not isinstance(event, StepMetrics):  # an epoch's end, its evaluation: drop the interval
            if self.started is not None and self.phase == "profiled":
                self.profiler.stop()
                self.profiler = profile(activities=self.activities)
            self.started = None
            return
        if self.phase == "warm-up":
            self.phase = "timed"
        elif self.started is not None:  # a clean interval ends here
            if self.phase == "timed":
                self.ms_per_step = (time.perf_counter() - self.started) * 1e3 / self.steps
                self.phase = "profiled"
            else:
                self.profiler.stop()
                self.phase = "done"
                assert self.trainer is not None
                self.trainer.stop()
                return
        if self.phase == "profiled":
            self.profiler.start()
        self.started = time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="lite")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--steps", type=int, default=50, help="warm-up steps, then timed steps")
    parser.add_argument("--top", type=int, default=15, help="rows of the op table")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    preset, name = presets_io.resolve(args.preset)
    sets = [*args.sets, f"train.log_every={args.steps}"]
    named = {"device": args.device, "data_dir": args.data_dir}
    config = options.resolve(preset, f"preset {name}", sets, named)
    probe = Probe(args.steps, cuda=args.device.startswith("cuda"))
    with tempfile.TemporaryDirectory() as out:
        trainer = probe.trainer = Trainer(config, sink=probe, out_dir=Path(out), preset_name=name)
        trainer.run()
    if probe.phase != "done":
        raise SystemExit("the run ended before a timed and a profiled interval: lower --steps")
    events = probe.profiler.key_averages()
    launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel"))
    batch = config.train.batch_size
    print(
        f"{name} on {trainer.device}, batch {batch}: {probe.ms_per_step:.2f} ms/step "
        f"({batch / probe.ms_per_step * 1e3:,.0f} samples/s), "
        f"{launches / args.steps:.0f} kernel launches/step"
    )
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.top))


if __name__ == "__main__":
    main()
