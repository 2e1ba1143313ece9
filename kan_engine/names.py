"""What a config may name: the models and data sets (each with its one line), the layer inits.

Written once, here, free of torch (and of every import but `typing`), so that validating a preset
(`config.check_names`), listing the choices in a form or a help text, never loads torch. The
implementations attach to these names: `models.py` registers one builder per model name and
`data.py` one reader per data-set name, and each refuses to import when its table and this
catalogue disagree, so a name cannot be known here and missing there (or the reverse).

The split rule is part of what a data set is (its description promises it), so its two numbers
live here too; `datasets.py` splits by them.
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = [
    "DATASETS",
    "INITS",
    "Init",
    "MODELS",
    "SPLIT_SEED",
    "TEST_FRACTION",
    "check_complete",
    "unknown",
]

# Seed of every split we carve ourselves (digits/images/csv test splits, validation splits): fixed,
# so that runs with different training seeds are compared on the same held-out samples.
SPLIT_SEED = 0
TEST_FRACTION = 0.2

# How a KAN layer's weights start (`KANLinear(init=...)`, `[kan] init`): see `kan.KANLinear`.
Init = Literal["identity", "noise"]
INITS: tuple[str, ...] = get_args(Init)

MODELS: dict[str, str] = {
    "rapid_kan_lite": (
        "Rapid KAN lite: 2-stage CNN (2 convs each, 32-64) + KAN 1024-896-C, fastest"
    ),
    "rapid_kan": "Rapid KAN: 3-stage CNN (2 convs each, 64-128-128) + KAN 2048-1152-512-C",
    "rapid_kan_power": (
        "Rapid KAN power: 3-stage CNN (2 convs each, 64-128-256) + KAN 4096-1400-512-C"
    ),
    "rapid_kan_tiny": (
        "Rapid KAN tiny: 2-stage CNN (1 conv each, 16-32) + KAN 512-128-C, for a laptop CPU"
    ),
    "rapid_kan_lite_mlp": "control: rapid_kan_lite's CNN with an MLP head of the KAN head's size",
    "rapid_kan_mlp": "control: rapid_kan's CNN with an MLP head of the KAN head's size",
    "rapid_kan_power_mlp": "control: rapid_kan_power's CNN with an MLP head of the KAN head's size",
    "memory_safe_kan": (
        "exact B-spline KAN on flattened inputs, 256-128 hidden, chunked for bounded memory"
    ),
    "fast_exact_kan": (
        "exact B-spline KAN on flattened inputs, one 256 hidden layer, unchunked for speed"
    ),
    "flat_kan": (
        "KAN of model.width (inputs, hidden..., outputs; default [inputs, 5, outputs]), no CNN "
        "or norms: for functions and tables, grid extension and formulas"
    ),
    "flat_mlp": "control: SiLU MLP of model.width's depth, widened to flat_kan's parameter count",
    "cnn": "baseline: standard small CNN (2 conv-BN-ReLU stages, linear 256 head)",
    "kan": (
        "baseline: original KAN (flatten -> KAN 64 -> C, no CNN, no norm, pykan-like defaults)"
    ),
}

DATASETS: dict[str, str] = {
    "fashion-mnist": "Fashion-MNIST: 28x28 grey clothing, 10 classes, 60k train / 10k test",
    "mnist": "MNIST: 28x28 grey handwritten digits, 10 classes, 60k train / 10k test",
    "cifar10": "CIFAR-10: 32x32 colour photos, 10 classes, 50k train / 10k test",
    "digits": (
        "scikit-learn digits: 8x8 grey, 10 classes, 1797 images, works offline; "
        f"test split: a fixed stratified {TEST_FRACTION:.0%} (seed {SPLIT_SEED})"
    ),
    "images": (
        "your images: --data-dir with a folder per class (or train/ and test/ folders of those); "
        f"else a fixed stratified {TEST_FRACTION:.0%} test split"
    ),
    "csv": (
        "your table: --data-dir FILE.csv with a header, numeric features, label column --target "
        f"(default: the last; continuous: a regression); a fixed {TEST_FRACTION:.0%} test split"
    ),
    "function": (
        "a formula sampled on a box, a regression: data.function = a name (kan-tui datasets) "
        "or an expression in x1, x2, ...; data.function_range, _train, _test, _noise"
    ),
}


def unknown(kind: str, name: str, known: dict[str, str]) -> str:
    """The reason for a name that is not in `known`: `unknown model 'x' (known: a, b, ...)`."""
    return f"unknown {kind} {name} (known: {', '.join(known)})"


def check_complete(catalogue: dict[str, str], implemented: set[str], what: str) -> None:
    """Raise at import when a table of implementations and its catalogue disagree (a programming
    error: the name was added to one and not the other)."""
    missing, extra = set(catalogue) - implemented, implemented - set(catalogue)
    if missing or extra:
        raise ImportError(
            f"{what}: catalogue and implementations disagree "
            f"(no implementation: {sorted(missing)}; not in kan_engine.names: {sorted(extra)})"
        )
