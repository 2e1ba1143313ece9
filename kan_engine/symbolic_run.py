"""`kan-tui symbolic RUN`: a trained run's formula, and how faithful it is on the test split.

Why the check is the point: a formula read off a network is an approximation of an
approximation; users of pykan report formulas that predict far worse than the network they came
from, and no number told them. Here the formula's own values on the test inputs (evaluated from
the sympy tree, `symbolic_eval`) are scored beside the network's on the same inputs: RMSE, MAE
and R² for a regression, accuracy (the argmax of the per-class formulas) for a classification.

Only a pure KAN stack has a formula (`flat_kan`: KAN layers in sequence, nothing between them);
the data's normalisation (inputs) and standardisation (regression targets) are composed in, so
the formula is in the data's own variables and units.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kan_engine import data as data_mod
from kan_engine import symbolic, trained
from kan_engine.errors import ConfigError
from kan_engine.kan import KANLinear
from kan_engine.symbolic_eval import evaluate, regression_metrics

FORMULA_MODELS = ("flat_kan",)
SAMPLES = 2048  # training inputs the edges are sampled on (their range) and importance read from


@dataclass(frozen=True)
class RunFormula:
    """The formulas of a run's outputs, the edge fits behind them, and both scores."""

    task: str
    outputs: list[str]  # target or class names
    formula: symbolic.NetworkFormula
    network: dict[str, float]  # test metrics of the network: rmse/mae/r2, or acc
    from_formula: dict[str, float]  # the same, computed from the formula's values
    test_size: int


def _layers(model: torch.nn.Module, name: str) -> list[KANLinear]:
    if name not in FORMULA_MODELS:
        reason = (
            f"a formula needs a pure KAN stack ({', '.join(FORMULA_MODELS)}); this run's model "
            f"is {name!r}"
        )
        raise ConfigError("", "model.name", reason)
    return [m for m in model.modules() if isinstance(m, KANLinear)]


def formula_of(run_dir: Path, which: str = "best", *, threshold: float = 0.0) -> RunFormula:
    """The formula of `which` checkpoint of the run, checked on its test split."""
    if not threshold >= 0:  # NaN too
        raise ConfigError("", "--threshold", f"must be a number >= 0 (got {threshold})")
    model_run = trained.load(Path(run_dir), which, device=torch.device("cpu"))
    config = model_run.checkpoint.config
    layers = _layers(model_run.model, config.model.name)
    bundle = data_mod.load(config.data, device=torch.device("cpu"), seed=config.train.seed)
    bundle.cast(layers[0].grid.dtype)
    x_norm = bundle.normalize(bundle.stored("train")[0][:SAMPLES]).flatten(1)  # (N, in)
    means = bundle.mean.double().flatten().tolist()
    stds = bundle.std.double().flatten().tolist()
    regression = bundle.task.regression
    output_affine = None
    if regression:
        output_affine = list(
            zip(
                bundle.target_mean.double().tolist(),
                bundle.task.target_std.double().tolist(),
                strict=True,
            )
        )
    names = list(bundle.feature_names or [f"x{k + 1}" for k in range(len(means))])
    formula = symbolic.network_formula(
        layers,
        x_norm,
        input_affine=list(zip(means, stds, strict=True)),
        output_affine=output_affine,
        names=names,
        threshold=threshold,
    )
    x_test, y_test = bundle.stored("test")
    x_original = x_test.double().flatten(1).numpy()  # (N, in), the data's own units
    with torch.no_grad():
        out = model_run.model(bundle.normalize(x_test)).double()  # (N, outputs)
    values = np.stack([evaluate(f, formula.names, x_original) for f in formula.formulas], 1)
    if regression:
        std, mean = (t.double() for t in (bundle.task.target_std, bundle.target_mean))
        truth = (y_test.double() * std + mean).numpy()  # (N, T)
        network = regression_metrics((out * std + mean).numpy().ravel(), truth.ravel())
        from_formula = regression_metrics(values.ravel(), truth.ravel())
    else:
        labels = y_test.numpy()
        network = {"acc": float((out.argmax(1).numpy() == labels).mean())}
        finite = np.isfinite(values).all(1)
        correct = (np.where(finite[:, None], values, -np.inf).argmax(1) == labels) & finite
        from_formula = {"acc": float(correct.mean()), "nonfinite": int((~finite).sum())}
    return RunFormula(
        task=bundle.task.kind,
        outputs=list(bundle.class_names),
        formula=formula,
        network=network,
        from_formula=from_formula,
        test_size=len(x_original),
    )
