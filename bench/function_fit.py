"""Function fitting with grid extension: kan-tui's `function` preset against pykan 0.2.8 and the
KAN paper's figures, measured side by side in one run.

    python3 bench/function_fit.py [--steps 200] [--seeds 0] [--optimizer lm|lbfgs] [--pykan DIR]

Ours: the shipped `function` preset through the trainer (run folder, evaluation every epoch,
checkpoints: the whole product path), f(x1, x2) = exp(sin(pi*x1) + x2**2), a [2, 1, 1] KAN,
grids 3, 5, 10, 20, 50, `--steps` steps per grid (the preset's 200 unless told) of the preset's
optimizer (Levenberg-Marquardt), or of `--optimizer` (lbfgs: pykan's, 20 iterations a step).
pykan: the same function, width, grids and steps with its L-BFGS (`KAN.fit(opt="LBFGS")`, then
`refine`), in float64 like ours, 1,000 train / 1,000 test points (ours: 900 train, 100 val,
1,000 test). pykan is a reference to measure against, never a dependency of kan-tui: install it
into a folder of its own (`pip install --target DIR pykan==0.2.8 matplotlib pandas tqdm pyyaml`)
and pass `--pykan DIR`; it runs in a subprocess with that folder on its path, so its packages
never mix with ours. Without `--pykan` only our side and the paper's figures are printed.

Printed: test RMSE at the end of each grid's stage (ours: each seed, and pykan's), the paper's
stepped curve (Fig. 2.3, [2, 1, 1]) and whether we are within 2x of it, and the wall time of the
whole schedule for each side with the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GRIDS = (3, 5, 10, 20, 50)
PAPER = {3: 1.5e-2, 10: 3.3e-4, 20: 4.0e-5, 50: 1.2e-5}  # test RMSE, KAN paper Fig. 2.3
STEPS_PER_EPOCH = 20  # the preset's

PYKAN_SCRIPT = r"""
import json, sys, time
import torch
torch.set_default_dtype(torch.float64)
from kan import KAN, create_dataset
grids, steps, seed = json.loads(sys.argv[1])
f = lambda x: torch.exp(torch.sin(torch.pi * x[:, [0]]) + x[:, [1]] ** 2)
data = create_dataset(f, n_var=2, train_num=1000, test_num=1000, seed=0, device="cpu")
start = time.perf_counter()
model = KAN(width=[2, 1, 1], grid=grids[0], k=3, seed=seed, device="cpu", auto_save=False)
rows = []
for i, grid in enumerate(grids):
    if i:
        model = model.refine(grid)
    out = model.fit(data, opt="LBFGS", steps=steps, log=steps + 1)
    rows.append([grid, float(out["train_loss"][-1]), float(out["test_loss"][-1])])
print(json.dumps({"seconds": time.perf_counter() - start, "stages": rows}))
"""


def ours(steps: int, seed: int, out: Path, optimizer: str | None) -> dict:
    """The function preset to its end; per stage (grid, train RMSE, test RMSE) and seconds."""
    from kan_engine import presets_io
    from kan_engine.config import apply_overrides
    from kan_engine.trainer import Trainer

    config, _ = presets_io.resolve("function")
    stage_epochs = max(1, steps // STEPS_PER_EPOCH)
    config = apply_overrides(
        config,
        {
            "train.seed": seed,
            "train.steps_per_epoch": min(steps, STEPS_PER_EPOCH),
            "kan.grid_stage_epochs": stage_epochs,
            "train.epochs": stage_epochs * len(config.kan.grid_schedule),
            "optim.optimizer": optimizer or config.optim.optimizer,
        },
    )
    rows: list = []

    def sink(event: object) -> None:
        if getattr(event, "event", "") == "epoch" and event.epoch % stage_epochs == 0:
            rows.append([event.grid_size, event.metrics["train_rmse"], event.metrics["test_rmse"]])

    start = time.perf_counter()
    Trainer(config, sink=sink, out_dir=out, preset_name="function").run()
    return {"seconds": time.perf_counter() - start, "stages": rows}


def pykan(folder: Path, steps: int, seed: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(folder.resolve()), "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as scratch:  # pykan logs into ./model of its cwd
        (Path(scratch) / "model").mkdir()
        done = subprocess.run(
            [sys.executable, "-c", PYKAN_SCRIPT, json.dumps([list(GRIDS), steps, seed])],
            capture_output=True,
            text=True,
            env=env,
            cwd=scratch,
            check=False,
        )
    if done.returncode:
        raise SystemExit(f"pykan failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="steps per grid")
    parser.add_argument("--optimizer", help="ours with this optimizer (default: the preset's)")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds of our runs")
    parser.add_argument("--pykan", type=Path, help="a folder with pykan 0.2.8 installed")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    results: dict = {"steps": args.steps, "ours": {}, "pykan": None}
    with tempfile.TemporaryDirectory() as runs:
        for seed in seeds:
            results["ours"][seed] = ours(args.steps, seed, Path(runs), args.optimizer)
    if args.pykan is not None:
        results["pykan"] = pykan(args.pykan, args.steps, seeds[0])
    mine = args.optimizer or "the preset's optimizer"
    print(f"test RMSE at the end of each grid ({args.steps} steps per grid; ours: {mine})")
    header = ["grid", "paper"] + [f"ours s{seed}" for seed in seeds]
    header += ["pykan"] if results["pykan"] else []
    print("  ".join(f"{h:>10}" for h in header) + "  ours within 2x of the paper")
    for k, grid in enumerate(GRIDS):
        ours_rmse = [results["ours"][seed]["stages"][k][2] for seed in seeds]
        cells = [str(grid), f"{PAPER[grid]:.1e}" if grid in PAPER else "-"]
        cells += [f"{v:.2e}" for v in ours_rmse]
        if results["pykan"]:
            cells.append(f"{results['pykan']['stages'][k][2]:.2e}")
        within = (
            f"{sum(v <= 2 * PAPER[grid] for v in ours_rmse)} of {len(seeds)}"
            if grid in PAPER
            else "-"
        )
        print("  ".join(f"{c:>10}" for c in cells) + f"  {within}")
    ours_seconds = sum(results["ours"][s]["seconds"] for s in seeds) / len(seeds)
    print(f"whole schedule: ours {ours_seconds:.1f} s (mean of {len(seeds)})", end="")
    if results["pykan"]:
        theirs = results["pykan"]["seconds"]
        print(f", pykan {theirs:.1f} s: ours is {theirs / ours_seconds:.1f}x faster")
    else:
        print(" (pykan not measured: pass --pykan DIR)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
