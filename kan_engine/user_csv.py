"""The user's own table (`--dataset csv`): a CSV file with a header row, numeric features and a
label column, read and checked cell by cell.

Why so many checks: this is the data most likely to be wrong (an Excel export, a regression
target), and a mistake found here costs nothing, while one found by training is a failed run
folder with a library's traceback. Everything is read and checked before a run folder is made;
what is wrong raises `DataError` naming the file, the line and column, and a fix.

Refused, never guessed: anything in a CSV (a missing or non-numeric value, a ragged row),
since dropping rows silently would change the data. The target decides the task (`data.task`
auto): a column of many distinct non-whole numbers is a regression target, anything else holds
classes; `data.task` may say which. The user's image folders
are read in `kan_engine.user_images`.
"""

from __future__ import annotations

import contextlib
import csv
import difflib
import math
import shlex
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from kan_engine.datasets import (
    CARVED_MINIMUM,
    Raw,
    also_small,
    require_path,
    small_class,
    split_test,
    unreadable,
)
from kan_engine.errors import ConfigError, DataError
from kan_engine.untrusted import printable, short_repr

MISSING = frozenset({"", "na", "n/a", "nan", "null", "none", "?", "-"})  # compared lower-cased
REGRESSION_DISTINCT = 20  # more distinct non-whole numbers than this in the label: a regression
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_SNIFF = 8192  # bytes looked at to tell a text file from a binary one
_BINARY = {
    b"PK\x03\x04": ("is a zip file (an Excel .xlsx workbook?)", "export it as CSV (CSV UTF-8)"),
    b"\x1f\x8b": ("is gzip-compressed", "gunzip it first"),
    b"\xff\xfe": ("is UTF-16 text", "save it as UTF-8 (CSV UTF-8)"),
    b"\xfe\xff": ("is UTF-16 text", "save it as UTF-8 (CSV UTF-8)"),
}


@dataclass
class _Table:
    """A CSV read and checked cell by cell."""

    header: list[str]
    label_at: int
    x: np.ndarray  # (N, F) float32; (N, 0) when the features were not read (`peek_csv`)
    labels: list[str]
    lines: list[int]  # the file line of each row


def load_csv(data_dir: str | None, target: str | None, task: str = "auto") -> Raw:
    """A table with a header row: numeric features, the label in `target` (default: last
    column); `task` is `data.task` (auto, classification or regression)."""
    path, table = _read_table(data_dir, target, features=True)
    source = printable(path)
    column = table.header[table.label_at]
    values = _target_values(source, table, task)
    if values is not None:
        raw = split_test(table.x, values, [column], str(path), "regression")
    else:
        names, y = _checked_classes(source, column, table.labels)
        raw = split_test(table.x, y, names, str(path))
    raw.feature_names = [name for k, name in enumerate(table.header) if k != table.label_at]
    raw.label_column = column
    return raw


@dataclass(frozen=True)
class TablePeek:
    """What a CSV holds for training (`peek_csv`); names are printable."""

    path: str
    columns: list[str]
    target: str
    rows: int
    classes: list[str] | None  # None: the target is a regression's


def peek_csv(data_dir: str | None, target: str | None, task: str = "auto") -> TablePeek:
    """The columns, the label column, the rows and the classes (or a regression) `load_csv`
    would train on, with its refusals of the header, the label column and the classes. The
    feature cells are not read as numbers (the run's load checks each), so a large table
    answers quickly, before a run starts, in the setup form."""
    path, table = _read_table(data_dir, target, features=False)
    source = printable(path)
    column = table.header[table.label_at]
    classes = None
    if _target_values(source, table, task) is None:
        classes, _ = _checked_classes(source, column, table.labels)
    columns = [printable(name) for name in table.header]
    return TablePeek(source, columns, printable(column), len(table.lines), classes)


@contextlib.contextmanager
def _opened_rows(path: Path) -> Iterator[Iterator[tuple[int, list[str]]]]:
    """The rows of a CSV file after its first bytes were sniffed (not a binary or compressed
    file); a read that fails, here or while the rows are consumed, is DataError naming it."""
    source = printable(path)
    try:
        with path.open("rb") as handle:
            _sniff(source, handle.read(_SNIFF))
            handle.seek(0)
            yield _rows(source, csv.reader(_lines(source, handle)))
    except OSError as exc:
        raise unreadable(path, exc) from None


def _read_table(data_dir: str | None, target: str | None, *, features: bool) -> tuple[Path, _Table]:
    """The CSV file and its table, its feature cells read only if `features` (else x is empty)."""
    path = _csv_path(data_dir)
    with _opened_rows(path) as rows:
        return path, _parse(printable(path), rows, target, features=features)


def _checked_classes(source: str, column: str, labels: list[str]) -> tuple[list[str], np.ndarray]:
    """`_classes`, refused below two classes or with a class too small for every split."""
    names, y = _classes(source, column, labels)
    _check_csv_classes(source, column, names, y)
    return names, y


@dataclass
class Rows:
    """A new table to predict on, in the column order the run trained on."""

    x: np.ndarray  # (N, F) float32
    labels: list[str] | None  # the label column's values, when the table has that column
    lines: list[int]  # each row's line number in the file


def read_rows(path: Path, features: list[str] | None, width: int, label: str | None) -> Rows:
    """Rows of a CSV with a header, matched to the training table's columns by name: the
    feature columns `features` (any order), and optionally the label column `label`. A column
    the run did not train on is refused (is it the table you meant?). Without `features` (a run
    from before they were kept), every column but `label` is a feature and there must be `width`.
    The same cell-by-cell checks as `load_csv`, with DataError naming line and column."""
    source = printable(path)
    with _opened_rows(path) as rows:
        header, header_line = _header(source, rows)
        _check_header(source, header, header_line, columns=1)
        order, label_at = _match_columns(source, header, header_line, features, width, label)
        x, labels, lines = _body(source, rows, header, order, label_at)
    return Rows(x, labels if label_at is not None else None, lines)


def _match_columns(
    source: str,
    header: list[str],
    line: int,
    features: list[str] | None,
    width: int,
    label: str | None,
) -> tuple[list[int], int | None]:
    """(the header positions of the training's features, in its order; the label's or None)."""
    where = f"line {line} (the header)"
    label_at = header.index(label) if label in header else None
    if features is None:
        order = [k for k in range(len(header)) if k != label_at]
        if len(order) != width:
            reason = f"has {len(order)} feature columns, the run trained on {width}"
            raise DataError(source, reason, where=where, fix="pass a table like the training one")
        return order, label_at
    trained = _some(features)
    missing = [name for name in features if name not in header]
    if missing:
        reason = f"no column {missing[0]!r}" + (
            f" (and {len(missing) - 1} more)" * (len(missing) > 1)
        )
        fix = f"the run trained on the columns {trained}"
        raise DataError(source, reason, where=where, fix=fix)
    extra = [name for name in header if name not in features and name != label]
    if extra:
        reason = f"column {extra[0]!r} is not one the run trained on"
        fix = f"delete it: the run trained on {trained}" + (f" (label {label})" if label else "")
        raise DataError(source, reason, where=where, fix=fix)
    return [header.index(name) for name in features], label_at


def _some(names: list[str], shown: int = 8) -> str:
    """The first `shown` names, and how many more (a table may have hundreds of columns)."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _target_values(source: str, table: _Table, task: str) -> np.ndarray | None:
    """The target as (N, 1) float32 numbers when the table is a regression (asked for, or a
    continuous column under `auto`), else None (classes). A regression's every target must be
    a finite number within float32's range; the first that is not is named by its line."""
    if task == "classification":
        return None
    column = table.header[table.label_at]
    numbers = [_finite_number(label) for label in table.labels]
    if task == "auto" and (any(n is None for n in numbers) or not _continuous(numbers)):
        return None
    for line, label, number in zip(table.lines, table.labels, numbers, strict=True):
        if number is None or abs(number) > _FLOAT32_MAX:
            where = f"line {line}, column {column!r}"
            reason = f"regression target is not a finite number ({short_repr(label)})"
            fix = "fix the value or delete the line (or use data.task=classification)"
            raise DataError(source, reason, where=where, fix=fix)
    return np.asarray(numbers, np.float32)[:, None]


def _continuous(numbers: list[float | None]) -> bool:
    """Many distinct non-whole numbers: a measurement, not a class label."""
    distinct = np.unique(np.asarray(numbers, np.float64))
    return bool((distinct != np.round(distinct)).any()) and len(distinct) > REGRESSION_DISTINCT


def _check_csv_classes(source: str, column: str, names: list[str], y: np.ndarray) -> None:
    """Two classes or more, each with CARVED_MINIMUM rows (see `datasets.small_class`)."""
    if len(names) < 2:
        rows = "its one row" if len(y) == 1 else f"all {len(y)} rows"
        reason = f"the label column {column!r} holds one value ({names[0]!r}) in {rows}"
        fix = (
            "a classifier needs two classes or more: check --target (the default is the last "
            "column), or add rows of another class"
        )
        raise DataError(source, reason, fix=fix)
    small = small_class(y, len(names), CARVED_MINIMUM)
    if small is None:
        return
    k, count, many = small
    others = also_small(many, len(names), CARVED_MINIMUM)
    reason = f"class {names[k]!r} of the label column {column!r} has {count} row(s){others}"
    fix = (
        f"every class needs {CARVED_MINIMUM} rows or more (one each for training, validation "
        "and test): add rows of it, or delete them" + _many_classes_hint(names, len(y), column)
    )
    raise DataError(source, reason, fix=fix)


def _csv_path(data_dir: str | None) -> Path:
    """The CSV file itself: not a folder, not a device or FIFO (reading those never ends)."""
    path = require_path(data_dir, "csv")
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.csv"))[:3]
        hint = f" (it holds {', '.join(inside)})" if inside else ""
        fix = (
            f": pass the file itself, e.g. --data-dir {printable(path / inside[0])}"
            if inside
            else ""
        )
        reason = f"the csv data set needs a file, {printable(path)} is a folder{hint}{fix}"
        raise ConfigError("", "data.data_dir", reason)
    if not path.is_file():
        raise DataError(
            printable(path),
            "is not a regular file (a device, FIFO or socket)",
            fix="pass a CSV file",
        )
    return path


def _sniff(source: str, head: bytes) -> None:
    """Refuse what is plainly not a CSV text file before parsing it line by line."""
    if not head:
        raise DataError(source, "is empty", fix="a CSV needs a header line and data lines")
    for magic, (reason, fix) in _BINARY.items():
        if head.startswith(magic):
            raise DataError(source, reason, fix=fix)
    if b"\x00" in head:
        raise DataError(source, "is not a text file (it holds NUL bytes)", fix="pass a CSV file")


def _lines(source: str, handle: BinaryIO) -> Iterator[str]:
    """The file's lines as text, decoded one by one so that bad UTF-8 is named by its line (no
    UTF-8 byte of a multi-byte character is a newline). A leading BOM (Excel's) is dropped."""
    for number, raw in enumerate(handle, 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            reason = f"is not UTF-8 text (byte 0x{raw[exc.start]:02x} at character {exc.start + 1})"
            fix = "save it as UTF-8 (e.g. iconv -f cp1252 -t utf-8 IN.csv > OUT.csv)"
            raise DataError(source, reason, where=f"line {number}", fix=fix) from None
        yield line.removeprefix("\ufeff") if number == 1 else line


def _rows(source: str, reader: Iterable[list[str]]) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of the rows that are not blank; csv's own errors named by line."""
    rows = iter(reader)
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except csv.Error as exc:
            line = getattr(reader, "line_num", 0)
            fix = "check the quotes on that line"
            reason = f"is not valid CSV ({exc})"
            raise DataError(source, reason, where=f"line {line}", fix=fix) from None
        if any(field.strip() for field in row):
            yield getattr(reader, "line_num", 0), row


def _parse(
    source: str, rows: Iterator[tuple[int, list[str]]], target: str | None, *, features: bool
) -> _Table:
    header, header_line = _header(source, rows)
    _check_header(source, header, header_line)
    label_at = _label_column(source, header, target)
    columns = [i for i in range(len(header)) if i != label_at] if features else []
    x, labels, lines = _body(source, rows, header, columns, label_at)
    return _Table(header, label_at, x, labels, lines)


def _header(source: str, rows: Iterator[tuple[int, list[str]]]) -> tuple[list[str], int]:
    """The first row's names (stripped) and its line number."""
    first = next(rows, None)
    if first is None:
        raise DataError(source, "holds only blank lines", fix="a CSV needs a header and data lines")
    header_line, fields = first
    return [name.strip() for name in fields], header_line


def _body(
    source: str,
    rows: Iterator[tuple[int, list[str]]],
    header: list[str],
    features: list[int],
    label_at: int | None,
) -> tuple[np.ndarray, list[str], list[int]]:
    """(x (N, F) float32 of the `features` columns in that order, the labels (none without
    `label_at`), each row's line number), checked cell by cell."""
    values: array[float] = array("f")
    labels: list[str] = []
    lines: list[int] = []
    for line, row in rows:
        if len(row) != len(header):
            reason = f"has {len(row)} fields, the header has {len(header)}"
            fix = "every line needs one value per header column (quote values holding commas)"
            raise DataError(source, reason, where=f"line {line}", fix=fix)
        values.extend(_numbers(source, row, features, header, line))
        if label_at is not None:
            labels.append(_label(source, row[label_at], header[label_at], line))
        lines.append(line)
    if not lines:
        raise DataError(source, "has a header but no data lines", fix="add rows below the header")
    x = np.frombuffer(values, np.float32).reshape(len(lines), len(features))
    _check_finite(source, x, header, features, lines)
    return x, labels, lines


def _check_header(source: str, header: list[str], line: int, columns: int = 2) -> None:
    """Distinct, non-empty names, at least `columns` of them (a feature and a label, for
    training), and not a data line."""
    where = f"line {line} (the header)"
    if len(header) < columns:
        other = next((sep for sep in (";", "\t", "|") if sep in header[0]), None)
        reason = f"has one column ({short_repr(header[0])})"
        fix = "a CSV needs feature columns and a label column, separated by commas"
        if other is not None:
            fix = f"save it comma-separated (this one seems to use {other!r})"
        raise DataError(source, reason, where=where, fix=fix)
    if all(_finite_number(name) is not None for name in header):
        reason = "holds only numbers, so it looks like data"
        raise DataError(source, reason, where=where, fix="add a first line naming the columns")
    for k, name in enumerate(header):
        if not name:
            reason = f"column {k + 1} has no name"
            raise DataError(source, reason, where=where, fix="name it, or delete the column")
        if name in header[:k]:
            reason = f"columns {header.index(name) + 1} and {k + 1} are both named {name!r}"
            raise DataError(source, reason, where=where, fix="give every column its own name")


def _label_column(source: str, header: list[str], target: str | None) -> int:
    column = target.strip() if target is not None else header[-1]
    if column not in header:
        same_case = [name for name in header if name.lower() == column.lower()]
        close = same_case or difflib.get_close_matches(column, header, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        known = ", ".join(header)
        raise ConfigError(source, "data.target", f"no column {column!r} (columns: {known}){hint}")
    return header.index(column)


def _numbers(
    source: str, row: list[str], features: list[int], header: list[str], line: int
) -> list[float]:
    """The row's features; the first that is not a number is named by line and column."""
    try:
        return [float(row[i]) for i in features]
    except ValueError:
        pass
    for i in features:
        try:
            float(row[i])
        except ValueError:
            where = f"line {line}, column {header[i]!r}"
            if row[i].strip().lower() in MISSING:
                reason, fix = (
                    f"missing value ({short_repr(row[i])})",
                    "fill it in or delete the line",
                )
            else:
                reason = f"not a number ({short_repr(row[i])})"
                fix = (
                    "features must be numbers: encode the column as numbers, delete it, or "
                    f"make it the label with --target {shlex.quote(header[i])}"
                )
            raise DataError(source, reason, where=where, fix=fix) from None
    raise AssertionError("unreachable: float() failed on a row of numbers")


def _label(source: str, text: str, column: str, line: int) -> str:
    label = text.strip()
    if label.lower() in MISSING:
        where = f"line {line}, column {column!r}"
        reason = f"the label is missing ({short_repr(text)})"
        raise DataError(source, reason, where=where, fix="fill it in or delete the line")
    return label


def _check_finite(
    source: str, x: np.ndarray, header: list[str], features: list[int], lines: list[int]
) -> None:
    """NaN (a missing value written as NaN) or infinity, or a number beyond float32's range (it
    became infinity), named by its line and column."""
    bad = np.argwhere(~np.isfinite(x))
    if not bad.size:
        return
    row, col = (int(v) for v in bad[0])
    where = f"line {lines[row]}, column {header[features[col]]!r}"
    if np.isnan(x[row, col]):
        reason, fix = "missing value (NaN)", "fill it in or delete the line"
    else:
        reason = "infinite, or too large for 32-bit floats"
        fix = "replace it with a finite number or delete the line"
    raise DataError(source, reason, where=where, fix=fix)


def _finite_number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _classes(source: str, column: str, labels: list[str]) -> tuple[list[str], np.ndarray]:
    """Class names and per-row class indices. Numeric labels are classes by value ("1" and "1.0"
    are one class, sorted as numbers); many distinct non-whole numbers are refused here: only
    `data.task=classification` brings them (auto reads them as a regression)."""
    numbers = [_finite_number(label) for label in labels]
    if any(n is None for n in numbers):
        names = sorted(set(labels))
        index = {name: k for k, name in enumerate(names)}
        return names, np.asarray([index[label] for label in labels], np.int64)
    values = np.asarray(numbers, np.float64)
    distinct = np.unique(values)
    if (distinct != np.round(distinct)).any() and len(distinct) > REGRESSION_DISTINCT:
        examples = ", ".join(f"{v:g}" for v in distinct[:: max(1, len(distinct) // 3)][:3])
        reason = (
            f"the label column {column!r} holds {len(distinct)} distinct numbers (e.g. {examples}):"
            " a continuous (regression) target"
        )
        fix = (
            "train a regression (data.task=auto or regression), pick a column of class labels "
            "with --target, or bin the values into a few classes"
        )
        raise DataError(source, reason, fix=fix)
    names = [_number_name(v) for v in distinct]
    return names, np.searchsorted(distinct, values).astype(np.int64)


def _number_name(value: float) -> str:
    """A numeric class label's name: "1" for 1 and 1.0, "0.5" for 0.5."""
    return f"{value:g}" if value != round(value) else str(int(value))


def label_name(text: str) -> str:
    """A label written in a new table, as `load_csv` names its class when the training labels
    were numbers ("1.0" is class "1"); other text as it is."""
    number = _finite_number(text.strip())
    return text.strip() if number is None else _number_name(number)


def _many_classes_hint(names: list[str], rows: int, column: str) -> str:
    """A label column where most classes are tiny is likely not a label column at all."""
    if len(names) <= max(10, rows // CARVED_MINIMUM):
        return ""
    return f" (is {column!r} a label column? it has {len(names)} distinct values in {rows} rows)"
