"""The user's own images (`--dataset images`): a folder per class, or `train/` and `test/`
folders of those, read into uint8 arrays.

Why so many checks: this is the data most likely to be wrong (a folder of Git LFS pointers, a
download cut short, class folders that differ between train/ and test/), and a mistake found here
costs nothing, while one found by training is a failed run folder with a library's traceback.
Everything is read and checked before a run folder is made; what is wrong raises `DataError`
naming the folder or the image, and a fix.

Skipped with a warning: an unreadable image among many (a download cut short), as long as it is at
most one in `SKIP_SHARE` of the images; more than that is refused (the folder is probably not what
you think). The user's CSV tables are read in `kan_engine.user_csv`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kan_engine.datasets import (
    CARVED_MINIMUM,
    OFFICIAL_MINIMUM,
    Raw,
    also_small,
    require_path,
    small_class,
    split_test,
    unreadable,
)
from kan_engine.errors import DataError
from kan_engine.untrusted import printable

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"}
)  # torchvision's ImageFolder list, matched case-insensitively
SKIP_SHARE = 0.1  # unreadable images are skipped if at most this share of them (or just one)
_GREY = frozenset({"1", "L", "I", "I;16", "I;16B", "I;16L", "F"})
_DEEP = frozenset({"I", "I;16", "I;16B", "I;16L"})  # 16-bit grey: scaled, not clipped to 255
_FOLDER_FIX = (
    "put each class's images in a folder named after the class (DIR/cat/1.png, DIR/dog/2.png)"
)


@dataclass
class _Listing:
    """The image files of one class-folder tree (the whole folder, or train/ or test/)."""

    folder: Path
    classes: list[str]
    files: list[Path]
    labels: list[int]


@dataclass(frozen=True)
class FolderPeek:
    """What an images folder holds, found by listing it (`peek_images`): no image opened."""

    root: str  # printable, as every name here
    classes: list[str]
    images: int  # image files, train/ and test/ together
    split: bool  # train/ and test/ folders; else a test split is carved from the images


def _image_folder(data_dir: str | None) -> Path:
    """`data.data_dir` of the images data set: given, there, and a folder."""
    root = require_path(data_dir, "images")
    if not root.is_dir():
        hint = " (for a table, use --dataset csv)" if root.suffix.lower() == ".csv" else ""
        raise DataError(printable(root), f"is a file, not a folder{hint}", fix=_FOLDER_FIX)
    return root


def peek_images(data_dir: str | None) -> FolderPeek:
    """The class folders and image files `load_images` would read, with its refusals of the
    folder's shape (no class folders, one class, a class with too few images, test/ unlike
    train/).
    A directory walk and no image opened, so it answers before a run starts, in the setup form;
    an unreadable image is only found by `load_images`, which decodes them all."""
    root, listings = _list_root(data_dir)
    names = [printable(name) for name in listings[0].classes]
    labels = np.asarray(listings[0].labels, np.int64)
    _check_image_classes(listings[0].folder, names, labels, len(listings) == 2, skipped=0)
    images = sum(len(listing.files) for listing in listings)
    return FolderPeek(printable(root), names, images, len(listings) == 2)


def load_images(data_dir: str | None) -> Raw:
    """A folder per class (or `train/` and `test/` folders of those). Grey if every image is grey,
    else RGB; kept at their size when all match, else resized to 32x32."""
    root, listings = _list_root(data_dir)
    has_test = len(listings) == 2
    files = [path for listing in listings for path in listing.files]
    pixels, bad = _read_pixels(files)
    _check_skipped(root, bad, len(files))
    arrays = [_stack(listing, pixels) for listing in listings]
    x_train, y_train = arrays[0]
    names = [printable(name) for name in listings[0].classes]
    _check_image_classes(listings[0].folder, names, y_train, has_test, len(bad))
    warnings = [_skipped_warning(root, bad, len(files))] if bad else []
    if not has_test:
        raw = split_test(x_train, y_train, names, str(root))
        raw.warnings = warnings
        return raw
    x_test, y_test = arrays[1]
    return Raw(x_train, y_train, x_test, y_test, names, str(root), warnings)


def _list_root(data_dir: str | None) -> tuple[Path, list[_Listing]]:
    """The folder and the listing of its class folders; of train/ and then test/ when it has
    both (test/'s classes checked against train/'s)."""
    root = _image_folder(data_dir)
    has_test = (root / "train").is_dir() and (root / "test").is_dir()
    listings = [_list_images(root / "train" if has_test else root)]
    if has_test:
        listings.append(_list_images(root / "test", listings[0].classes))
    return root, listings


def _read_pixels(files: list[Path]) -> tuple[dict[Path, np.ndarray], list[tuple[Path, str]]]:
    """Pixels of every readable image, and (path, reason) of the others. Grey if every image is,
    else RGB; one common size, else 32x32 (chosen from the headers, before any pixel is held)."""
    headers, bad = probe_images(files)
    grey = all(mode in _GREY for _, mode in headers.values())
    sizes = {size for size, _ in headers.values()}
    size = next(iter(sizes)) if len(sizes) == 1 else (32, 32)
    return decode_images(headers, grey, size, bad), bad


def _check_image_classes(
    folder: Path, names: list[str], y: np.ndarray, has_test: bool, skipped: int
) -> None:
    """Each class folder keeps enough readable images for every split (`small_class`)."""
    minimum = OFFICIAL_MINIMUM if has_test else CARVED_MINIMUM
    small = small_class(y, len(names), minimum)
    if small is None:
        return
    k, count, many = small
    after = f" after skipping {skipped} unreadable" if skipped else ""
    others = also_small(many, len(names), minimum)
    reason = f"class folder {names[k]!r} has {count} readable image(s){after}{others}"
    splits = "training and validation" if has_test else "training, validation and test"
    fix = f"every class needs {minimum} images or more (one each for {splits}): add images to it"
    raise DataError(printable(folder), reason, fix=fix)


def _list_images(folder: Path, classes: list[str] | None = None) -> _Listing:
    """The class folders of `folder` (hidden ones, such as .ipynb_checkpoints, left out) and
    their image files; `classes` (the train folder's) must match, so test labels mean the same."""
    found = _class_folders(folder)
    names = [name for name, _ in found]
    if not found:
        loose = sum(p.suffix.lower() in IMAGE_EXTENSIONS for p in _entries(folder))
        reason = f"holds {loose} images but no class folders" if loose else "holds no class folders"
        raise DataError(printable(folder), reason, fix=_FOLDER_FIX)
    if classes is not None and names != classes:
        missing, extra = sorted(set(classes) - set(names)), sorted(set(names) - set(classes))
        what = "; ".join(
            f"{label} {', '.join(printable(n) for n in group)}"
            for label, group in (("no folder for", missing), ("extra", extra))
            if group
        )
        reason = f"its class folders differ from train/'s ({what})"
        raise DataError(printable(folder), reason, fix="test/ needs the class folders of train/")
    if len(found) == 1:
        beside = " (a train/ folder needs a test/ folder beside it)" if names[0] == "train" else ""
        reason = f"holds one class folder ({printable(names[0])!r}){beside}"
        fix = "a classifier needs two classes or more: add a folder of images per class"
        raise DataError(printable(folder), reason, fix=fix)
    files: list[Path] = []
    labels: list[int] = []
    for k, (_, path) in enumerate(found):
        images = image_files(path)
        if not images:
            kinds = ", ".join(sorted(IMAGE_EXTENSIONS))
            fix = f"add images ({kinds}) or delete the folder"
            raise DataError(printable(path), "holds no images", fix=fix)
        files += images
        labels += [k] * len(images)
    return _Listing(folder, names, files, labels)


def _entries(folder: Path) -> list[Path]:
    """The folder's entries that are not hidden, by name; an unreadable folder is named."""
    try:
        names = sorted(os.listdir(folder))
    except OSError as exc:
        raise unreadable(folder, exc) from None
    return [folder / name for name in names if not name.startswith(".")]


def _class_folders(folder: Path) -> list[tuple[str, Path]]:
    return [(path.name, path) for path in _entries(folder) if path.is_dir()]


def image_files(folder: Path) -> list[Path]:
    """Image files under `folder`, in sub-folders too (as torchvision's ImageFolder), following
    links but never the same folder twice (a link loop would never end)."""
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()
    pending = [folder]
    while pending:
        current = pending.pop()
        stat = current.stat()
        if (stat.st_dev, stat.st_ino) in seen:
            continue
        seen.add((stat.st_dev, stat.st_ino))
        for path in _entries(current):
            if path.is_dir():
                pending.append(path)
            elif path.suffix.lower() in IMAGE_EXTENSIONS:
                found.append(path)
    return sorted(found)


def _why(exc: BaseException) -> str:
    """Why an image cannot be read, short (decoders raise anything from OSError to SyntaxError)."""
    from PIL import UnidentifiedImageError

    if isinstance(exc, UnidentifiedImageError):  # its text repeats the path
        return "not an image, or of a format Pillow cannot read"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 80 else f"{text[:77]}..."


Headers = dict[Path, tuple[tuple[int, int], str]]  # image -> ((width, height), Pillow mode)


def probe_images(files: list[Path]) -> tuple[Headers, list[tuple[Path, str]]]:
    """Each image's (size, mode) from its header, nothing decoded yet, so the common size is
    known before any pixels are held; and the (path, reason) of those that cannot be opened.
    Public with `decode_images` and `image_files`: `predict` reads new images the same way."""
    from PIL import Image

    headers: Headers = {}
    bad: list[tuple[Path, str]] = []
    for path in files:
        if not path.is_file():  # a FIFO would block, a device never end
            bad.append((path, "not a regular file"))
            continue
        try:
            with Image.open(path) as img:
                headers[path] = (img.size, img.mode)
        except Exception as exc:  # noqa: BLE001 - any decoder error makes it unreadable
            bad.append((path, _why(exc)))
    return headers, bad


def decode_images(
    headers: Headers,
    grey: bool,
    size: tuple[int, int],
    bad: list[tuple[Path, str]],
) -> dict[Path, np.ndarray]:
    """(C, H, W) uint8 pixels of each image, converted and resized to `size` (W, H); an image
    that fails now (a truncated file is only found when decoded) joins `bad`."""
    pixels: dict[Path, np.ndarray] = {}
    for path in headers:
        try:
            pixels[path] = _pixels(path, grey, size)
        except Exception as exc:  # noqa: BLE001 - any decoder error makes it unreadable
            bad.append((path, _why(exc)))
    return pixels


def _pixels(path: Path, grey: bool, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        if img.mode in _DEEP:  # Pillow clips 16-bit grey to 255: keep the top 8 bits instead
            deep = np.clip(np.asarray(img, np.int64), 0, 65535) >> 8
            img = Image.fromarray(deep.astype(np.uint8), "L")
        img = img.convert("L" if grey else "RGB")
        if img.size != size:
            img = img.resize(size)
        arr = np.asarray(img, np.uint8)
    return arr[None] if grey else arr.transpose(2, 0, 1)  # (H, W[, C]) -> (C, H, W)


def _check_skipped(root: Path, bad: list[tuple[Path, str]], total: int) -> None:
    """A few unreadable images are skipped; many mean the folder is not what it seems."""
    if len(bad) <= 1 or len(bad) <= SKIP_SHARE * total:
        return
    path, why = bad[0]
    reason = (
        f"cannot be read ({why}); {len(bad)} of the {total} images under {printable(root)} cannot"
    )
    fix = (
        f"replace or delete them (up to 1 in {round(1 / SKIP_SHARE)} is skipped with a warning); "
        "are they really images (Git LFS pointers, downloads cut short)?"
    )
    raise DataError(printable(path), reason, fix=fix)


def _skipped_warning(root: Path, bad: list[tuple[Path, str]], total: int) -> str:
    named = ", ".join(f"{printable(path)} ({why})" for path, why in bad[:3])
    more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
    them = "it" if len(bad) == 1 else "them"
    return (
        f"{printable(root)}: skipped {len(bad)} unreadable image(s) of {total}: {named}{more}; "
        f"delete or replace {them}"
    )


def _stack(listing: _Listing, pixels: dict[Path, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(N, C, H, W) uint8 and labels of the listing's readable images."""
    kept = [k for k, path in enumerate(listing.files) if path in pixels]
    if not kept:
        reason = "holds no readable image"
        raise DataError(
            printable(listing.folder), reason, fix="replace or delete the unreadable ones"
        )
    x = np.stack([pixels[listing.files[k]] for k in kept])
    return x, np.asarray([listing.labels[k] for k in kept], np.int64)
