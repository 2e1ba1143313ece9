"""What the user's own data holds, shown under its folder / file in the setup form as it is typed.

For the `images` and `csv` data sets, a mistake in `data.data_dir` (a path that is not there, a
folder where a table is wanted, one class folder, a target that is not a column) used to show
only once a run had started and failed. Here the engine's own readers look first:
`user_images.peek_images` lists the folder (class names and image count, no image opened) and
`user_csv.peek_csv` reads the header and the label column (rows, classes or a regression). Their
refusals are the load's, in its words, so what this says is what the run would.

A look reads the disk, which can take a while on a big folder or a slow mount: it runs in a
thread worker, once the text has not changed for `PEEK_DEBOUNCE_S`, and only the newest answer
is shown. Nothing here stops a run from starting: the form's errors are the schema's.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.timer import Timer
from textual.widgets import Static
from textual.worker import Worker, WorkerState

# imported with the form, not in the worker: a first look would wait on the import lock
# while the memory estimate's worker imports torch (these two need numpy only)
from kan_engine import user_csv, user_images
from kan_engine.errors import KanError
from kan_tui.formatting import PathText, printable

PEEKED = ("images", "csv")  # the data sets read from data.data_dir
PEEK_DEBOUNCE_S = 0.25
SHOWN_NAMES = 6  # class names listed; the rest counted


@dataclass(frozen=True)
class DataRequest:
    """The form's values a look depends on."""

    dataset: str
    data_dir: str | None
    target: str | None
    task: str


def look(request: DataRequest) -> str:
    """What the data holds, in one line (the worker thread's; raises the loaders' errors)."""
    if request.dataset == "images":
        folder = user_images.peek_images(request.data_dir)
        split = " in train/ + test/" if folder.split else ""  # else a test split is carved
        return f"{classes(folder.classes)} · {folder.images:,} images{split}"
    table = user_csv.peek_csv(request.data_dir, request.target, request.task)
    features = len(table.columns) - 1
    kind = "a regression" if table.classes is None else classes(table.classes)
    return (
        f"{table.rows:,} rows · {features} feature{'s' * (features != 1)} · "
        f"target {table.target!r}: {kind}"
    )


def answer(request: DataRequest) -> tuple[DataRequest, str, bool]:
    """(the request, what was found or why not, whether it is a problem)."""
    try:
        return request, look(request), False
    except KanError as exc:  # the loaders' refusals; anything else is a bug, shown as one
        return request, str(exc), True


def classes(names: list[str]) -> str:
    """`3 classes: cat, dog, fish`; a long list cut to its first SHOWN_NAMES."""
    more = f" and {len(names) - SHOWN_NAMES} more" if len(names) > SHOWN_NAMES else ""
    return f"{len(names)} classes: {', '.join(names[:SHOWN_NAMES])}{more}"


class DataNote(Static):
    """One line under the data folder row: checking..., what was found, or why not.

    `check` is called after every edit of the form; it starts a look only when the values it
    depends on changed, and hides the note for the built-in data sets."""

    def __init__(self, **kwargs: str) -> None:
        super().__init__(**kwargs)
        self.request: DataRequest | None = None
        self.looks = 0  # looks started, for tests: typing a path starts one, not one a key
        self._timer: Timer | None = None
        self.display = False  # until the form names a data set that is peeked

    def check(self, request: DataRequest | None) -> None:
        """Look at `request`'s data once it stops changing; None (not peeked): hide."""
        if request is not None and request.dataset not in PEEKED:
            request = None
        if request == self.request:
            return
        self.request = request
        if self._timer is not None:
            self._timer.stop()
        self.display = request is not None
        if request is None:
            return
        self._show("checking...", "-checking")
        self._timer = self.set_timer(PEEK_DEBOUNCE_S, self._look)

    def _look(self) -> None:
        request = self.request
        if request is None:
            return
        self.looks += 1
        self.run_worker(
            lambda: answer(request),
            thread=True,
            exclusive=True,
            group="data-look",
            exit_on_error=False,
        )

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group != "data-look":
            return
        event.stop()
        if event.state == WorkerState.SUCCESS:
            request, text, problem = event.worker.result
            if request == self.request:  # else a newer look is on its way
                self._show(text, "-problem" if problem else "-found")
        elif event.state == WorkerState.ERROR:
            self._show(f"cannot look at the data: {event.worker.error!r}", "-problem")

    def _show(self, text: str, kind: str) -> None:
        for name in ("-checking", "-found", "-problem"):
            self.set_class(name == kind, name)
        self.update(PathText(printable(text)))  # it quotes paths, column and class names
