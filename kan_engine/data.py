"""Data sets by name, held whole on the training device and batched there.

Why this shape: the data sets we train on are small (Fashion-MNIST is 47 MB as uint8), so keeping
them on the device as uint8 and making each batch by indexing is much faster than a DataLoader with
worker processes, and it is the same code on the CPU. Normalisation (per-channel mean/std of the
training split) and augmentation (shifts, flips, random erasing) run per batch on the device.

Determinism: the batch order and the augmentation of an epoch come from a CPU `torch.Generator`
seeded with (seed, epoch), so CPU and CUDA see the same order, and a run resumed mid-epoch replays
it exactly (`skip` drops the batches already done). The validation split is carved from the
training split with a fixed seed, so it is the same for every run.

Many processes (torchrun): `batch_size` is the global batch; `rank` and `world` pick this process's
contiguous part of each global batch (`_shard`), so the ranks' parts of a step, in rank order, are
exactly the batch one process would see. Every rank holds the whole (small) data set on its device
and indexes its share of each epoch's permutation, which keeps the order a pure function of
(seed, epoch) whatever the number of processes.

Where the files are found, and how they are read, is in `kan_engine.datasets` (the built-in sets)
and `kan_engine.user_csv` / `kan_engine.user_images` (the user's CSV or image folder). `read`
reads and checks a data set without a device, so the CLI can refuse bad data before a run folder
is made, and hand what it read to the trainer (`load(..., raw=...)`) instead of reading it twice.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from kan_engine import datasets, function_data, names, user_csv, user_images
from kan_engine.config import DataSection
from kan_engine.errors import ConfigError, DataError, DataNotFoundError
from kan_engine.task import CLASSIFICATION, Task
from kan_engine.untrusted import printable

__all__ = [
    "DATASETS",
    "DataBundle",
    "DataError",
    "DataNotFoundError",
    "Split",
    "Standardize",
    "load",
    "read",
]

Split = Literal["train", "val", "test"]

DATASETS = names.DATASETS  # name -> description: the catalogue, so a name is written once

_LOADERS: dict[str, Callable[[DataSection], datasets.Raw]] = {
    "fashion-mnist": lambda s: datasets.load_searched("fashion-mnist", s.data_dir),
    "mnist": lambda s: datasets.load_searched("mnist", s.data_dir),
    "cifar10": lambda s: datasets.load_searched("cifar10", s.data_dir),
    "digits": lambda s: datasets.load_digits(),
    "images": lambda s: user_images.load_images(s.data_dir),
    "csv": lambda s: user_csv.load_csv(s.data_dir, s.target, s.task),
    "function": function_data.load_function,
}
names.check_complete(DATASETS, set(_LOADERS), "kan_engine.data")

# Horizontal flips keep the label for clothes and photos, not for digits (a flipped 2 is no digit).
_FLIPS = frozenset({"fashion-mnist", "cifar10", "images"})
_MAX_SHIFT = 2  # pixels; 1 for images smaller than 16 px, where 2 px is a quarter of the picture
ERASE_AREA = (0.02, 0.33)  # share of the image a random-erasing rectangle covers (torchvision's)
ERASE_ASPECT = (0.3, 3.3)  # its height / width ratio, drawn log-uniformly (torchvision's)


def _stream_seed(seed: int, epoch: int, stream: int, repeat: int = 0) -> int:
    """A 64-bit seed mixing (seed, epoch, stream), so neighbouring epochs/seeds share nothing;
    stream 0 orders batches. `repeat` > 0 numbers the further passes of an epoch that repeats
    the data (`train.steps_per_epoch`); the first pass keeps the seed of a one-pass epoch."""
    entropy = [seed, epoch, stream] + ([repeat] if repeat else [])
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])


def _moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel (images) or per-feature (tables) mean and std, in float64 over chunks so uint8
    data is never copied whole to floats. Constant features get std 1 (they normalise to 0)."""
    dims = (0, 2, 3) if x.dim() == 4 else (0,)
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for chunk in x.split(4096):
        chunk = chunk.double()
        total += chunk.sum(dims)
        squares += chunk.square().sum(dims)
    count = x.numel() / x.shape[1]
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt()
    return mean, torch.where(std > 1e-8, std, torch.ones_like(std))


def _shard(lo: int, hi: int, rank: int, world: int) -> tuple[int, int]:
    """Rank `rank`'s part of positions [lo, hi) cut in `world` contiguous parts whose sizes differ
    by at most one (the first parts take the extra samples)."""
    size, extra = divmod(hi - lo, world)
    start = lo + rank * size + min(rank, extra)
    return start, start + size + int(rank < extra)


def _erase(x: Tensor, boxes: Tensor) -> Tensor:
    """Set each image's rectangle [top, bottom) x [left, right) to 0 (the mean, after
    normalisation), on every channel, as one masked fill. x: (B, C, H, W); boxes: (B, 4)."""
    rows = torch.arange(x.shape[2], device=x.device)  # (H,)
    cols = torch.arange(x.shape[3], device=x.device)  # (W,)
    top, bottom, left, right = boxes[:, :, None].unbind(1)  # each (B, 1)
    in_rows = (rows >= top) & (rows < bottom)  # (B, H)
    in_cols = (cols >= left) & (cols < right)  # (B, W)
    mask = in_rows[:, None, :, None] & in_cols[:, None, None, :]  # (B, 1, H, W)
    return x.masked_fill(mask, 0.0)


def _shift_flip(x: Tensor, dy: Tensor, dx: Tensor, flip: Tensor | None, pad: int) -> Tensor:
    """Per-sample translation by (dy - pad, dx - pad) with zero fill, and optional horizontal flip,
    as one gather (no Python loop over the batch). x: (B, C, H, W); dy, dx: (B,) in [0, 2*pad]."""
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))  # (B, C, H + 2p, W + 2p)
    rows = dy[:, None] + torch.arange(h, device=x.device)  # (B, H)
    cols = dx[:, None] + torch.arange(w, device=x.device)  # (B, W)
    if flip is not None:
        cols = torch.where(flip[:, None], cols.flip(1), cols)
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chans = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chans, rows[:, None, :, None], cols[:, None, None, :]]  # (B, C, H, W)


class Standardize:
    """x -> (x - mean) / std per channel (images, (N, C, H, W)) or per feature (tables, (N, F)),
    in `dtype` (1 / std taken in float64 first). One object for the training batches and for
    inference on new inputs (`kan_engine.predict`), so a prediction sees exactly the arithmetic
    training saw."""

    def __init__(
        self,
        mean: Tensor,
        std: Tensor,
        *,
        images: bool,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        view = (1, -1, 1, 1) if images else (1, -1)
        self.dtype = dtype
        self._mean = mean.double().view(view).to(device, dtype)
        self._inv_std = (1 / std.double()).view(view).to(device, dtype)

    def __call__(self, x: Tensor) -> Tensor:
        return (x.to(self.dtype) - self._mean) * self._inv_std


class DataBundle:
    """Train/val/test splits on one device, with their normalisation; see the module docstring."""

    def __init__(
        self,
        *,
        name: str,
        splits: dict[str, tuple[Tensor, Tensor]],
        class_names: list[str],
        mean: Tensor,
        std: Tensor,
        seed: int,
        source: str,
        warnings: list[str] | None = None,
        task: Task = CLASSIFICATION,
        target_mean: Tensor | None = None,
        total_squares: dict[str, list[float]] | None = None,
        feature_names: list[str] | None = None,
        label_column: str | None = None,
    ) -> None:
        """Regression: `splits` hold standardised targets (N, T); `task.target_std` and
        `target_mean` (T,) undo it; `total_squares` per split, in target units, serve R²."""
        self.name = name
        self.warnings = warnings or []  # what reading skipped; the trainer shows them
        self.class_names = class_names  # regression: the target names
        self.num_classes = len(class_names)  # outputs of the model
        self.task = task
        self.target_mean = target_mean
        self.total_squares = total_squares or {}
        self.source = source
        self.seed = seed
        self._splits = splits
        x_train = splits["train"][0]
        self.input_shape: tuple[int, ...] = tuple(x_train.shape[1:])
        self.device = x_train.device
        self.sizes = {split: len(y) for split, (_, y) in splits.items()}
        # the training split's statistics as computed, and a table's columns: what a checkpoint
        # keeps so that a run predicts on new inputs without its data (`inference_meta`)
        self.mean, self.std = mean, std
        self.feature_names, self.label_column = feature_names, label_column
        self.cast(torch.float32)
        self._flips = name in _FLIPS

    def _split(self, split: str) -> tuple[Tensor, Tensor]:
        if split not in self._splits:
            raise ValueError(f"unknown split {split!r} (one of: {', '.join(self._splits)})")
        return self._splits[split]

    def cast(self, dtype: torch.dtype) -> None:
        """The floating dtype of the batches: the model's (float64 for exact function fits)."""
        self.dtype = dtype
        images = len(self.input_shape) == 3
        self._standardize = Standardize(
            self.mean, self.std, images=images, device=self.device, dtype=dtype
        )

    def stored(self, split: Split) -> tuple[Tensor, Tensor]:
        """(x as stored, y) of a whole split: the data's own units, for tools that score
        something other than the model on it (a symbolic formula)."""
        return self._split(split)

    def normalize(self, x: Tensor) -> Tensor:
        """Stored values (uint8 pixels or float features) -> `dtype`, zero mean and unit std."""
        return self._standardize(x)

    def steps(self, split: Split, batch_size: int, *, world: int = 1) -> int:
        """Batches per epoch: the last partial batch is kept, except a train batch that would give
        one of the `world` processes a single sample (BatchNorm cannot train on it)."""
        n = len(self._split(split)[1])
        full, rest = divmod(n, batch_size)
        keep_rest = rest >= 2 * world if split == "train" else rest > 0
        return full + int(keep_rest)

    def batches(
        self,
        split: Split,
        batch_size: int,
        *,
        shuffle: bool,
        epoch: int = 0,
        skip: int = 0,
        steps: int = 0,
        augment: bool = False,
        erase_prob: float = 0.0,
        rank: int = 0,
        world: int = 1,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """One pass over `split`, or `steps` batches (> 0) from as many passes as they take, each
        pass in its own order: an epoch of a small data set that repeats it. The first `skip`
        batches are left out either way; the rest is `_pass`."""
        per_pass = self.steps(split, batch_size, world=world)
        rest = (augment, erase_prob, rank, world)
        if steps <= 0:
            yield from self._pass(split, batch_size, shuffle, (epoch, 0), skip, *rest)
            return
        for repeat in range(skip // per_pass, math.ceil(steps / per_pass)):
            first = repeat * per_pass
            when, skipped = (epoch, repeat), max(skip - first, 0)
            batches = self._pass(split, batch_size, shuffle, when, skipped, *rest)
            yield from itertools.islice(batches, steps - max(skip, first))

    def _pass(
        self,
        split: Split,
        batch_size: int,
        shuffle: bool,
        when: tuple[int, int],
        skip: int,
        augment: bool,
        erase_prob: float,
        rank: int,
        world: int,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """(x normalised float32, y int64 or standardised float32 targets) batches on the
        device; the order (and augmentation) is a pure function of (seed, epoch, repeat) in
        `when`; the first `skip` batches are left out. With `world` > 1,
        `batch_size` is the global batch and this yields rank `rank`'s part of each (a rank whose
        part of the last evaluation batch is empty gets no batch there). `augment` shifts (and,
        where labels survive it, flips) images; `erase_prob` is the chance that an image gets a
        random rectangle set to the mean (random erasing, Zhong et al. 2017)."""
        if not 0 <= rank < world:
            raise ValueError(f"rank must be in [0, {world}) (got {rank})")
        x, y = self._split(split)
        n = len(y)
        generator = torch.Generator().manual_seed(_stream_seed(self.seed, when[0], 0, when[1]))
        order = torch.randperm(n, generator=generator).to(self.device) if shuffle else None
        images = x.dim() == 4
        shifts = self._augmentation(n, generator) if augment and images else None
        erasing = self._erasing(n, erase_prob, when) if erase_prob > 0 and images else None
        for step in range(skip, self.steps(split, batch_size, world=world)):
            lo, hi = _shard(step * batch_size, min((step + 1) * batch_size, n), rank, world)
            if lo == hi:
                continue
            index = order[lo:hi] if order is not None else slice(lo, hi)
            xb, yb = x[index], y[index]
            if shifts is not None:
                dy, dx, flip, pad = shifts
                xb = _shift_flip(
                    xb, dy[lo:hi], dx[lo:hi], None if flip is None else flip[lo:hi], pad
                )
            xb = self.normalize(xb)
            if yb.is_floating_point():  # regression targets
                yb = yb.to(self.dtype)
            if erasing is not None:
                xb = _erase(xb, erasing[lo:hi])
            yield xb, yb

    def _augmentation(
        self, n: int, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, Tensor | None, int]:
        """Offsets and flips for a whole epoch, drawn on the CPU in one go (one copy per epoch),
        indexed by position in the epoch so that `skip` lands on the same values."""
        pad = _MAX_SHIFT if min(self.input_shape[1:]) >= 16 else 1
        dy, dx = torch.randint(0, 2 * pad + 1, (2, n), generator=generator).to(self.device)
        flip = None
        if self._flips:
            flip = (torch.rand(n, generator=generator) < 0.5).to(self.device)
        return dy, dx, flip, pad

    def _erasing(self, n: int, prob: float, when: tuple[int, int]) -> Tensor:
        """(n, 4) rectangles [top, bottom, left, right) for a whole epoch, empty where an image is
        not erased; their own stream, so turning erasing on leaves the order and shifts alone.
        Area a share in [ERASE_AREA) of the image, aspect ratio log-uniform in [ERASE_ASPECT)."""
        generator = torch.Generator().manual_seed(_stream_seed(self.seed, when[0], 1, when[1]))
        height, width = self.input_shape[1:]
        draws = torch.rand(5, n, generator=generator, dtype=torch.float64)
        low, high = ERASE_AREA
        area = (low + (high - low) * draws[0]) * height * width
        log_low, log_high = math.log(ERASE_ASPECT[0]), math.log(ERASE_ASPECT[1])
        aspect = torch.exp(log_low + (log_high - log_low) * draws[1])
        h = (area * aspect).sqrt().round().clamp(1, height)
        w = (area / aspect).sqrt().round().clamp(1, width)
        top = (draws[2] * (height - h + 1)).floor()
        left = (draws[3] * (width - w + 1)).floor()
        h = torch.where(draws[4] < prob, h, torch.zeros_like(h))  # not erased: an empty rectangle
        boxes = torch.stack([top, top + h, left, left + w], 1).long()  # (n, 4)
        return boxes.to(self.device)

    def describe(self) -> str:
        """One line for logs and the TUI header."""
        sizes = " / ".join(f"{self.sizes[s]:,} {s}" for s in ("train", "val", "test"))
        shape = "x".join(str(d) for d in self.input_shape)
        if len(self.input_shape) == 1:
            shape = f"{shape} feature{'s' * (self.input_shape[0] != 1)}"
        outputs = f"{self.num_classes} classes"
        if self.task.regression:
            targets = ", ".join(printable(name) for name in self.class_names)
            outputs = f"{self.num_classes} target{'s' * (self.num_classes != 1)} ({targets})"
        return f"{self.name}: {sizes}, {shape}, {outputs}, from {self.source}"


def read(section: DataSection) -> datasets.Raw:
    """Read and check the data set named in `section` (on the host, no device yet).

    Raises DataNotFoundError (missing files, with the places looked at), DataError (files that are
    there but wrong: corrupt, one class, a regression target...) or ConfigError (bad name, bad
    --target). Splits that would come out empty are refused here too.
    """
    if section.dataset not in _LOADERS:
        reason = names.unknown("dataset", repr(section.dataset), DATASETS)
        raise ConfigError("", "data.dataset", reason)
    try:
        raw = _LOADERS[section.dataset](section)
    except OSError as exc:  # a reader's own checks name the file; this is the net under them
        raise datasets.unreadable(
            exc.filename or section.data_dir or section.dataset, exc
        ) from None
    _check_task(raw, section)
    _check_sizes(raw, section.val_fraction)
    return raw


def _check_task(raw: datasets.Raw, section: DataSection) -> None:
    """`data.task` agrees with the data: a reader returns what its data is (the CSV reader
    takes the wish into account: its labels may be either), so a disagreement is an error."""
    wanted = section.task
    if wanted in ("auto", raw.task):
        return
    if wanted == "regression":
        reason = f"regression needs numeric targets; the {section.dataset} labels are classes"
        fix = "use data.task=auto or classification"
    else:
        reason = f"classification needs class labels; {section.dataset} has a continuous target"
        fix = "use data.task=auto or regression"
    raise ConfigError("", "data.task", f"{reason} ({fix})")


def _check_sizes(raw: datasets.Raw, val_fraction: float) -> None:
    """Every split gets a sample (an empty one would divide by zero at evaluation)."""
    _, held = datasets.held_out(raw, val_fraction, names.SPLIT_SEED)
    sizes = {"training": len(raw.y_train) - len(held), "validation": len(held)}
    sizes["test"] = len(raw.y_test)
    empty = [split for split, size in sizes.items() if size == 0]
    if empty:
        reason = (
            f"too few samples: the {empty[0]} split would be empty ({len(raw.y_train)} to split)"
        )
        fix = "add samples (every class needs a few, for each split)"
        raise DataError(printable(raw.source), reason, fix=fix)


def load(
    section: DataSection, *, device: torch.device, seed: int, raw: datasets.Raw | None = None
) -> DataBundle:
    """The data set named in `section` (`read`, unless `raw` is what it read already), with the
    validation split carved, on `device`. Raises what `read` raises.
    """
    if raw is None:
        raw = read(section)
    kept, held = datasets.held_out(raw, section.val_fraction, names.SPLIT_SEED)
    arrays = {
        "train": (raw.x_train[kept], raw.y_train[kept]),
        "val": (raw.x_train[held], raw.y_train[held]),
        "test": (raw.x_test, raw.y_test),
    }
    mean, std = _moments(torch.from_numpy(arrays["train"][0]))
    task, target_mean, squares = CLASSIFICATION, None, None
    if raw.task == "regression":
        arrays, task, target_mean, squares = _standardised(arrays, device)
    splits = {
        split: (torch.from_numpy(x).to(device), torch.from_numpy(y).to(device))
        for split, (x, y) in arrays.items()
    }
    return DataBundle(
        name=section.dataset,
        splits=splits,
        class_names=raw.class_names,
        mean=mean,
        std=std,
        seed=seed,
        source=raw.source,
        warnings=raw.warnings,
        task=task,
        target_mean=target_mean,
        total_squares=squares,
        feature_names=raw.feature_names,
        label_column=raw.label_column,
    )


def _standardised(
    arrays: dict[str, tuple[np.ndarray, np.ndarray]], device: torch.device
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], Task, Tensor, dict[str, list[float]]]:
    """Regression targets (N, T) standardised by the training split's mean and std per output
    (a constant output keeps std 1), the task that undoes it, and each split's total sum of
    squares about its own mean (R²), all in float64 before the cast."""
    train = arrays["train"][1].astype(np.float64)  # (N, T)
    mean, std = train.mean(0), train.std(0)  # (T,)
    std = np.where(std > 1e-12 * np.maximum(np.abs(mean), 1.0), std, 1.0)
    squares = {}
    scaled = {}
    for split, (x, y) in arrays.items():
        y64 = y.astype(np.float64)
        squares[split] = ((y64 - y64.mean(0)) ** 2).sum(0).tolist()
        scaled[split] = (x, ((y64 - mean) / std).astype(np.float32))
    target_std = torch.from_numpy(std).to(device, torch.float32)
    target_mean = torch.from_numpy(mean).to(device, torch.float32)
    return scaled, Task("regression", target_std), target_mean, squares
