"""The Textual app: the setup screen, and a dashboard pushed on top of it for each run.

`create_app` is the one factory, used by the CLI (`kan-tui`, `kan-tui run` without `--headless`)
and by the tests, so both see the same app. Quitting always goes through the dashboard when a run
is going, so the training thread is stopped (with a checkpoint) before the process ends.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from textual.app import App
from textual.binding import Binding

from kan_engine import presets_io
from kan_engine.config import RunConfig
from kan_engine.errors import KanError
from kan_engine.untrusted import printable
from kan_tui import exit_codes
from kan_tui.formatting import break_paths
from kan_tui.messages import StartRun
from kan_tui.run_model import TrainingRun
from kan_tui.screens.dashboard import JOIN_TIMEOUT_S, DashboardScreen
from kan_tui.screens.setup import DEFAULT_PRESET, SetupScreen
from kan_tui.signals import STOP_SIGNALS

if TYPE_CHECKING:
    from textual.notifications import SeverityLevel

    from kan_engine.resume_plan import ResumePlan

# A dropped terminal (SSH connection gone) sends SIGHUP; a scheduler or `kill` sends SIGTERM.
# SIGHUP does not exist on Windows.
HANGUP_GRACE_S = 3.0  # after the training thread ended, for Textual's exit before ours


def exit_after_hangup(runs: list[TrainingRun], code: int) -> None:
    """End the process once the training threads are done, if Textual's own exit has not.

    After a hangup Textual cannot exit by itself: its output thread dies on the first write to
    the dead terminal, its bounded queue fills up, and restoring the terminal at exit then
    waits forever. The checkpoint and the summary are written by the training thread, so once it
    has ended there is nothing left to save; the grace period lets a normal exit win when the
    terminal was still there.
    """
    for run in runs:
        run.done.wait(JOIN_TIMEOUT_S)
    threading.Event().wait(HANGUP_GRACE_S)
    os._exit(code)


# Textual's toasts are this wide (app.tcss pins it): their text is 3 cells narrower (a border
# and the padding), which is where `notify` breaks long paths
TOAST_WIDTH, TOAST_SHARE, TOAST_FRAME = 60, 0.5, 3


def toast_text_width(screen_width: int) -> int:
    return min(TOAST_WIDTH, int(screen_width * TOAST_SHARE)) - TOAST_FRAME


class KanApp(App[None]):
    CSS_PATH = "app.tcss"
    TITLE = "kan-tui"
    # Screen classes for app.tcss: 80x24 is the design size, wider / taller terminals get more room.
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (110, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (34, "-tall")]
    # everywhere, but listed in the setup screen's footer only: the dashboard's is full at 80x24
    BINDINGS = [
        Binding("h", "open_runs", "Runs", show=False),
        Binding("v", "open_activations", "Activations", show=False),
    ]

    def __init__(
        self,
        *,
        config: RunConfig | None = None,
        preset_name: str | None = None,
        start: bool = False,
        out_dir: Path = Path("runs"),
        resume: ResumePlan | None = None,
    ) -> None:
        super().__init__()
        self.initial_config = config
        self.preset_name = preset_name
        self.start_run = start
        self.out_dir = Path(out_dir)
        self.resume = resume
        self._signals: list[int] = []
        # the run a quit (or a stop signal) stopped, for the line printed after the app has gone
        self.stopped_run: tuple[str, int] | None = None

    def notify(
        self,
        message: str,
        *,
        title: str = "",
        severity: SeverityLevel = "information",
        timeout: float | None = None,
        markup: bool = True,
    ) -> None:
        """A toast; a plain one (user text: `markup=False`) has its paths broken at separators
        to the toast's width, as Textual would cut a run folder's name wherever the line ends.
        (Markup is left alone: a break inside `[/b]` would be a markup error.)"""
        if not markup:
            message = break_paths(message, toast_text_width(self.size.width))
        super().notify(message, title=title, severity=severity, timeout=timeout, markup=markup)

    def on_mount(self) -> None:
        self._handle_stop_signals()
        if self.resume is not None:
            config, preset = self.resume.config, self.resume.preset
        else:
            config = (self.initial_config or self._preset_config()) if self.start_run else None
            preset = self.preset_name or DEFAULT_PRESET
        if config is None:
            self.show_setup()
            return
        # The setup screen is built only once the run is left (`n`): building and validating
        # its form would otherwise compete with the first steps of training.
        dashboard = DashboardScreen(config, preset, self.out_dir, resume=self.resume)
        self.push_screen(dashboard, lambda _: self.show_setup())

    def _handle_stop_signals(self) -> None:
        """SIGHUP / SIGTERM stop a run as `q` then `y` would (checkpoint, summary `stopped`),
        then exit with 128 + the signal's number, like a headless run. Without this, a dropped
        SSH connection kills the process mid-step: no `last.pt`, a summary stuck at `running`.

        The handlers run on the event loop, so the stop happens on the app's thread. A signal
        the process was told to ignore (`nohup`) stays ignored; outside the main thread (or on
        Windows) signals cannot be handled and are left alone.
        """
        loop = asyncio.get_running_loop()
        for signum in STOP_SIGNALS:
            if signal.getsignal(signum) is signal.SIG_IGN:
                continue
            try:
                loop.add_signal_handler(signum, self.stop_on_signal, signum)
            except (NotImplementedError, RuntimeError, ValueError):
                continue
            self._signals.append(signum)

    def on_unmount(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in self._signals:
            loop.remove_signal_handler(signum)
        self._signals.clear()

    def stop_on_signal(self, signum: int) -> None:
        """Stop the running training (if any) with a checkpoint, then exit with 128 + signum."""
        code = exit_codes.for_signal(signum)
        running = [s for s in self.screen_stack if isinstance(s, DashboardScreen) and s.running]
        if running:
            running[-1].stop_and_exit(code)
        else:
            self.exit(return_code=code)
        if signum == getattr(signal, "SIGHUP", None) and not self.is_headless:
            runs = [screen.run for screen in running]
            threading.Thread(
                target=exit_after_hangup, args=(runs, code), name="hangup", daemon=True
            ).start()

    def show_setup(self) -> None:
        """The setup screen, created on first use, filled with the app's initial config."""
        if not any(isinstance(screen, SetupScreen) for screen in self.screen_stack):
            self.push_screen(SetupScreen(self.initial_config, self.preset_name))

    def _preset_config(self) -> RunConfig | None:
        try:
            return presets_io.resolve(self.preset_name or DEFAULT_PRESET)[0]
        except KanError as exc:
            self.notify(printable(exc), title="cannot start", severity="error", markup=False)
            return None

    def on_start_run(self, message: StartRun) -> None:
        self.push_screen(DashboardScreen(message.config, message.preset_name, self.out_dir))

    def action_open_runs(self) -> None:
        """The run history of `out_dir` (`h` on any screen)."""
        from kan_tui.screens.runs import RunsScreen

        if not isinstance(self.screen, RunsScreen):
            self.push_screen(RunsScreen(self.out_dir))

    def action_open_activations(self) -> None:
        """The activation viewer on the dashboard's run, else on the newest run folder in
        `out_dir` that has a checkpoint (`v`)."""
        from kan_engine import history, runs
        from kan_tui.screens.activations import ActivationsScreen

        if isinstance(self.screen, ActivationsScreen):
            return
        run_dir = None
        if isinstance(self.screen, DashboardScreen) and self.screen.state.run_dir:
            run_dir = Path(self.screen.state.run_dir)
        else:
            rows, _ = history.list_runs(self.out_dir)
            with_checkpoint = [
                r.path for r in rows if runs.checkpoint_path(r.path, "last").exists()
            ]
            run_dir = with_checkpoint[0] if with_checkpoint else None
        if run_dir is None:
            message = f"no run with a checkpoint in {printable(self.out_dir)} yet"
            self.notify(message, severity="warning", markup=False)
            return
        self.push_screen(ActivationsScreen(run_dir))

    async def action_quit(self) -> None:
        """ctrl+q (Textual's quit key) and `q`: a running training is asked about first."""
        if isinstance(self.screen, DashboardScreen):
            self.screen.action_quit_run()
        else:
            self.exit()


def create_app(
    *,
    config: RunConfig | None = None,
    preset_name: str | None = None,
    start: bool = False,
    out_dir: Path = Path("runs"),
    resume: ResumePlan | None = None,
) -> KanApp:
    """The app, on the setup screen, or on a dashboard already training `config` when `start`
    (or continuing the run of `resume`)."""
    return KanApp(
        config=config, preset_name=preset_name, start=start, out_dir=out_dir, resume=resume
    )
