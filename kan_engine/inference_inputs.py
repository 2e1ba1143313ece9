"""What `kan-tui predict` is given, read into the values a run stores: an image file, a folder or
a glob of images, a CSV of feature rows, an IDX file of images, or `test` (the run's own test
split, with its labels).

Why so strict: a prediction "for all but the unreadable ones" leaves the user to find which rows
are missing, so the first bad file refuses the whole input (DataError naming it, and why).
Images are read as training reads an image folder (`user_images`): grey or RGB as the run trained
on, and resized to the run's size when theirs differs (training itself resizes a folder of mixed
sizes), which a notice says. An IDX file is a raw array: a different size is refused. A CSV is
matched to the training table by its column names (`user_csv.read_rows`).
"""

from __future__ import annotations

import glob
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kan_engine import data as data_mod
from kan_engine import datasets, user_csv, user_images
from kan_engine.config import RunConfig
from kan_engine.errors import DataError
from kan_engine.inference_meta import InferenceMeta
from kan_engine.untrusted import printable

TEST = "test"  # INPUTS naming the run's own test split (a file called so: ./test)
_GLOB = frozenset("*?[")
_KINDS = "an image file, a folder or glob of images, a .csv of feature rows, an IDX file, or test"


@dataclass
class Inputs:
    """Rows to predict on, as the run stores its data (before normalisation)."""

    names: list[str]  # per row: its file, "line N" of a CSV, "test #i"
    x: np.ndarray  # uint8 (N, C, H, W) or float32 (N, F)
    # the known answers: class indices (N,) for a classification, values (N, T) for a regression
    targets: np.ndarray | None = None
    notices: list[str] = field(default_factory=list)


def read(spec: str, meta: InferenceMeta, config: RunConfig) -> Inputs:
    """The inputs `spec` names, checked against what the run trained on."""
    if spec == TEST:
        raw = data_mod.read(config.data)
        names = [f"test #{k}" for k in range(len(raw.y_test))]
        return Inputs(names, raw.x_test, raw.y_test)
    path = Path(spec).expanduser()
    if path.is_dir():
        files = user_images.image_files(path)
        if not files:
            kinds = ", ".join(sorted(user_images.IMAGE_EXTENSIONS))
            raise DataError(printable(path), f"holds no images ({kinds})")
        return _images(files, meta)
    if not path.exists() and _GLOB & set(spec):
        matched = [Path(p) for p in sorted(glob.glob(spec, recursive=True))]
        files = [p for p in matched if p.suffix.lower() in user_images.IMAGE_EXTENSIONS]
        if not files:
            what = f"{len(matched)} files but no images" if matched else "nothing"
            raise DataError(printable(spec), f"matches {what}", fix=f"INPUTS is {_KINDS}")
        return _images(files, meta)
    if not path.exists():
        reason = "is a broken symbolic link" if path.is_symlink() else "no such file or folder"
        raise DataError(printable(path), reason, fix=f"INPUTS is {_KINDS}")
    if not path.is_file():
        raise DataError(printable(path), "is not a regular file (a device, FIFO or socket)")
    suffix, name = path.suffix.lower(), path.name.lower()
    if suffix == ".csv":
        return _table(path, meta)
    if suffix in user_images.IMAGE_EXTENSIONS:
        return _images([path], meta)
    if "idx" in name or "ubyte" in name:
        return _idx(path, meta)
    raise DataError(printable(path), "is of no kind predict reads", fix=f"INPUTS is {_KINDS}")


def _images(files: list[Path], meta: InferenceMeta) -> Inputs:
    source = printable(files[0] if len(files) == 1 else files[0].parent)
    channels, height, width = _image_shape(source, meta, "an image")
    if channels not in (1, 3):
        raise DataError(source, f"the run trained on {channels}-channel arrays, not images")
    headers, bad = user_images.probe_images(files)
    pixels = user_images.decode_images(headers, channels == 1, (width, height), bad)
    if bad:
        path, why = bad[0]
        others = f" ({len(bad) - 1} more cannot either)" if len(bad) > 1 else ""
        reason, fix = f"cannot be read ({why}){others}", "replace it, or leave it out of INPUTS"
        raise DataError(printable(path), reason, fix=fix)
    resized = sum(size != (width, height) for size, _ in headers.values())
    notices = []
    if resized:
        notices.append(
            f"{resized} of {len(files)} images resized to {width}x{height}, the size the run "
            "trained on"
        )
    x = np.stack([pixels[path] for path in files])
    return Inputs([str(path) for path in files], x, notices=notices)


def _idx(path: Path, meta: InferenceMeta) -> Inputs:
    source = printable(path)
    shape = _image_shape(source, meta, "an IDX file of images")
    x = datasets.read_idx(path, 3)[:, None]  # (N, H, W) -> (N, 1, H, W)
    if not len(x):
        raise DataError(source, "holds no images")
    if x.shape[1:] != shape:
        found = "x".join(str(d) for d in x.shape[1:])
        trained = "x".join(str(d) for d in shape)
        reason = f"holds {found} images, the run trained on {trained}"
        raise DataError(source, reason, fix="an IDX file is not resized: pass images of that size")
    return Inputs([f"{path.name} #{k}" for k in range(len(x))], x)


def _image_shape(source: str, meta: InferenceMeta, what: str) -> tuple[int, int, int]:
    if not meta.images:
        features = meta.input_shape[0]
        reason = f"is {what}, the run trained on tables of {features} features"
        raise DataError(source, reason, fix="pass a CSV of feature rows")
    channels, height, width = meta.input_shape
    return channels, height, width


def _table(path: Path, meta: InferenceMeta) -> Inputs:
    source = printable(path)
    if meta.images:
        shape = "x".join(str(d) for d in meta.input_shape)
        reason = f"is a table, the run trained on {shape} images"
        raise DataError(source, reason, fix="pass image files, a folder of them, or an IDX file")
    rows = user_csv.read_rows(path, meta.feature_names, meta.input_shape[0], meta.label_column)
    names = [f"line {line}" for line in rows.lines]
    targets = None if rows.labels is None else _targets(source, rows, meta)
    return Inputs(names, rows.x, targets)


def _targets(source: str, rows: user_csv.Rows, meta: InferenceMeta) -> np.ndarray:
    """The label column's values as the run's targets: class indices, or numbers."""
    assert rows.labels is not None
    index = {name: k for k, name in enumerate(meta.class_names)}
    known = ", ".join(meta.class_names[:10]) + (" ..." * (len(meta.class_names) > 10))
    targets: list[float] = []
    for label, line in zip(rows.labels, rows.lines, strict=True):
        where = f"line {line}, column {meta.label_column!r}"
        if meta.task == "regression":
            try:
                targets.append(float(label))
            except ValueError:
                raise DataError(source, f"not a number ({label!r})", where=where) from None
            continue
        k = index.get(label, index.get(user_csv.label_name(label)))
        if k is None:
            reason = f"class {label!r} is not one the run trained on ({known})"
            raise DataError(source, reason, where=where, fix="delete the label column, or the line")
        targets.append(k)
    if meta.task == "regression":
        return np.asarray(targets, np.float64)[:, None]  # (N, 1): the one label column
    return np.asarray(targets, np.int64)
