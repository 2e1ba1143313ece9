"""Data: the real Fashion-MNIST files, the search order, splits, batches, user data, errors."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kan_engine import data, datasets
from kan_engine.config import DataSection
from kan_engine.errors import ConfigError, DataError, DataNotFoundError

CPU = torch.device("cpu")
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never read the user's cache or $KAN_TUI_DATA; never download."""
    monkeypatch.setenv("KAN_TUI_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("KAN_TUI_DATA", raising=False)

    def offline(name: str, root: Path) -> None:
        raise OSError("network is unreachable (test)")

    monkeypatch.setattr(datasets, "_download", offline)


@pytest.fixture(scope="module")
def digits() -> data.DataBundle:
    return data.load(DataSection(dataset="digits"), device=CPU, seed=7)


def write_idx(folder: Path, n_train: int, n_test: int, *, gz: bool = True, value: int = 0) -> None:
    """A tiny fake MNIST-format set: images filled with `value`, labels cycling 0..9."""
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = struct.pack(">4B3I", 0, 0, 8, 3, n, 28, 28) + bytes([value]) * (n * 28 * 28)
        labels = struct.pack(">4BI", 0, 0, 8, 1, n) + bytes(i % 10 for i in range(n))
        for kind, payload in (("images-idx3", images), ("labels-idx1", labels)):
            name = f"{prefix}-{kind}-ubyte"
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(payload))
            else:
                (folder / name).write_bytes(payload)


# --- Fashion-MNIST -----------------------------------------------------------------------------


@pytest.mark.skipif(
    not all((DEBIAN_FASHION / f).is_file() for f in FASHION_FILES),
    reason="Debian's files are absent (apt-get install dataset-fashion-mnist)",
)
def test_fashion_mnist_from_the_real_debian_files() -> None:
    bundle = data.load(DataSection(), device=CPU, seed=0)
    assert bundle.source == str(DEBIAN_FASHION)
    assert bundle.sizes["train"] + bundle.sizes["val"] == 60_000
    assert bundle.sizes == {"train": 54_000, "val": 6_000, "test": 10_000}
    assert bundle.input_shape == (1, 28, 28)
    assert bundle.num_classes == 10 and bundle.class_names[0] == "T-shirt/top"
    x_test, y_test = bundle._split("test")
    assert x_test.dtype == torch.uint8
    assert torch.bincount(y_test).tolist() == [1000] * 10  # the official test split is balanced
    # Fashion-MNIST's well-known pixel mean is 0.2860 (72.9 / 255): the IDX parsing is right.
    assert 72.0 < bundle.mean.item() < 74.0
    assert "54,000 train / 6,000 val / 10,000 test, 1x28x28, 10 classes" in bundle.describe()


def test_search_order_data_dir_then_env_then_cache_then_system(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    system, env, cache = tmp_path / "system", tmp_path / "env", tmp_path / "cache"
    given = tmp_path / "given"
    monkeypatch.setitem(datasets.SYSTEM_DIRS, "fashion-mnist", (system,))
    monkeypatch.setenv("KAN_TUI_DATA", str(env))
    write_idx(system, 20, 10)
    write_idx(cache / "fashion-mnist" / "FashionMNIST" / "raw", 30, 10, gz=False)  # torchvision's
    write_idx(env / "fashion-mnist", 40, 10)
    write_idx(given, 50, 10, gz=False)

    def train_size(section: DataSection) -> int:
        bundle = data.load(section, device=CPU, seed=0)
        return bundle.sizes["train"] + bundle.sizes["val"]

    assert train_size(DataSection(data_dir=str(given))) == 50
    assert train_size(DataSection()) == 40
    monkeypatch.delenv("KAN_TUI_DATA")
    assert train_size(DataSection()) == 30
    monkeypatch.setenv("KAN_TUI_CACHE", str(tmp_path / "empty"))
    assert train_size(DataSection()) == 20


def test_missing_data_lists_every_place_and_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(datasets.SYSTEM_DIRS, "fashion-mnist", (tmp_path / "no-debian",))
    monkeypatch.setenv("KAN_TUI_DATA", str(tmp_path / "env"))
    with pytest.raises(DataNotFoundError) as caught:
        data.load(DataSection(data_dir=str(tmp_path / "mine")), device=CPU, seed=0)
    message = str(caught.value)
    for place in ("mine", "env/fashion-mnist", "cache/fashion-mnist", "no-debian"):
        assert str(tmp_path / place) in message
    assert "network is unreachable" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "--data-dir" in message and "KAN_TUI_DATA" in message
    assert "--dataset digits" in message


def test_corrupt_idx_file_names_the_file(tmp_path: Path) -> None:
    write_idx(tmp_path, 10, 10)
    bad = tmp_path / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x09" + bytes(3)))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz: truncated"):
        data.load(DataSection(data_dir=str(tmp_path)), device=CPU, seed=0)


def test_unknown_dataset_name() -> None:
    section = DataSection.model_construct(dataset="imagenet")
    with pytest.raises(ConfigError, match=r"data.dataset: unknown dataset 'imagenet' \(known: "):
        data.load(section, device=CPU, seed=0)
    known = {"fashion-mnist", "mnist", "cifar10", "digits", "images", "csv", "function"}
    assert set(data.DATASETS) == known


# --- splits and batches ------------------------------------------------------------------------


def test_digits_splits_are_fixed_and_stratified(digits: data.DataBundle) -> None:
    assert digits.input_shape == (1, 8, 8) and digits.num_classes == 10
    assert sum(digits.sizes.values()) == 1797
    assert digits.sizes["test"] == pytest.approx(1797 * 0.2, abs=10)
    assert digits.sizes["val"] == pytest.approx((1797 - digits.sizes["test"]) * 0.1, abs=10)
    other_seed = data.load(DataSection(dataset="digits"), device=CPU, seed=99)
    for split in ("train", "val", "test"):
        assert torch.equal(digits._split(split)[0], other_seed._split(split)[0])
    assert torch.bincount(digits._split("val")[1], minlength=10).min() >= 10
    larger = data.load(DataSection(dataset="digits", val_fraction=0.3), device=CPU, seed=7)
    assert larger.sizes["val"] == pytest.approx(digits.sizes["val"] * 3, abs=10)
    assert larger.sizes["test"] == digits.sizes["test"]


def labels_of(bundle: data.DataBundle, split: data.Split, **kwargs: object) -> list[int]:
    return [int(v) for _, y in bundle.batches(split, 64, **kwargs) for v in y]


def test_batch_order_is_a_function_of_seed_and_epoch(digits: data.DataBundle) -> None:
    again = data.load(DataSection(dataset="digits"), device=CPU, seed=7)
    other = data.load(DataSection(dataset="digits"), device=CPU, seed=8)
    first = labels_of(digits, "train", shuffle=True, epoch=3)
    assert first == labels_of(again, "train", shuffle=True, epoch=3)
    assert first != labels_of(digits, "train", shuffle=True, epoch=4)
    assert first != labels_of(other, "train", shuffle=True, epoch=3)
    unshuffled = labels_of(digits, "train", shuffle=False)
    assert unshuffled == digits._split("train")[1].tolist()
    assert sorted(first) == sorted(unshuffled)  # a permutation: every sample exactly once


def test_skip_resumes_mid_epoch_with_the_same_batches(digits: data.DataBundle) -> None:
    full = list(digits.batches("train", 100, shuffle=True, epoch=2, augment=True))
    resumed = list(digits.batches("train", 100, shuffle=True, epoch=2, skip=5, augment=True))
    assert len(resumed) == len(full) - 5
    for (x_full, y_full), (x_res, y_res) in zip(full[5:], resumed, strict=True):
        assert torch.equal(y_full, y_res) and torch.equal(x_full, x_res)


def test_partial_batches(digits: data.DataBundle) -> None:
    n_train, n_val = digits.sizes["train"], digits.sizes["val"]
    # a batch size leaving one training sample over: dropped (BatchNorm), kept for val
    size = n_train - 1
    assert digits.steps("train", size) == 1
    assert digits.steps("train", n_train - 2) == 2
    assert [len(y) for _, y in digits.batches("train", size, shuffle=True)] == [size]
    assert digits.steps("val", n_val - 1) == 2
    assert sum(len(y) for _, y in digits.batches("val", n_val - 1, shuffle=False)) == n_val
    with pytest.raises(ValueError, match="unknown split 'holdout'"):
        digits.steps("holdout", 10)  # type: ignore[arg-type]


def test_normalised_batches_have_zero_mean_unit_std(digits: data.DataBundle) -> None:
    x = torch.cat([xb for xb, _ in digits.batches("train", 256, shuffle=True)])
    assert x.dtype == torch.float32 and x.shape[1:] == (1, 8, 8)
    assert x.mean().item() == pytest.approx(0.0, abs=1e-4)
    assert x.std().item() == pytest.approx(1.0, abs=1e-3)


def test_shift_flip_moves_and_mirrors_pixels() -> None:
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.uint8).view(2, 3, 4, 4)
    centre = torch.full((2,), 2)
    assert torch.equal(data._shift_flip(x, centre, centre, None, pad=2), x)
    mirrored = data._shift_flip(x, centre, centre, torch.tensor([True, False]), pad=2)
    assert torch.equal(mirrored[0], x[0].flip(-1)) and torch.equal(mirrored[1], x[1])
    down = data._shift_flip(x, torch.tensor([0, 4]), centre, None, pad=2)
    assert torch.equal(down[0, :, 2:], x[0, :, :2]) and (down[0, :, :2] == 0).all()
    assert torch.equal(down[1, :, :2], x[1, :, 2:]) and (down[1, :, 2:] == 0).all()


def test_augmentation_flips_only_where_labels_survive_it(digits: data.DataBundle) -> None:
    assert digits._augmentation(50, torch.Generator().manual_seed(0))[2] is None
    plain = next(digits.batches("train", 64, shuffle=True))[0]
    shifted = next(digits.batches("train", 64, shuffle=True, augment=True))[0]
    assert shifted.shape == plain.shape and not torch.equal(shifted, plain)


# --- the user's own data -----------------------------------------------------------------------


def write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def table_rows(n: int) -> list[str]:
    rng = np.random.default_rng(0)
    return [
        f"{rng.normal(5, 3):.4f},{'cat' if i % 2 else 'dog'},{rng.normal(-2, 0.1):.4f},{i % 3}"
        for i in range(n)
    ]


def test_csv_target_by_name_and_by_default(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "t.csv", "a,kind,b,group", table_rows(60))
    named = data.load(
        DataSection(dataset="csv", data_dir=str(path), target="kind"), device=CPU, seed=0
    )
    # the label column is left out of the features; "group" (numbers) stays a feature
    assert named.input_shape == (3,) and named.class_names == ["cat", "dog"]
    assert sum(named.sizes.values()) == 60
    x = torch.cat([xb for xb, _ in named.batches("train", 16, shuffle=False)])
    assert torch.allclose(x.mean(0), torch.zeros(3), atol=1e-5)
    assert torch.allclose(x.std(0, unbiased=False), torch.ones(3), atol=1e-4)
    assert "3 features" in named.describe()

    path2 = write_csv(
        tmp_path / "u.csv", "a,b,label", [r for r in ["1,2,10", "3,4,2", "5,6,2"] * 5]
    )
    last = data.load(DataSection(dataset="csv", data_dir=str(path2)), device=CPU, seed=0)
    assert last.class_names == ["2", "10"]  # numeric labels sort as numbers


def test_csv_errors_name_the_column(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "t.csv", "a,kind,b,group", table_rows(10))
    with pytest.raises(ConfigError, match=r"t\.csv: data\.target: no column 'label' \(columns: a"):
        data.load(
            DataSection(dataset="csv", data_dir=str(path), target="label"), device=CPU, seed=0
        )
    with pytest.raises(DataError, match=r"t\.csv: line 2, column 'kind': not a number \('dog'\)"):
        data.load(DataSection(dataset="csv", data_dir=str(path)), device=CPU, seed=0)
    with pytest.raises(ConfigError, match="data.data_dir: the csv data set needs --data-dir"):
        data.load(DataSection(dataset="csv"), device=CPU, seed=0)


def write_png(path: Path, size: tuple[int, int], mode: str, shade: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, shade if mode == "L" else (shade, 0, 255 - shade)).save(path)


def test_image_folder_of_mixed_sizes_becomes_rgb_32(tmp_path: Path) -> None:
    for k in range(6):
        write_png(tmp_path / "ants" / f"{k}.png", (20 + k, 24), "RGB", 10 * k)
        write_png(tmp_path / "bees" / f"{k}.png", (40, 30), "L", 200)
    bundle = data.load(DataSection(dataset="images", data_dir=str(tmp_path)), device=CPU, seed=0)
    assert bundle.input_shape == (3, 32, 32) and bundle.class_names == ["ants", "bees"]
    assert sum(bundle.sizes.values()) == 12 and min(bundle.sizes.values()) >= 1
    x, y = next(bundle.batches("train", 4, shuffle=True, augment=True))
    assert x.shape[1:] == (3, 32, 32) and set(y.tolist()) <= {0, 1}


def test_image_folder_with_train_and_test_keeps_grey_size(tmp_path: Path) -> None:
    for split, count in (("train", 8), ("test", 3)):
        for cls in ("a", "b", "c"):
            for k in range(count):
                write_png(tmp_path / split / cls / f"{k}.png", (12, 10), "L", 30 * k)
    bundle = data.load(DataSection(dataset="images", data_dir=str(tmp_path)), device=CPU, seed=0)
    assert bundle.input_shape == (1, 10, 12)
    assert bundle.sizes["test"] == 9 and bundle.sizes["train"] + bundle.sizes["val"] == 24
    with pytest.raises(DataNotFoundError, match="does not exist"):
        data.load(
            DataSection(dataset="images", data_dir=str(tmp_path / "nope")), device=CPU, seed=0
        )


def test_sixteen_bit_grey_images_keep_their_contrast(tmp_path: Path) -> None:
    """Pillow clips 16-bit grey to 255 when converting; the top 8 bits are kept instead."""
    for cls in ("dark", "light"):
        for k in range(3):
            value = 10_000 if cls == "dark" else 60_000
            tmp_path.joinpath(cls).mkdir(exist_ok=True)
            Image.fromarray(np.full((4, 4), value, np.uint16)).save(tmp_path / cls / f"{k}.png")
    raw = data.read(DataSection(dataset="images", data_dir=str(tmp_path)))
    pixels = {int(v) for v in np.unique(np.concatenate([raw.x_train.ravel(), raw.x_test.ravel()]))}
    assert pixels == {10_000 >> 8, 60_000 >> 8}


def test_csv_numeric_labels_are_classes_by_value(tmp_path: Path) -> None:
    labels = ["1", "1.0", "01", "2", "2.00", "2", "1", "2"]
    path = write_csv(tmp_path / "t.csv", "a,y", [f"{i},{label}" for i, label in enumerate(labels)])
    raw = data.read(DataSection(dataset="csv", data_dir=str(path)))
    assert raw.class_names == ["1", "2"]
    assert sorted(np.concatenate([raw.y_train, raw.y_test]).tolist()) == [0] * 4 + [1] * 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batches_match_cpu(digits: data.DataBundle) -> None:
    cuda = data.load(DataSection(dataset="digits"), device=torch.device("cuda"), seed=7)
    for (xc, yc), (xg, yg) in zip(
        digits.batches("train", 128, shuffle=True, epoch=1, augment=True),
        cuda.batches("train", 128, shuffle=True, epoch=1, augment=True),
        strict=True,
    ):
        assert xg.is_cuda and torch.equal(yc, yg.cpu())
        assert torch.allclose(xc, xg.cpu(), atol=1e-6)
