"""Where each data set comes from: finding it on disk, reading it, and saying where we looked.

Every reader returns a `Raw` (the train and official test splits as NumPy arrays, class names and
the place they came from); `kan_engine.data` turns that into splits and device batches. Images stay
uint8 (N, C, H, W) so that the whole set fits on the device; tables are float32 (N, F).

Fashion-MNIST and MNIST are searched, in order, in `--data-dir`, `$KAN_TUI_DATA`, the user cache
folder (`$KAN_TUI_CACHE` or platformdirs), the Debian package folders in `SYSTEM_DIRS`, and finally
downloaded by torchvision into the cache. We read the IDX files ourselves (gzipped or not), so
Debian's read-only files are used in place, with no copy.
"""

from __future__ import annotations

import csv
import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kan_engine.errors import ConfigError, DataNotFoundError

# Debian's `dataset-*` packages; tests point this at empty folders to exercise the not-found path.
SYSTEM_DIRS: dict[str, tuple[Path, ...]] = {
    "fashion-mnist": (Path("/usr/share/datasets/fashion-mnist"),),
}

FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip

# Seed of every split we carve ourselves (digits/images/csv test splits, validation splits): fixed,
# so that runs with different training seeds are compared on the same held-out samples.
SPLIT_SEED = 0
TEST_FRACTION = 0.2

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_TORCHVISION = {"fashion-mnist": "FashionMNIST", "mnist": "MNIST", "cifar10": "CIFAR10"}


@dataclass
class Raw:
    """A data set as read from disk, before validation split and normalisation."""

    x_train: np.ndarray  # (N, C, H, W) uint8 or (N, F) float32
    y_train: np.ndarray  # (N,) int64 in 0..K-1
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]
    source: str


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


def _split_test(x: np.ndarray, y: np.ndarray, names: list[str], source: str) -> Raw:
    """For data without an official test split: a fixed, seeded, stratified one."""
    train, test = stratified_split(y, TEST_FRACTION, SPLIT_SEED)
    return Raw(x[train], y[train], x[test], y[test], names, source)


def _search_roots(name: str, data_dir: str | None) -> list[Path]:
    """Folders that may hold `name`, in search order (the system folders come after these)."""
    roots = [Path(data_dir).expanduser(), Path(data_dir).expanduser() / name] if data_dir else []
    env = os.environ.get("KAN_TUI_DATA")
    if env:
        roots.append(Path(env).expanduser() / name)
    roots.append(cache_dir() / name)
    return roots


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped or not) as uint8: magic 00 00 08 ndim, big-endian dims, then bytes."""
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    data = bytearray(data)  # writable, so torch can share it without a copy
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise DataNotFoundError(f"{path}: not an IDX file of unsigned bytes")
    ndim = data[3]
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataNotFoundError(f"{path}: truncated ({body.size} bytes for shape {dims})")
    return body.reshape(dims)


def _idx_files(folder: Path) -> dict[str, Path] | None:
    """The four IDX files in `folder` (each plain or .gz), or None if any is missing."""
    found = {}
    for stem in (*_IDX_FILES["train"], *_IDX_FILES["test"]):
        candidates = [folder / stem, folder / f"{stem}.gz"]
        hit = next((p for p in candidates if p.is_file()), None)
        if hit is None:
            return None
        found[stem] = hit
    return found


def _download(name: str, root: Path) -> None:
    """torchvision's download into `root` (raises OSError/RuntimeError offline)."""
    import torchvision.datasets as tvd

    cls = getattr(tvd, _TORCHVISION[name])
    for train in (True, False):
        cls(str(root), train=train, download=True)


def _not_found(name: str, looked: list[str], download_error: BaseException) -> DataNotFoundError:
    how = [
        "put the files in a folder and pass --data-dir DIR (or set KAN_TUI_DATA=DIR)",
        f"or go online once so torchvision downloads them into {cache_dir() / name}",
    ]
    if name in SYSTEM_DIRS:
        how.insert(0, f"install Debian's package: sudo apt-get install dataset-{name}")
    places = "\n".join(f"  - {place}" for place in looked)
    # torchvision's message ends with the cause ("Tried <mirror>, got: <urlopen error ...>")
    lines = str(download_error).strip().splitlines()
    cause = lines[-1] if lines else ""
    return DataNotFoundError(
        f"data set {name!r} not found. Looked in:\n{places}\n"
        f"  - torchvision download: failed ({type(download_error).__name__}: {cause})\n"
        f"To get it: {'; '.join(how)}.\n"
        "`--dataset digits` works offline (it ships with scikit-learn)."
    )


def _from_idx(files: dict[str, Path], name: str) -> Raw:
    parts = []
    for split in ("train", "test"):
        images, labels = (_read_idx(files[stem]) for stem in _IDX_FILES[split])
        parts += [images[:, None], labels.astype(np.int64)]  # (N, 28, 28) -> (N, 1, 28, 28)
    names = FASHION_CLASSES if name == "fashion-mnist" else [str(d) for d in range(10)]
    return Raw(*parts, class_names=names, source=str(files[_IDX_FILES["train"][0]].parent))


def load_idx(name: str, data_dir: str | None) -> Raw:
    """Fashion-MNIST or MNIST from the first place that has all four IDX files."""
    folders: list[Path] = []
    for root in _search_roots(name, data_dir):
        folders += [root, root / _TORCHVISION[name] / "raw"]
    folders += SYSTEM_DIRS.get(name, ())
    for folder in folders:
        files = _idx_files(folder)
        if files is not None:
            return _from_idx(files, name)
    target = cache_dir() / name
    try:
        _download(name, target)
    except (OSError, RuntimeError) as exc:
        raise _not_found(name, [str(f) for f in folders], exc) from None
    files = _idx_files(target / _TORCHVISION[name] / "raw")
    if files is None:
        raise _not_found(
            name, [str(f) for f in folders], FileNotFoundError("download left no files")
        )
    return _from_idx(files, name)


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
        if (root / "cifar-10-batches-py").is_dir():
            return read(root, download=False)
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
    return _split_test(x, y, [str(d) for d in range(10)], "scikit-learn load_digits")


def _require_dir_path(data_dir: str | None, what: str) -> Path:
    if not data_dir:
        raise ConfigError("", "data.data_dir", f"the {what} data set needs --data-dir")
    path = Path(data_dir).expanduser()
    if not path.exists():
        raise DataNotFoundError(f"data.data_dir: {path} does not exist")
    return path


def _read_image_folder(
    root: Path, classes: list[str] | None = None
) -> tuple[list, np.ndarray, list[str]]:
    """PIL images, labels and class names of an ImageFolder tree; `classes` (the train folder's)
    must match, so that test labels mean the same classes."""
    from PIL import Image
    from torchvision.datasets import ImageFolder

    folder = ImageFolder(str(root))
    if classes is not None and folder.classes != classes:
        raise DataNotFoundError(
            f"{root}: classes {folder.classes} differ from the train folder's {classes}"
        )
    images = []
    for path, _ in folder.samples:
        with Image.open(path) as img:
            images.append(img.copy())
    return images, np.asarray(folder.targets, np.int64), folder.classes


def _to_array(images: list, gray: bool, size: tuple[int, int] | None) -> np.ndarray:
    """(N, C, H, W) uint8; `size` (W, H) resizes every image, None keeps them as they are."""
    arrays = []
    for img in images:
        img = img.convert("L" if gray else "RGB")
        if size is not None and img.size != size:
            img = img.resize(size)
        arr = np.asarray(img, np.uint8)
        arrays.append(arr[None] if gray else arr.transpose(2, 0, 1))  # (H, W[, C]) -> (C, H, W)
    return np.stack(arrays)


def load_images(data_dir: str | None) -> Raw:
    """A folder per class (or `train/` and `test/` folders of those). Grey if every image is grey,
    else RGB; kept at their size when all match, else resized to 32x32."""
    root = _require_dir_path(data_dir, "images")
    has_test = (root / "train").is_dir() and (root / "test").is_dir()
    train_imgs, y_train, classes = _read_image_folder(root / "train" if has_test else root)
    test_imgs, y_test = ([], np.zeros(0, np.int64))
    if has_test:
        test_imgs, y_test, _ = _read_image_folder(root / "test", classes)
    everything = train_imgs + test_imgs
    gray = all(img.mode in ("1", "L", "I", "I;16", "F") for img in everything)
    size = None if len({img.size for img in everything}) == 1 else (32, 32)
    x_train = _to_array(train_imgs, gray, size)
    if not has_test:
        return _split_test(x_train, y_train, classes, str(root))
    return Raw(x_train, y_train, _to_array(test_imgs, gray, size), y_test, classes, str(root))


def _label_order(values: list[str]) -> list[str]:
    """Distinct labels, numerically sorted when they are all numbers, else alphabetically."""
    distinct = set(values)
    try:
        return sorted(distinct, key=float)
    except ValueError:
        return sorted(distinct)


def load_csv(data_dir: str | None, target: str | None) -> Raw:
    """A table with a header row: numeric features, the label in `target` (default: last column)."""
    path = _require_dir_path(data_dir, "csv")
    if path.is_dir():
        raise ConfigError("", "data.data_dir", f"the csv data set needs a file, {path} is a folder")
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    if len(rows) < 2:
        raise DataNotFoundError(f"{path}: needs a header row and at least one data row")
    header, body = [h.strip() for h in rows[0]], [r for r in rows[1:] if r]
    column = target if target is not None else header[-1]
    if column not in header:
        known = ", ".join(header)
        raise ConfigError(str(path), "data.target", f"no column {column!r} (columns: {known})")
    label_at = header.index(column)
    features = [i for i in range(len(header)) if i != label_at]
    x = np.empty((len(body), len(features)), np.float32)
    for r, row in enumerate(body):
        if len(row) != len(header):
            reason = f"has {len(row)} fields, the header has {len(header)}"
            raise ConfigError(str(path), f"row {r + 2}", reason)
        for c, i in enumerate(features):
            try:
                x[r, c] = float(row[i])
            except ValueError:
                raise ConfigError(
                    str(path), f"column {header[i]!r}", f"row {r + 2}: not a number ({row[i]!r})"
                ) from None
    if not np.isfinite(x).all():
        raise ConfigError(str(path), "features", "contain NaN or infinite values")
    labels = [row[label_at].strip() for row in body]
    names = _label_order(labels)
    index = {name: k for k, name in enumerate(names)}
    y = np.asarray([index[v] for v in labels], np.int64)
    return _split_test(x, y, names, str(path))
