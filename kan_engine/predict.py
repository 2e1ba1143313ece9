"""`kan-tui predict`: a trained run's answers for new inputs, as rows for a table or a file.

Inputs go through the training's own normalisation, rebuilt from the checkpoint's statistics
(`InferenceMeta.standardize`), never from the new inputs; the forward is the one `eval` runs
(the run's device and autocast, `eval`'s batch size by default), so predicting on `test` gives
`eval`'s accuracy. Classifications give the top-k classes with their softmax probabilities;
regressions the outputs in the targets' own units (`InferenceMeta.values`). The output file is
CSV or JSON lines (by its name), written atomically once every row is known.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kan_engine import models, runs
from kan_engine.errors import ConfigError
from kan_engine.inference_inputs import Inputs
from kan_engine.run_setup import EVAL_BATCH, precision
from kan_engine.trained import Trained

OUT_SUFFIXES = (".csv", ".jsonl")
DEFAULT_TOP_K = 3


@dataclass
class Prediction:
    """The answers for `inputs`, one row each."""

    inputs: Inputs
    task: str
    names: list[str]  # the class names (classification) or target names (regression)
    top_index: np.ndarray | None = None  # classification: (N, k) class indices, best first
    top_prob: np.ndarray | None = None  # (N, k) their probabilities
    values: np.ndarray | None = None  # regression: (N, T)

    def summary(self) -> str | None:
        """Accuracy (classification) or RMSE (regression) where the inputs came with answers."""
        targets = self.inputs.targets
        if targets is None:
            return None
        n = len(targets)
        if self.top_index is not None:
            correct = int((self.top_index[:, 0] == targets).sum())
            return f"accuracy {correct / n:.2%} ({correct} of {n})"
        assert self.values is not None
        rmse = math.sqrt(float(np.mean((self.values[:, : targets.shape[1]] - targets) ** 2)))
        return f"RMSE {rmse:.6g} over {n} rows"

    def records(self) -> list[dict[str, Any]]:
        """One dict per row: what the JSONL file holds (and the CSV, flattened)."""
        rows = []
        for k, name in enumerate(self.inputs.names):
            row: dict[str, Any] = {"input": name}
            if self.top_index is not None and self.top_prob is not None:
                top = [
                    {"class": self.names[int(c)], "probability": float(p)}
                    for c, p in zip(self.top_index[k], self.top_prob[k], strict=True)
                ]
                row |= {"class": top[0]["class"], "probability": top[0]["probability"]}
                row["top"] = top
            else:
                assert self.values is not None
                row["values"] = dict(zip(self.names, map(float, self.values[k]), strict=True))
            if self.inputs.targets is not None:
                row["label"] = self._answer(k)
            rows.append(row)
        return rows

    def _answer(self, k: int) -> Any:
        targets = self.inputs.targets
        assert targets is not None
        if self.task == "regression":
            return [float(v) for v in targets[k]]
        return self.names[int(targets[k])]


def check_options(trained: Trained, top_k: int | None, batch_size: int | None) -> tuple[int, int]:
    """`--top-k` and `--batch-size`, or their defaults: 3 classes (fewer if the run has fewer),
    and `eval`'s batch size (the same batches give the same numbers)."""
    classes = trained.meta.outputs
    if batch_size is not None and batch_size < 1:
        raise ConfigError("--batch-size", "", f"{batch_size}: must be 1 or more")
    batch = batch_size or max(trained.checkpoint.config.train.batch_size, EVAL_BATCH)
    if top_k is None:
        return min(DEFAULT_TOP_K, classes), batch
    if trained.meta.task == "regression":
        raise ConfigError("--top-k", "", "the run is a regression: it has no classes to rank")
    if not 1 <= top_k <= classes:
        raise ConfigError("--top-k", "", f"{top_k}: must be from 1 to the run's {classes} classes")
    return top_k, batch


def run(trained: Trained, inputs: Inputs, *, batch_size: int, top_k: int) -> Prediction:
    """The model's answers for every input row, in batches of `batch_size`."""
    meta, device, config = trained.meta, trained.checkpoint.device, trained.checkpoint.config
    standardize = meta.standardize(device, models.DTYPES[config.train.dtype])
    amp_dtype = precision(config, device)[0]
    outputs = []
    with torch.no_grad():
        for start in range(0, len(inputs.x), batch_size):
            x = standardize(torch.from_numpy(inputs.x[start : start + batch_size]).to(device))
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                out = trained.model(x)  # (B, outputs)
            outputs.append(out.to(torch.promote_types(out.dtype, torch.float32)))
    out = torch.cat(outputs)  # (N, outputs)
    if meta.task == "regression":
        values = meta.values(out).cpu().numpy()
        return Prediction(inputs, meta.task, meta.class_names, values=values)
    prob, index = out.softmax(1).topk(top_k, dim=1)  # (N, k) each, best first
    return Prediction(
        inputs,
        meta.task,
        meta.class_names,
        top_index=index.cpu().numpy(),
        top_prob=prob.cpu().numpy(),
    )


def check_out(out: Path) -> None:
    """`--out`: a .csv or .jsonl file in a folder that exists (checked before any work)."""
    runs.check_output_file(out, "--out", OUT_SUFFIXES)


def write(prediction: Prediction, out: Path) -> None:
    """The rows as CSV or JSON lines (by `out`'s suffix), written atomically."""
    records = prediction.records()
    if Path(out).suffix.lower() == ".jsonl":
        text = "".join(json.dumps(record) + "\n" for record in records)
    else:
        text = _csv(records)
    runs.write_file(Path(out), text)


def _csv(records: list[dict[str, Any]]) -> str:
    """One column per value: the best class and its probability, then the runners-up as
    class_2, probability_2, ...; a regression's values by target name."""
    flat = []
    for record in records:
        row = {key: value for key, value in record.items() if key not in ("top", "values")}
        for rank, entry in enumerate(record.get("top", [])[1:], 2):
            row[f"class_{rank}"], row[f"probability_{rank}"] = entry["class"], entry["probability"]
        row |= record.get("values", {})
        if "label" in record:  # last, after the answers
            label = row.pop("label")
            row["label"] = ";".join(map(str, label)) if isinstance(label, list) else label
        flat.append(row)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(flat[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(flat)
    return buffer.getvalue()
