"""`kan-tui prune RUN` and `kan-tui attribution RUN`: a run's model pruned (`pruning`), judged on
the test split, and fine-tuned as a new run; which of its inputs matter.

Everything that can refuse (the run folder, its data, the threshold, the model) is done by
`prepare`, before any folder exists, so a refusal leaves nothing behind. The new run is an
ordinary one: its config.toml has the pruned widths and `model.init_from` naming the pruned
weights it keeps in its own folder (`runs.INIT`), so `resume` (even a start-over of a run
killed in its first epoch), `eval`, `inspect`, `predict` and `export` treat it like any other.
Its grid schedule is dropped: the pruned layers keep the grid they were trained to, and a
schedule would start them over from its first, coarsest stage.

The scores are read on the training split's first batches (`SAMPLES` rows), as the model sees
them: normalised, through the layers in order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from kan_engine import data as data_mod
from kan_engine import pruning, run_setup, runs
from kan_engine.config import DESCRIPTION_MAX, RunConfig, apply_overrides
from kan_engine.datasets import Raw
from kan_engine.errors import ConfigError
from kan_engine.events import EventSink
from kan_engine.trainer import Trainer
from kan_engine.untrusted import printable

DEFAULT_EPOCHS = 5  # of fine-tuning: digits' pruned flat KANs recover within 3 (tests)
SAMPLES = 2048  # training rows the scores are read on
NODE_MODELS = ("flat_kan",)  # models whose config can say the pruned widths (`model.width`)


@dataclass
class Opened:
    """A run's checkpoint as a model on its device, with its data and the rows scored on."""

    config: RunConfig
    raw: Raw
    bundle: data_mod.DataBundle
    model: nn.Module
    samples: Tensor  # (N, ...) the training split's first rows, normalised


@dataclass
class Pruning:
    """A pruned model, its scores before and after, and the config of the run that
    fine-tunes it; nothing written yet."""

    source: Path
    opened: Opened
    result: pruning.PruneResult
    edges_before: int
    nodes: bool  # hidden nodes were removed (else edges were masked only)
    original: dict[str, float]  # test metrics of the source's model (`eval_split`)
    pruned: dict[str, float]  # the same of the pruned model, before fine-tuning
    config: RunConfig  # the new run's
    preset: str  # the new run's label


def open_run(run_dir: Path, which: str, samples: int = SAMPLES) -> Opened:
    """The model of `which` checkpoint (its evaluated weights), in eval mode on the run's
    device, its data, and the rows the scores are read on."""
    checkpoint = run_setup.open_checkpoint(Path(run_dir), which)
    config, device = checkpoint.config, checkpoint.device
    raw = data_mod.read(config.data)
    bundle = data_mod.load(config.data, device=device, seed=config.train.seed, raw=raw)
    model = run_setup.build_model(config, bundle, device)
    checkpoint.load_into(model)
    model.eval()
    rows, taken = [], 0
    for x, _ in bundle.batches("train", run_setup.EVAL_BATCH, shuffle=False):
        rows.append(x[: samples - taken])
        taken += len(rows[-1])
        if taken >= samples:
            break
    return Opened(config, raw, bundle, model, torch.cat(rows))


def _test(opened: Opened, model: nn.Module) -> dict[str, float]:
    config, device = opened.config, opened.bundle.device
    amp = run_setup.precision(config, device)[0]
    return run_setup.eval_split(model, opened.bundle, "test", config.train.batch_size, amp)


def prepare(
    run_dir: Path, which: str = "best", *, threshold: float, epochs: int = DEFAULT_EPOCHS
) -> Pruning:
    """Prune `which` checkpoint of the run at `threshold` and score both models on the test
    split; the new run trains `epochs` (0: none, the run then stops before its first step and
    `resume` fine-tunes it for DEFAULT_EPOCHS). ConfigError / RunDirError / data errors for
    anything that makes a pruned run impossible, before anything is written."""
    threshold = pruning.check_threshold(threshold)
    if not (isinstance(epochs, int) and epochs >= 0):
        raise ConfigError("", "--epochs", f"must be a whole number >= 0 (got {epochs})")
    opened = open_run(run_dir, which)
    config = opened.config
    layers = pruning.kan_stack(opened.model, config.model.name)
    nodes = config.model.name in NODE_MODELS and pruning.nodes_removable(opened.model)
    result = pruning.prune(opened.model, opened.samples, threshold, nodes=nodes)
    changes: dict[str, object] = {
        "train.epochs": epochs or DEFAULT_EPOCHS,
        "kan.grid_schedule": [],
        "kan.grid_size": layers[0].grid_size,
        "model.init_from": None,
        "description": _described(Path(run_dir), threshold),
    }
    if nodes:
        changes["model.width"] = result.widths_after
    return Pruning(
        source=Path(run_dir),
        opened=opened,
        result=result,
        edges_before=pruning.live_edges(opened.model),
        nodes=nodes,
        original=_test(opened, opened.model),
        pruned=_test(opened, result.model),
        config=apply_overrides(config, changes, "prune"),
        preset=f"{runs.preset_of(Path(run_dir))}-pruned",
    )


def _described(source: Path, threshold: float) -> str:
    """The pruned run's description; the source folder's name is any name a file system allows,
    so it is escaped, as the schema wants a description printable (a `\x1b` in it refused the
    prune with an error about a description the user never wrote)."""
    text = f"pruned at threshold {threshold:g} from {printable(source.name)}"
    return text[:DESCRIPTION_MAX]


def trainer(pruned: Pruning, *, sink: EventSink, out_dir: Path) -> Trainer:
    """The new run folder (config.toml, the pruned weights) and the Trainer that fine-tunes
    it; the data read by `prepare` is handed on (not read twice)."""
    weights = {name: t.detach() for name, t in pruned.result.model.state_dict().items()}
    return Trainer(
        pruned.config,
        sink=sink,
        out_dir=out_dir,
        preset_name=pruned.preset,
        raw=pruned.opened.raw,
        init_weights=weights,
    )


@dataclass(frozen=True)
class InputAttribution:
    """The run's inputs by importance (`pruning.attribute`'s input scores), best first.

    An input that never varies (digits' corner pixels) still scores by the constant its edges
    add, which is what removing it would change; `constant` names them, since they carry no
    information about the sample."""

    ranked: list[tuple[str, float]]
    constant: frozenset[str]
    model: str
    samples: int


def attribution(run_dir: Path, which: str = "best") -> InputAttribution:
    """Which inputs of the run matter: each input's score is the importance that flows out of
    it through its edges. Needs KAN layers on the inputs themselves (a flattened input, maybe
    normalised per feature): after a CNN front end the first layer's inputs are features of
    the image, not its pixels."""
    opened = open_run(run_dir, which)
    model, name = opened.model, opened.config.model.name
    layers = pruning.kan_stack(model, name)
    if not isinstance(getattr(model, "front", None), nn.Flatten):
        reason = f"input attribution needs KAN layers on the inputs; {name!r} has a CNN front end"
        raise ConfigError("", "model.name", reason)
    scores = pruning.attribute(layers, pruning.layer_inputs(model, opened.samples))
    names = pruning.input_names(opened.bundle.input_shape, opened.bundle.feature_names)
    x = opened.samples.flatten(1)  # (N, inputs)
    still = (x.amax(0) == x.amin(0)).tolist()
    constant = frozenset(n for n, flat in zip(names, still, strict=True) if flat)
    return InputAttribution(pruning.rank_inputs(scores, names), constant, name, len(x))
