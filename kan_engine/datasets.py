"""Where each data set comes from: finding it on disk, reading it, and saying where we looked.

Every reader returns a `Raw` (the train and official test splits as NumPy arrays, class names and
the place they came from); `kan_engine.data` turns that into splits and device batches. Images stay
uint8 (N, C, H, W) so that the whole set fits on the device; tables are float32 (N, F).

Fashion-MNIST and MNIST are searched, in order, in `--data-dir`, `$KAN_TUI_DATA`, the user cache
folder (`$KAN_TUI_CACHE` or platformdirs), the Debian package folders in `SYSTEM_DIRS`, and finally
downloaded by torchvision into the cache. We read the IDX files ourselves (gzipped or not), so
Debian's read-only files are used in place, with no copy.

Files that are there but wrong (not gzip, wrong magic or length, labels that do not match the
images, a CIFAR batch whose checksum fails) raise `DataError` naming the file, before any run folder
exists. The user's own CSV files and image folders are read in `kan_engine.user_csv` and
`kan_engine.user_images`.
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np

from kan_engine.errors import ConfigError, DataError, DataNotFoundError
from kan_engine.names import SPLIT_SEED, TEST_FRACTION  # the split the catalogue promises
from kan_engine.untrusted import printable

# Debian's `dataset-*` packages; tests point this at empty folders to exercise the not-found path.
SYSTEM_DIRS: dict[str, tuple[Path, ...]] = {
    "fashion-mnist": (Path("/usr/share/datasets/fashion-mnist"),),
}

FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_TORCHVISION = {"fashion-mnist": "FashionMNIST", "mnist": "MNIST", "cifar10": "CIFAR10"}


@dataclass
class Raw:
    """A data set as read from disk, before validation split and normalisation."""

    x_train: np.ndarray  # (N, C, H, W) uint8 or (N, F) float32
    y_train: np.ndarray  # classification: (N,) int64 in 0..K-1; regression: (N, T) float32
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]  # classification: the K class names; regression: the T target names
    source: str
    # things skipped while reading (an unreadable image among many); the trainer shows them
    warnings: list[str] = field(default_factory=list)
    task: Literal["classification", "regression"] = "classification"
    # a table's columns (the user's CSV): the names a new table must have to be predicted on
    feature_names: list[str] | None = None
    label_column: str | None = None


def cache_dir() -> Path:
    """The user cache folder (`$KAN_TUI_CACHE` overrides it, so tests never touch the real one)."""
    override = os.environ.get("KAN_TUI_CACHE")
    if override:
        return Path(override)
    import platformdirs

    return Path(platformdirs.user_cache_dir("kan-tui"))


def stratified_split(
    labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, held out), holding out `fraction` of each class (at least one of any class
    with two or more samples), so small data sets keep every class in both parts."""
    rng = np.random.default_rng(seed)
    held = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        count = max(1, round(len(members) * fraction)) if len(members) >= 2 else 0
        held.append(rng.permutation(members)[:count])
    held_idx = np.sort(np.concatenate(held))
    kept_idx = np.setdiff1d(np.arange(len(labels)), held_idx)
    return kept_idx, held_idx


# Samples each class needs: when we carve the test split, one each for training, validation and
# test (stratified_split holds out one of any class with two); beside an official test split, one
# each for training and validation. Fewer leaves a split without the class, or empty.
CARVED_MINIMUM = 3
OFFICIAL_MINIMUM = 2
_CHUNK = 1 << 24  # bytes read at a time from an IDX file


def unreadable(path: Path | str, exc: OSError) -> DataError:
    """An OSError while reading a data file (permission denied, an I/O error) as the one line."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    if isinstance(exc, PermissionError):
        fix = "make it readable (chmod u+r) or run as a user who may read it"
    else:
        fix = "check the file and the disk it is on"
    return DataError(printable(path), f"cannot be read ({reason})", fix=fix)


def small_class(y: np.ndarray, n_classes: int, minimum: int) -> tuple[int, int, int] | None:
    """(class, its count, how many classes are that small) of the first class with fewer than
    `minimum` samples, or None: a smaller class would be missing from a split, or leave it empty."""
    counts = np.bincount(y, minlength=n_classes)
    small = np.flatnonzero(counts < minimum)
    if not small.size:
        return None
    return int(small[0]), int(counts[small[0]]), int(small.size)


def also_small(many: int, total: int, minimum: int) -> str:
    """The tail of a `small_class` message when more than one class is that small, so the user
    learns at once that fixing the one named is not the end of it; empty otherwise."""
    return f" ({many} of {total} classes have fewer than {minimum})" if many > 1 else ""


def random_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, held out) of `n` samples, `fraction` of them held out (at least one when
    n >= 2): the split of a regression, whose targets have no classes to stratify by."""
    count = max(1, round(n * fraction)) if n >= 2 else 0
    held = np.sort(np.random.default_rng(seed).permutation(n)[:count])
    return np.setdiff1d(np.arange(n), held), held


def held_out(raw: Raw, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held out) indices of the training split: stratified by class, or at random."""
    if raw.task == "regression":
        return random_split(len(raw.y_train), fraction, seed)
    return stratified_split(raw.y_train, fraction, seed)


def split_test(
    x: np.ndarray,
    y: np.ndarray,
    names: list[str],
    source: str,
    task: Literal["classification", "regression"] = "classification",
) -> Raw:
    """For data without an official test split: a fixed, seeded one (stratified by class)."""
    whole = Raw(x, y, x[:0], y[:0], names, source, task=task)
    train, test = held_out(whole, TEST_FRACTION, SPLIT_SEED)
    return Raw(x[train], y[train], x[test], y[test], names, source, task=task)


def _search_roots(name: str, data_dir: str | None) -> list[Path]:
    """Folders that may hold `name`, in search order (the system folders come after these)."""
    roots = [Path(data_dir).expanduser(), Path(data_dir).expanduser() / name] if data_dir else []
    env = os.environ.get("KAN_TUI_DATA")
    if env:
        roots.append(Path(env).expanduser() / name)
    roots.append(cache_dir() / name)
    return roots


def _read_up_to(handle: BinaryIO, count: int) -> bytearray:
    """At most `count` bytes, in chunks: a header that declares a huge shape costs no more memory
    than the file really holds. A bytearray is writable, so torch shares it without a copy."""
    data = bytearray()
    while len(data) < count:
        chunk = handle.read(min(_CHUNK, count - len(data)))
        if not chunk:
            break
        data += chunk
    return data


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file (gzipped or not) of unsigned bytes with `ndim` dimensions (3: images, 1: labels):
    magic 00 00 08 ndim, big-endian dims, then exactly prod(dims) bytes; DataError otherwise."""
    gzipped = path.suffix == ".gz"
    try:
        with gzip.open(path, "rb") if gzipped else path.open("rb") as handle:
            return _parse_idx(path, handle, ndim)
    except gzip.BadGzipFile as exc:
        if str(exc).startswith("Not a gzipped file"):
            reason = "is not gzip data although its name ends in .gz"
            fix = "download it again (a plain IDX file must not be named .gz)"
        else:
            reason, fix = f"holds corrupt gzip data ({exc})", "download it again"
        raise DataError(printable(path), reason, fix=fix) from None
    except (EOFError, zlib.error) as exc:
        reason = f"holds truncated or corrupt gzip data ({exc})"
        raise DataError(printable(path), reason, fix="download it again") from None
    except OSError as exc:
        raise unreadable(path, exc) from None


def _parse_idx(path: Path, handle: BinaryIO, ndim: int) -> np.ndarray:
    source, fix = printable(path), "download it again"
    head = _read_up_to(handle, 4)
    if head[:2] == b"\x1f\x8b":
        reason = "is gzip-compressed but its name does not end in .gz"
        raise DataError(source, reason, fix=f"rename it to {path.name}.gz (or gunzip it)")
    if len(head) < 4 or head[:3] != b"\x00\x00\x08":
        reason = f"is not an IDX file of unsigned bytes (starts with {head.hex(' ') or 'nothing'})"
        raise DataError(source, reason, fix=fix)
    if head[3] != ndim:
        what = "image" if ndim == 3 else "label"
        reason = f"has {head[3]} dimensions, an IDX {what} file has {ndim}"
        raise DataError(source, reason, fix="check that no two files were swapped or renamed")
    header = _read_up_to(handle, 4 * ndim)
    if len(header) < 4 * ndim:
        raise DataError(source, "truncated in its header", fix=fix)
    dims = tuple(int(d) for d in np.frombuffer(header, ">u4"))
    expected = math.prod(dims)
    body = _read_up_to(handle, expected + 1)
    if len(body) < expected:
        reason = f"truncated ({len(body):,} bytes of data for shape {dims}: {expected:,} bytes)"
        raise DataError(source, reason, fix=fix)
    if len(body) > expected:
        reason = f"longer than its header says (more than the {expected:,} bytes of shape {dims})"
        raise DataError(source, reason, fix=fix)
    return np.frombuffer(body, np.uint8).reshape(dims)


def _idx_files(folder: Path) -> tuple[dict[str, Path] | None, str]:
    """The four IDX files in `folder` (each plain or .gz), or None and, when the folder holds some
    of them, a note of what is missing (the not-found message shows it)."""
    found, missing = {}, []
    for stem in (*_IDX_FILES["train"], *_IDX_FILES["test"]):
        candidates = [folder / stem, folder / f"{stem}.gz"]
        hit = next((p for p in candidates if p.is_file()), None)
        if hit is None:
            odd = [p.name for p in candidates if p.exists()]  # a folder or a device by that name
            missing.append(f"{stem}[.gz]" + (f" ({odd[0]} is not a regular file)" if odd else ""))
        else:
            found[stem] = hit
    if not missing:
        return found, ""
    return (
        None,
        f" (holds {len(found)} of the 4 files; missing {', '.join(missing)})" if found else "",
    )


def _download(name: str, root: Path) -> None:
    """torchvision's download into `root` (raises OSError/RuntimeError offline)."""
    import torchvision.datasets as tvd

    cls = getattr(tvd, _TORCHVISION[name])
    for train in (True, False):
        cls(str(root), train=train, download=True)


def _not_found(name: str, looked: list[str], download_error: BaseException) -> DataNotFoundError:
    """One line, like every error the CLI prints (a newline in it would be shown as `\\n`): the
    places looked in, why the download failed, and how to get the data."""
    how = [
        "put the files in a folder and pass --data-dir DIR (or set KAN_TUI_DATA=DIR)",
        f"or go online once so torchvision downloads them into {cache_dir() / name}",
    ]
    if name in SYSTEM_DIRS:
        how.insert(0, f"install Debian's package: sudo apt-get install dataset-{name}")
    places = ", ".join(printable(place) for place in looked)
    # torchvision's message ends with the cause ("Tried <mirror>, got: <urlopen error ...>")
    lines = str(download_error).strip().splitlines()
    cause = printable(lines[-1]) if lines else ""
    return DataNotFoundError(
        f"data set {name!r} not found; looked in: {places}; "
        f"torchvision download failed ({type(download_error).__name__}: {cause}). "
        f"To get it: {'; '.join(how)}. "
        "`--dataset digits` works offline (it ships with scikit-learn)."
    )


def _check_idx_pair(
    image_path: Path, images: np.ndarray, label_path: Path, labels: np.ndarray
) -> None:
    """One label in 0..9 per image: files from different downloads, or cut short, are refused."""
    if len(images) == 0 or images.shape[1] == 0 or images.shape[2] == 0:
        raise DataError(
            printable(image_path),
            f"holds no images (shape {images.shape})",
            fix="download it again",
        )
    if len(labels) != len(images):
        reason = f"has {len(labels):,} labels for the {len(images):,} images of {image_path.name}"
        fix = "both files must come from the same download: download them again"
        raise DataError(printable(label_path), reason, fix=fix)
    if labels.max() > 9:
        at = int(np.argmax(labels > 9))
        reason = f"label {int(labels[at])} (sample {at}) is not a class 0-9"
        raise DataError(printable(label_path), reason, fix="download it again")


def _from_idx(files: dict[str, Path], name: str) -> Raw:
    parts, paths = [], []
    for split in ("train", "test"):
        image_path, label_path = (files[stem] for stem in _IDX_FILES[split])
        images, labels = read_idx(image_path, 3), read_idx(label_path, 1)
        _check_idx_pair(image_path, images, label_path, labels)
        parts += [images[:, None], labels.astype(np.int64)]  # (N, 28, 28) -> (N, 1, 28, 28)
        paths.append((image_path, label_path))
    (train_images, train_labels), (test_images, _) = paths
    if parts[2].shape[2:] != parts[0].shape[2:]:
        reason = (
            f"images are {parts[2].shape[2:]}, those of {train_images.name} {parts[0].shape[2:]}"
        )
        fix = "the train and t10k files must come from the same data set"
        raise DataError(printable(test_images), reason, fix=fix)
    if len(np.unique(parts[1])) < 2:
        reason = f"every training label is {int(parts[1][0])}: nothing to tell apart"
        raise DataError(printable(train_labels), reason, fix="download it again")
    names = FASHION_CLASSES if name == "fashion-mnist" else [str(d) for d in range(10)]
    return Raw(*parts, class_names=names, source=str(files[_IDX_FILES["train"][0]].parent))


def load_searched(name: str, data_dir: str | None) -> Raw:
    """Fashion-MNIST, MNIST or CIFAR-10 from the first place that holds it (`--data-dir` first,
    then the others of `_search_roots`, the system folders, a download)."""
    raw = load_cifar10(data_dir) if name == "cifar10" else load_idx(name, data_dir)
    raw.warnings += _passed_over(name, data_dir, Path(raw.source))
    return raw


def _passed_over(name: str, data_dir: str | None, used: Path) -> list[str]:
    """A warning when `--data-dir` was given but the data came from elsewhere: a typo'd folder,
    or one without the files, must not go unnoticed behind the system's or the cache's copy."""
    if not data_dir:
        return []
    given = Path(data_dir).expanduser()
    if given == used or given in used.parents:
        return []
    if not given.exists():
        why = "does not exist"
    elif not given.is_dir():
        why = "is not a folder"
    else:
        why = f"holds no {name} files"
    return [f"data.data_dir: {printable(given)} {why}; using {name} from {printable(used)}"]


def load_idx(name: str, data_dir: str | None) -> Raw:
    """Fashion-MNIST or MNIST from the first place that has all four IDX files."""
    folders: list[Path] = []
    for root in _search_roots(name, data_dir):
        folders += [root, root / _TORCHVISION[name] / "raw"]
    folders += SYSTEM_DIRS.get(name, ())
    looked = []
    for folder in folders:
        files, note = _idx_files(folder)
        if files is not None:
            return _from_idx(files, name)
        looked.append(f"{folder}{note}")
    target = cache_dir() / name
    try:
        _download(name, target)
    except (OSError, RuntimeError) as exc:
        raise _not_found(name, looked, exc) from None
    files, _ = _idx_files(target / _TORCHVISION[name] / "raw")
    if files is None:
        raise _not_found(name, looked, FileNotFoundError("download left no files"))
    return _from_idx(files, name)


_CIFAR_FIX = (
    "copy the whole cifar-10-batches-py folder again, or delete it and run once online so that "
    "torchvision downloads it"
)


# what torchvision raises on a folder it refuses (checksums) or cannot unpickle
_CIFAR_READ_ERRORS = (RuntimeError, OSError, EOFError, ValueError, KeyError, pickle.PickleError)


def _cifar_problem(folder: Path) -> DataError | None:
    """The first missing or corrupt file of a `cifar-10-batches-py` folder (against torchvision's
    checksums), so that the error names it; only called once torchvision has refused the folder."""
    import torchvision.datasets as tvd
    from torchvision.datasets.utils import check_integrity

    meta = tvd.CIFAR10.meta
    expected = [*tvd.CIFAR10.train_list, *tvd.CIFAR10.test_list, [meta["filename"], meta["md5"]]]
    for filename, md5 in expected:
        path = folder / filename
        if not path.is_file():
            return DataError(printable(path), "is missing", fix=_CIFAR_FIX)
        try:
            intact = check_integrity(str(path), md5)
        except OSError as exc:
            return unreadable(path, exc)
        if not intact:
            return DataError(
                printable(path), "is corrupt (its checksum is not CIFAR-10's)", fix=_CIFAR_FIX
            )
    return None


def load_cifar10(data_dir: str | None) -> Raw:
    """CIFAR-10 through torchvision (python pickle batches under `cifar-10-batches-py/`)."""
    import torchvision.datasets as tvd

    def read(root: Path, download: bool) -> Raw:
        train = tvd.CIFAR10(str(root), train=True, download=download)
        test = tvd.CIFAR10(str(root), train=False, download=download)
        return Raw(
            np.ascontiguousarray(train.data.transpose(0, 3, 1, 2)),  # (N, H, W, C) -> (N, C, H, W)
            np.asarray(train.targets, np.int64),
            np.ascontiguousarray(test.data.transpose(0, 3, 1, 2)),
            np.asarray(test.targets, np.int64),
            list(train.classes),
            str(root / "cifar-10-batches-py"),
        )

    roots = _search_roots("cifar10", data_dir)
    for root in roots:
        folder = root / "cifar-10-batches-py"
        if folder.is_dir():
            try:
                return read(root, download=False)
            except _CIFAR_READ_ERRORS as exc:
                found = _cifar_problem(folder)
                reason = f"cannot be read ({type(exc).__name__}: {exc})"
                raise found or DataError(printable(folder), reason, fix=_CIFAR_FIX) from None
    try:
        return read(cache_dir() / "cifar10", download=True)
    except (OSError, RuntimeError) as exc:
        raise _not_found("cifar10", [str(r / "cifar-10-batches-py") for r in roots], exc) from None


def load_digits() -> Raw:
    """scikit-learn's 8x8 digits (values 0..16, kept as uint8), our fixed stratified test split."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = bunch.images.astype(np.uint8)[:, None]  # (1797, 8, 8) -> (1797, 1, 8, 8)
    y = bunch.target.astype(np.int64)
    return split_test(x, y, [str(d) for d in range(10)], "scikit-learn load_digits")


def require_path(data_dir: str | None, what: str) -> Path:
    """`--data-dir` of the user's own data: given, and there (a link to nothing is named as one)."""
    if not data_dir:
        raise ConfigError("", "data.data_dir", f"the {what} data set needs --data-dir")
    path = Path(data_dir).expanduser()
    try:
        exists = path.exists()
    except OSError as exc:  # EACCES on a folder above it
        raise unreadable(path, exc) from None
    if not exists and path.is_symlink():
        target = printable(os.readlink(path))
        raise DataNotFoundError(
            f"data.data_dir: {printable(path)} is a link to {target}, which does not exist"
        )
    if not exists:
        raise DataNotFoundError(f"data.data_dir: {printable(path)} does not exist")
    return path
