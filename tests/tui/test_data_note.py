"""The setup form's data note: what the user's own images folder or CSV holds, checked as its
path is typed (in a worker, once the typing stops), in the loaders' own words."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from conftest import (
    SIZE,
    burst,
    fix_memory_estimate,
    sync,
    visible_text,
    wait_until,
    write_function_csv,
)
from PIL import Image
from textual.pilot import Pilot
from textual.widgets import Input

from kan_engine import user_images
from kan_engine.config import RunConfig, apply_overrides
from kan_tui.app import create_app
from kan_tui.widgets.data_note import DataNote


@pytest.fixture(autouse=True)
def _fixed_estimate(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KAN_TUI_CONFIG", str(tmp_path / "config"))
    fix_memory_estimate(monkeypatch)


def pets(root: Path) -> Path:
    for name, count in {"cat": 4, "dog": 5, "fish": 3}.items():
        (root / name).mkdir(parents=True)
        for k in range(count):
            Image.new("L", (6, 6), 20 * k).save(root / name / f"{k}.png")
    return root


def app_for(dataset: str):  # type: ignore[no-untyped-def]
    return create_app(config=apply_overrides(RunConfig(), {"data.dataset": dataset}, "test"))


async def type_path(pilot: Pilot, key: str, text: str) -> None:
    """Clear a field and type `text` into it in one burst, as a paste arrives."""
    field = pilot.app.screen.query_one(f"#field-{key.replace('.', '-')} Input", Input)
    field.focus()
    await burst(pilot, "ctrl+u", *text)


def shown(note: DataNote) -> str:
    """The note as on screen, its lines joined by single spaces."""
    return " ".join(visible_text(note).split())


async def note_says(pilot: Pilot, fragment: str, kind: str) -> DataNote:
    note = pilot.app.screen.query_one(DataNote)
    await wait_until(
        pilot, lambda: fragment in shown(note) and note.has_class(kind), f"{fragment!r}"
    )
    return note


@sync
async def test_an_images_folder_is_checked_as_it_is_typed(tmp_path: Path) -> None:
    folder = pets(tmp_path / "pets")
    (tmp_path / "table.csv").write_text("a,b\n1,2\n")
    app = app_for("images")
    async with app.run_test(size=SIZE) as pilot:
        note = await note_says(pilot, "the images data set needs --data-dir", "-problem")
        await type_path(pilot, "data.data_dir", str(tmp_path / "nope"))
        await note_says(pilot, "does not exist", "-problem")
        await type_path(pilot, "data.data_dir", str(tmp_path / "table.csv"))
        await note_says(pilot, "is a file, not a folder", "-problem")
        looks = note.looks
        await type_path(pilot, "data.data_dir", str(folder))
        await note_says(pilot, "3 classes: cat, dog, fish · 12 images", "-found")
        assert note.looks == looks + 1  # one look once the typing stopped, not one a key
        assert app.screen.query_one("#start").disabled is False  # a note, not a form error


@sync
async def test_a_csv_shows_its_rows_target_and_classes_or_a_regression(tmp_path: Path) -> None:
    table = tmp_path / "iris.csv"
    rows = "".join(f"{k},{k % 4},{('setosa', 'virginica')[k % 2]}\n" for k in range(20))
    table.write_text("length,width,species\n" + rows)
    function = write_function_csv(tmp_path / "f.csv")
    app = app_for("csv")
    async with app.run_test(size=SIZE) as pilot:
        await type_path(pilot, "data.data_dir", str(tmp_path))
        await note_says(pilot, "the csv data set needs a file", "-problem")
        await type_path(pilot, "data.data_dir", str(table))
        found = "20 rows · 2 features · target 'species': 2 classes: setosa, virginica"
        await note_says(pilot, found, "-found")
        await type_path(pilot, "data.target", "specie")  # the target is looked at too
        await note_says(pilot, "no column 'specie'", "-problem")
        await type_path(pilot, "data.target", "")
        await type_path(pilot, "data.data_dir", str(function))
        await note_says(pilot, "300 rows · 2 features · target 'y': a regression", "-found")


@sync
async def test_the_note_is_only_for_the_users_own_data() -> None:
    app = create_app()  # the lite preset: Fashion-MNIST
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert not app.screen.query_one(DataNote).display


@sync
async def test_a_slow_look_does_not_hold_up_the_form(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A big folder on a slow disk: the look runs in a thread while the form keeps typing."""
    release = threading.Event()
    peek = user_images.peek_images

    def slow_peek(data_dir: str | None) -> user_images.FolderPeek:
        assert release.wait(30), "the test never released the look"
        return peek(data_dir)

    monkeypatch.setattr(user_images, "peek_images", slow_peek)
    folder = pets(tmp_path / "pets")
    app = app_for("images")
    async with app.run_test(size=SIZE) as pilot:
        await type_path(pilot, "data.data_dir", str(folder))
        note = await note_says(pilot, "checking...", "-checking")
        await wait_until(pilot, lambda: note.looks >= 1, "the look to start")
        await type_path(pilot, "train.epochs", "7")  # answered while the look is stuck
        form_epochs = app.screen.query_one("#field-train-epochs Input", Input)
        assert form_epochs.value == "7" and shown(note) == "checking..."
        release.set()
        await note_says(pilot, "3 classes", "-found")
