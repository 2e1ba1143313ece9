"""Time to accuracy on Fashion-MNIST: epochs and training seconds to 85 %, 90 %, 92 % and 93 %.

Trains each model with the same preset and budget (the `kan` baseline with its conventional
settings, as `kan-tui compare` does: `kan_engine.compare` holds the logic, this is its script
form), each into its own run folder, then prints the notes' comparison table with the numbers
measured in this run and writes them as JSON (with device, torch version, commit and command, for
BENCHMARKS.md). Seconds are training steps alone, summed per epoch; test accuracy is evaluated
after every epoch because issue 5's targets (90 % within 5 s, 93 % within 20 s on the H200) are
test accuracies.

    python bench/tta.py --models cnn,kan,rapid_kan_lite,rapid_kan,rapid_kan_power --epochs 10 \\
        --data-dir /usr/share/datasets/fashion-mnist --device cuda --json tta-h200.json
    python bench/tta.py --models cnn,rapid_kan_lite --epochs 5 --batch-size 512 --compile \\
        --device cuda --json tta-h200-b512.json        # the larger-batch GPU path, LR x sqrt(8)
    python bench/tta.py --dataset digits --models cnn,kan --epochs 3 --device cpu   # a smoke test

Exit code: 0 when every model finished, 1 when one failed or diverged, 2 for bad options or
missing data, 130 when stopped with Ctrl-C (the table of the models done so far is printed).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from rich.console import Console

from kan_engine import compare, presets_io
from kan_engine.errors import KanError
from kan_tui import headless, options

BENCH_MODELS = "cnn,kan,rapid_kan_lite,rapid_kan,rapid_kan_power"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=BENCH_MODELS, help=f"default: {BENCH_MODELS}")
    parser.add_argument("--preset", default="lite", help="preset name or .toml file (lite)")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--data-dir", default=None, help="folder holding the data set")
    parser.add_argument("--epochs", default="10", help="epochs per model (10)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the preset's")
    parser.add_argument("--lr-scaling", choices=compare.LR_SCALINGS, default="sqrt")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--mixed-precision", default=None, help="auto, bf16, fp16, off")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--seed", default=None)
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--set-for", action="append", default=[], metavar="MODEL:KEY=VALUE", help="one model"
    )
    parser.add_argument(
        "--same-settings", action="store_true", help="the kan baseline trains with the preset too"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/bench-tta"), help="run folders")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = compare.parse_models(args.models)
    per_model = compare.parse_model_sets(args.set_for, names)
    preset_config, preset_name = presets_io.resolve(args.preset)
    named = {
        "dataset": args.dataset,
        "data_dir": args.data_dir,
        "epochs": args.epochs,
        "device": args.device,
        "mixed_precision": args.mixed_precision,
        "compile": args.compile,
        "seed": args.seed,
    }
    config = options.resolve(preset_config, f"preset {preset_name}", args.sets, named)
    configs = compare.model_configs(
        config,
        names,
        batch_size=args.batch_size,
        lr_scaling=args.lr_scaling,
        baseline_settings=not args.same_settings,
        per_model=per_model,
    )
    console = Console()
    result = compare.run_models(
        configs,
        out_dir=args.out,
        preset_name=preset_name,
        make_sink=lambda: headless.HeadlessReporter(console, interactive=False),
        train=headless.train,
        command=shlex.join(["python", "bench/tta.py", *(sys.argv[1:] if argv is None else argv)]),
    )
    compare.write_outputs(result, args.json)
    print("\n" + compare.markdown(result) + "\n")
    print(f"runs, compare.json and compare.md in {result.folder}")
    return result.exit_code


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KanError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
