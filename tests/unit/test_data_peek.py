"""The setup form's look at the user's data before a run: `peek_images` lists an images folder
without opening an image, `peek_csv` reads a table's header and label column; both refuse what
`load_images` / `load_csv` would, in the same words."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import write_function_csv
from PIL import Image

from kan_engine.errors import ConfigError, DataError, DataNotFoundError
from kan_engine.user_csv import load_csv, peek_csv
from kan_engine.user_images import load_images, peek_images


def image_folder(root: Path, classes: dict[str, int]) -> Path:
    for name, count in classes.items():
        (root / name).mkdir(parents=True)
        for k in range(count):
            Image.new("L", (6, 6), 20 * k).save(root / name / f"{k}.png")
    return root


def test_an_images_folder_is_listed_without_opening_an_image(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "pets", {"cat": 4, "dog": 5, "fish": 3})
    (root / "dog" / "cut-short.png").write_bytes(b"not a png")  # only decoding would tell
    peek = peek_images(str(root))
    assert (peek.classes, peek.images, peek.split) == (["cat", "dog", "fish"], 13, False)
    assert peek.root == str(root)
    assert "skipped 1 unreadable" in load_images(str(root)).warnings[0]  # the load decodes


def test_train_and_test_folders_are_counted_together(tmp_path: Path) -> None:
    image_folder(tmp_path / "d" / "train", {"a": 3, "b": 3})
    image_folder(tmp_path / "d" / "test", {"a": 1, "b": 2})
    peek = peek_images(str(tmp_path / "d"))
    assert (peek.classes, peek.images, peek.split) == (["a", "b"], 9, True)


def test_an_images_folder_is_refused_as_load_images_refuses_it(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match="does not exist"):
        peek_images(str(tmp_path / "nope"))
    (tmp_path / "t.csv").write_text("a,b\n")
    with pytest.raises(DataError, match=r"is a file, not a folder \(for a table, use --data"):
        peek_images(str(tmp_path / "t.csv"))
    one = image_folder(tmp_path / "one", {"cat": 4})
    with pytest.raises(DataError, match="holds one class folder"):
        peek_images(str(one))
    small = image_folder(tmp_path / "small", {"cat": 4, "dog": 1})
    with pytest.raises(DataError, match="class folder 'dog' has 1 readable image"):
        peek_images(str(small))
    with pytest.raises(ConfigError, match="needs --data-dir"):
        peek_images(None)


def test_a_table_is_peeked_from_its_header_and_label_column(tmp_path: Path) -> None:
    rows = [f"{k},{k % 3 * 1.5},{'ab'[k % 2]}" for k in range(12)]
    path = tmp_path / "t.csv"
    path.write_text("x1,x2,kind\n" + "\n".join(rows) + "\n")
    peek = peek_csv(str(path), None)
    assert (peek.columns, peek.target, peek.rows, peek.classes) == (
        ["x1", "x2", "kind"], "kind", 12, ["a", "b"]
    )  # fmt: skip
    regression = peek_csv(str(write_function_csv(tmp_path / "f.csv")), "y")
    assert (regression.target, regression.rows, regression.classes) == ("y", 300, None)
    # as load_csv would: a target that is not a column, a label column of one class
    with pytest.raises(ConfigError, match=r"no column 'knd' .*did you mean 'kind'"):
        peek_csv(str(path), "knd")
    same = tmp_path / "same.csv"
    same.write_text("a,b\n" + "".join(f"{k},x\n" for k in range(6)))
    with pytest.raises(DataError, match=r"the label column 'b' holds one value \('x'\)"):
        peek_csv(str(same), None)


def test_a_table_peek_leaves_the_feature_cells_to_the_load(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("a,label\n" + "".join(f"{'?' if k == 3 else k},{k % 2}\n" for k in range(8)))
    assert peek_csv(str(path), None).rows == 8
    with pytest.raises(DataError, match=r"line 5, column 'a': missing value"):
        load_csv(str(path), None)
