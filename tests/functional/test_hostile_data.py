"""The user's bad data through the real `kan-tui` CLI (issue 15): refused before any run folder.

Every refusal is exit 2 with exactly one `error:` line naming the file (and line, column or image)
and what is wrong, no traceback, and nothing under `--out`. The one case that is not refused, an
unreadable image among many, trains with a warning naming it. The data is tiny and made here;
runs train the `kan` baseline for one epoch on the CPU.
"""

from __future__ import annotations

import gzip
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner, Result

from kan_engine import datasets, runs
from kan_tui.cli import app

TINY = ["--model", "kan", "--epochs", "1", "--warmup-epochs", "0", "--batch-size", "8",
        "--device", "cpu", "--seed", "1", "--patience", "0", "--out", "out"]  # fmt: skip


def cli(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def train(dataset: str, data_dir: Path | str, *extra: str) -> Result:
    return cli(
        "run", "--headless", "--dataset", dataset, "--data-dir", str(data_dir), *TINY, *extra
    )


MADE: list[Path] = []  # the run folders the current test made, even those removed again


@pytest.fixture(autouse=True)
def _record_run_folders(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bad data must be refused before any run folder is made, not made and removed."""
    MADE.clear()
    real = runs.create_run_dir

    def create_run_dir(*args: object, **kwargs: object) -> Path:
        MADE.append(real(*args, **kwargs))  # type: ignore[arg-type]
        return MADE[-1]

    monkeypatch.setattr(runs, "create_run_dir", create_run_dir)


def run_folders(isolated: Path) -> list[Path]:
    out = isolated / "out"
    return sorted(out.iterdir()) if out.is_dir() else []


def refused(result: Result, isolated: Path, *fragments: str) -> str:
    """Exit 2, one `error:` line holding every fragment, no traceback, no run folder made."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    assert run_folders(isolated) == [], "bad data left a run folder"
    assert MADE == [], f"a run folder was made (and removed): {MADE}"
    return errors[0]


# --- CSV files ----------------------------------------------------------------------------------


def rows(n: int, classes: int = 2) -> str:
    """`n` data lines of two features and a label cycling over `classes` classes."""
    return "".join(f"{i * 0.5},{(i * 7) % 5},{i % classes}\n" for i in range(n))


HEADER = "a,b,y\n"
REGRESSION = HEADER + "".join(f"{i},{i % 7},{i * 0.731 % 97:.3f}\n" for i in range(300))

CSV_CASES = {
    # name: (file contents, fragments of the error line after the file name)
    "empty": (b"", ["is empty"]),
    "header only": (HEADER.encode(), ["has a header but no data lines"]),
    "blank lines only": (b"\n\n  \n", ["holds only blank lines"]),
    "binary bytes": (bytes(range(256)) * 4, ["is not a text file"]),
    "xlsx": (b"PK\x03\x04" + bytes(60), ["is a zip file"]),
    "gzip": (gzip.compress(HEADER.encode()), ["is gzip-compressed"]),
    "utf-16": ((HEADER + rows(6)).encode("utf-16"), ["is UTF-16 text"]),
    "latin-1": ((HEADER + rows(2) + "1,2,caf\xe9\n").encode("latin-1"), ["line 4: is not UTF-8"]),
    "ragged row": (
        (HEADER + rows(2) + "1,2\n").encode(),
        ["line 4: has 2 fields, the header has 3"],
    ),
    "text feature": (
        (HEADER + rows(2) + "1,x,0\n").encode(),
        ["line 4, column 'b': not a number ('x')", "--target b"],
    ),
    "missing value": (
        (HEADER + "NA,1,0\n" + rows(6)).encode(),
        ["line 2, column 'a': missing value"],
    ),
    "empty value": ((HEADER + rows(6) + ",1,0\n").encode(), ["line 8, column 'a': missing value"]),
    "nan": ((HEADER + rows(3) + "1,nan,1\n").encode(), ["line 5, column 'b': missing value (NaN)"]),
    "inf": ((HEADER + rows(3) + "inf,1,1\n").encode(), ["line 5, column 'a': infinite"]),
    "beyond float32": (
        (HEADER + rows(3) + "1,1e39,1\n").encode(),
        ["line 5, column 'b': infinite"],
    ),
    "blank lines counted": ((HEADER + "\n\n1,x,0\n").encode(), ["line 4, column 'b'"]),
    "missing label": ((HEADER + rows(3) + "1,2,\n").encode(), ["line 5, column 'y': the label is"]),
    "duplicate names": (b"a,a,y\n" + rows(6).encode(), ["columns 1 and 2 are both named 'a'"]),
    "unnamed column": (b"a,,y\n" + rows(6).encode(), ["line 1 (the header): column 2 has no name"]),
    "no header": (rows(9).encode(), ["line 1 (the header): holds only numbers"]),
    "semicolons": (b"a;b;y\n1;2;0\n", ["has one column", "seems to use ';'"]),
    "huge field": ((HEADER + "1,2," + "9" * 200_000 + "\n").encode(), ["line 2: is not valid CSV"]),
    "one class": ((HEADER + rows(5, classes=1)).encode(), ["column 'y' holds one value ('0')"]),
    "one row": ((HEADER + rows(1)).encode(), ["holds one value ('0') in its one row"]),
    "two rows": ((HEADER + rows(2)).encode(), ["class '0' of the label column 'y' has 1 row(s)"]),
    "class of one": (
        (HEADER + rows(6) + "1,1,2\n").encode(),
        ["class '2' of the label column 'y' has 1 row(s)", "3 rows or more"],
    ),
    "id-like target": (
        (HEADER + "".join(f"{i},{i % 3},{i}\n" for i in range(40))).encode(),
        ["has 1 row(s) (40 of 40 classes", "is 'y' a label column?"],
    ),
}


@pytest.mark.parametrize("case", list(CSV_CASES))
def test_bad_csv_is_refused_with_file_and_place(isolated: Path, case: str) -> None:
    contents, fragments = CSV_CASES[case]
    path = isolated / "data.csv"
    path.write_bytes(contents)
    line = refused(train("csv", path), isolated, "data.csv: ", *fragments)
    assert "; " in line, f"no fix offered: {line}"


def test_a_continuous_target_is_a_regression_unless_told_otherwise(isolated: Path) -> None:
    path = isolated / "data.csv"
    path.write_text(REGRESSION)
    fragments = ["the label column 'y' holds 300 distinct numbers", "data.task", "--target"]
    refused(
        train("csv", path, "--set", "data.task=classification"), isolated, "data.csv: ", *fragments
    )
    result = train("csv", path)
    assert result.exit_code == 0, result.output
    assert "1 target (y)" in result.output and "test_rmse" in result.output


def test_csv_target_that_does_not_exist(isolated: Path) -> None:
    path = isolated / "data.csv"
    path.write_text(HEADER + rows(9))
    refused(
        train("csv", path, "--target", "Y"),
        isolated,
        "data.csv: data.target: no column 'Y' (columns: a, b, y); did you mean 'y'?",
    )


def test_csv_excel_bom_and_numeric_labels_by_value(isolated: Path) -> None:
    """Not everything odd is wrong: Excel's BOM is dropped (else the first column would be named
    '\\ufeffy' and --target y would not find it), and "1" and "1.0" are one class (else "1.0",
    with 2 rows, would be a class too small to split)."""
    labels = ["1", "1", "1", "1.0", "1.0", "2", "2", "2", "2.0", "2.0"]
    body = "".join(f"{label},{i},{i % 4}\n" for i, label in enumerate(labels))
    path = isolated / "data.csv"
    path.write_bytes(("\ufeffy,a,b\n" + body).encode())
    result = train("csv", path, "--target", "y")
    assert result.exit_code == 0, result.output


def test_csv_path_of_the_wrong_kind(isolated: Path) -> None:
    folder = isolated / "tables"
    folder.mkdir()
    (folder / "iris.csv").write_text(HEADER + rows(9))
    refused(
        train("csv", folder),
        isolated,
        "is a folder (it holds iris.csv): pass the file itself",
        f"e.g. --data-dir {folder / 'iris.csv'}",
    )
    device = isolated / "device.csv"
    device.symlink_to("/dev/null")  # reading it would give an "empty" file; naming it is clearer
    refused(train("csv", device), isolated, "device.csv: is not a regular file")
    dangling = isolated / "gone.csv"
    dangling.symlink_to(isolated / "nowhere.csv")
    refused(train("csv", dangling), isolated, "gone.csv is a link to", "which does not exist")
    refused(train("csv", isolated / "absent.csv"), isolated, "absent.csv does not exist")


def test_unreadable_csv_names_the_file(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Permission denied, as the kernel says it (patched: the tests may run as root)."""
    path = isolated / "locked.csv"
    path.write_text(HEADER + rows(9))
    real_open = Path.open

    def open_(self: Path, *args: object, **kwargs: object) -> object:
        if self.name == "locked.csv":
            raise PermissionError(13, os.strerror(13), str(self))
        return real_open(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "open", open_)
    refused(train("csv", path), isolated, "locked.csv: cannot be read (Permission denied)", "chmod")


# --- image folders ------------------------------------------------------------------------------


def write_pngs(folder: Path, count: int, size: tuple[int, int] = (8, 8), mode: str = "L") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(count):
        Image.new(mode, size, 20 * k if mode == "L" else (20 * k, 0, 9)).save(folder / f"{k}.png")


def test_image_folders_that_cannot_be_trained_on(isolated: Path) -> None:
    root = isolated / "pics"
    root.mkdir()
    refused(train("images", root), isolated, "pics: holds no class folders", "DIR/cat/1.png")
    write_pngs(root, 4)
    refused(train("images", root), isolated, "pics: holds 4 images but no class folders")
    write_pngs(root / "ants", 5)
    (root / ".ipynb_checkpoints").mkdir()  # hidden: not a class
    refused(train("images", root), isolated, "pics: holds one class folder ('ants')")
    (root / "bees").mkdir()
    refused(train("images", root), isolated, f"{root / 'bees'}: holds no images")
    write_pngs(root / "bees", 2)
    refused(
        train("images", root),
        isolated,
        "pics: class folder 'bees' has 2 readable image(s)",
        "3 images or more",
    )
    refused(train("images", root / "ants" / "0.png"), isolated, "0.png: is a file, not a folder")
    table = isolated / "table.csv"
    table.write_text(HEADER)
    refused(train("images", table), isolated, "table.csv: is a file", "use --dataset csv")


def test_train_and_test_folders_must_have_the_same_classes(isolated: Path) -> None:
    root = isolated / "pics"
    for split, classes in (("train", ("ants", "bees")), ("test", ("ants", "wasps"))):
        for name in classes:
            write_pngs(root / split / name, 3)
    refused(
        train("images", root),
        isolated,
        f"{root / 'test'}: its class folders differ from train/'s",
        "(no folder for bees; extra wasps)",
    )


def test_many_unreadable_images_are_refused(isolated: Path) -> None:
    root = isolated / "pics"
    for name in ("ants", "bees"):
        write_pngs(root / name, 4)
        (root / name / "lfs.png").write_text("version https://git-lfs.github.com/spec/v1\n")
    refused(
        train("images", root),
        isolated,
        f"{root / 'ants' / 'lfs.png'}: cannot be read (not an image",
        "2 of the 10 images",
        "Git LFS",
    )


def test_one_unreadable_image_among_many_is_skipped_with_a_warning(isolated: Path) -> None:
    root = isolated / "pics"
    write_pngs(root / "ants", 12, (8, 8), "L")
    write_pngs(root / "bees", 12, (10, 6), "RGB")  # mixed sizes and modes: RGB, 32x32
    Image.new("L", (8, 8)).save(root / "bees" / "cut.png")
    cut = root / "bees" / "cut.png"
    cut.write_bytes(cut.read_bytes()[:20])  # a download cut short
    (root / "ants" / "odd.png").symlink_to("/dev/null")  # a link to a device: skipped too
    result = train("images", root)
    assert result.exit_code == 0, result.output
    warning = next(line for line in result.output.splitlines() if "skipped 2 unreadable" in line)
    assert "of 26" in warning and "odd.png (not a regular file)" in warning
    assert "cut.png" in warning
    (run_dir,) = run_folders(isolated)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished"
    notices = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("cut.png" in r.get("message", "") for r in notices if r["event"] == "notice")
    assert "(train 18, val 2, test 4)" in result.output  # the 24 readable images of 26


def test_names_that_are_not_utf8_are_shown_escaped(isolated: Path) -> None:
    """File names are bytes on Linux; printed raw, their surrogates would crash the printing."""
    root = isolated / "pics"
    write_pngs(root / os.fsdecode(b"caf\xe9"), 3)
    refused(train("images", root), isolated, "holds one class folder ('caf\\\\xe9')")
    write_pngs(root / "bees", 3)
    for name in (b"bad\xff.png", b"worse\xff.png"):
        (root / "bees" / os.fsdecode(name)).write_bytes(b"not a png")
    refused(train("images", root), isolated, f"{root / 'bees'}/bad\\xff.png: cannot be read")


# --- IDX files (Fashion-MNIST / MNIST) ----------------------------------------------------------

IDX_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")  # fmt: skip


def idx_payloads(n_train: int = 40, n_test: int = 10) -> dict[str, bytes]:
    """Plain IDX bytes of a tiny MNIST-format set (labels cycling 0..9)."""
    files = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        pixels = np.random.default_rng(n).integers(0, 255, n * 28 * 28, dtype=np.uint8).tobytes()
        files[f"{prefix}-images-idx3-ubyte"] = struct.pack(">4B3I", 0, 0, 8, 3, n, 28, 28) + pixels
        labels = bytes(i % 10 for i in range(n))
        files[f"{prefix}-labels-idx1-ubyte"] = struct.pack(">4BI", 0, 0, 8, 1, n) + labels
    return files


def write_idx_folder(folder: Path, payloads: dict[str, bytes], gz: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for stem, payload in payloads.items():
        name = f"{stem}.gz" if gz else stem
        (folder / name).write_bytes(gzip.compress(payload) if gz else payload)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No download and no system folders: only the files a test writes are found."""

    def no_network(name: str, root: Path) -> None:
        raise OSError("network is unreachable (test)")

    monkeypatch.setattr(datasets, "_download", no_network)
    monkeypatch.setattr(datasets, "SYSTEM_DIRS", {})


def test_good_idx_files_train(isolated: Path, offline: None) -> None:
    """The control for the cases below: the same files, unharmed, train."""
    write_idx_folder(isolated / "idx", idx_payloads())
    result = train("mnist", isolated / "idx", "--batch-size", "16")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("given", "why"),
    [
        ("typo", "does not exist"),
        ("notes.txt", "is not a folder"),
        ("empty", "holds no mnist files"),
    ],
)
def test_a_data_dir_passed_over_for_another_copy_is_warned_about(
    given: str, why: str, isolated: Path, offline: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--data-dir` comes first, then the other places: a typo'd or empty folder used to train
    on the system's copy without a word (the header names the copy; nothing said why)."""
    system = isolated / "system"
    write_idx_folder(system, idx_payloads())
    monkeypatch.setattr(datasets, "SYSTEM_DIRS", {"mnist": (system,)})
    (isolated / "notes.txt").write_text("hi")
    (isolated / "empty").mkdir()
    raw = datasets.load_searched("mnist", str(isolated / given))
    assert raw.source == str(system)
    assert raw.warnings == [f"data.data_dir: {isolated / given} {why}; using mnist from {system}"]
    assert datasets.load_searched("mnist", str(system)).warnings == []
    assert datasets.load_searched("mnist", None).warnings == []


def _truncate_gz(folder: Path) -> str:
    path = folder / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:200])
    return "train-images-idx3-ubyte.gz: holds truncated or corrupt gzip data"


def _not_gzip(folder: Path) -> str:
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(idx_payloads()["t10k-labels-idx1-ubyte"])
    return "t10k-labels-idx1-ubyte.gz: is not gzip data although its name ends in .gz"


def _wrong_magic(folder: Path) -> str:
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(b"\x00\x00\x0d\x01" + bytes(8))
    )
    return (
        "train-labels-idx1-ubyte.gz: is not an IDX file of unsigned bytes (starts with 00 00 0d 01)"
    )


def _too_long(folder: Path) -> str:
    payload = idx_payloads()["t10k-images-idx3-ubyte"] + b"extra"
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(payload))
    return "t10k-images-idx3-ubyte.gz: longer than its header says"


def _too_short(folder: Path) -> str:
    payload = idx_payloads()["t10k-images-idx3-ubyte"][:-100]
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(payload))
    return "t10k-images-idx3-ubyte.gz: truncated (7,740 bytes of data for shape (10, 28, 28)"


def _count_mismatch(folder: Path) -> str:
    labels = struct.pack(">4BI", 0, 0, 8, 1, 30) + bytes(i % 10 for i in range(30))
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))
    return "train-labels-idx1-ubyte.gz: has 30 labels for the 40 images"


def _label_out_of_range(folder: Path) -> str:
    labels = struct.pack(">4BI", 0, 0, 8, 1, 40) + bytes([3] * 39 + [12])
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))
    return "train-labels-idx1-ubyte.gz: label 12 (sample 39) is not a class 0-9"


def _swapped(folder: Path) -> str:
    labels = (folder / "train-labels-idx1-ubyte.gz").read_bytes()
    (folder / "train-images-idx3-ubyte.gz").write_bytes(labels)
    return "train-images-idx3-ubyte.gz: has 1 dimensions, an IDX image file has 3"


def _gzip_without_suffix(folder: Path) -> str:
    path = folder / "t10k-labels-idx1-ubyte.gz"
    path.rename(folder / "t10k-labels-idx1-ubyte")
    return "t10k-labels-idx1-ubyte: is gzip-compressed but its name does not end in .gz"


IDX_CASES = {
    f.__name__.strip("_"): f
    for f in (_truncate_gz, _not_gzip, _wrong_magic, _too_long, _too_short, _count_mismatch,
              _label_out_of_range, _swapped, _gzip_without_suffix)
}  # fmt: skip


@pytest.mark.parametrize("case", list(IDX_CASES))
def test_bad_idx_files_are_refused(isolated: Path, offline: None, case: str) -> None:
    folder = isolated / "idx"
    write_idx_folder(folder, idx_payloads())
    fragment = IDX_CASES[case](folder)
    refused(train("mnist", folder), isolated, f"{folder}/{fragment}", "; ")


def test_incomplete_idx_folder_says_what_is_missing(isolated: Path, offline: None) -> None:
    folder = isolated / "idx"
    write_idx_folder(folder, idx_payloads())
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    (folder / "t10k-labels-idx1-ubyte").mkdir()  # a folder where a file belongs
    result = train("mnist", folder)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: data set 'mnist' not found")
    assert f"{folder} (holds 3 of the 4 files; missing t10k-labels-idx1-ubyte[.gz]" in result.stderr
    assert "(t10k-labels-idx1-ubyte is not a regular file)" in result.stderr
    assert run_folders(isolated) == []


# --- CIFAR-10 -----------------------------------------------------------------------------------


def test_corrupt_or_incomplete_cifar_folder_names_the_file(isolated: Path) -> None:
    batches = isolated / "cifar" / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    refused(train("cifar10", isolated / "cifar"), isolated, f"{batches}/data_batch_1: is missing")
    (batches / "data_batch_1").write_bytes(b"not a pickle")
    refused(
        train("cifar10", isolated / "cifar"),
        isolated,
        f"{batches}/data_batch_1: is corrupt (its checksum is not CIFAR-10's)",
        "delete it and run once online",
    )


# --- the other commands that read data ----------------------------------------------------------


def test_lr_find_and_compare_refuse_bad_data_alike(isolated: Path) -> None:
    path = isolated / "data.csv"
    path.write_text(REGRESSION)
    told = ("--set", "data.task=classification")
    lr = cli("lr-find", "--dataset", "csv", "--data-dir", str(path), "--model", "kan",
             "--device", "cpu", "--steps", "5", *told)  # fmt: skip
    refused(lr, isolated, "data.csv: the label column 'y' holds 300 distinct numbers")
    compared = cli("compare", "--dataset", "csv", "--data-dir", str(path), "--models", "kan",
                   "--epochs", "1", "--device", "cpu", "--out", "out", *told)  # fmt: skip
    refused(compared, isolated, "data.csv: the label column 'y' holds 300 distinct numbers")


def test_eval_after_the_data_went_bad(isolated: Path) -> None:
    path = isolated / "data.csv"
    path.write_text(HEADER + rows(30, classes=3))
    assert train("csv", path).exit_code == 0
    (run_dir,) = run_folders(isolated)
    path.write_text(HEADER + rows(5) + "1,oops,1\n")
    result = cli("eval", str(run_dir))
    assert result.exit_code == 2, result.output
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("error: ")]
    assert "data.csv: line 7, column 'b': not a number ('oops')" in line
    assert "Traceback" not in result.output
