"""The Textual app: the setup screen, and a dashboard pushed on top of it for each run.

`create_app` is the one factory, used by the CLI (`kan-tui`, `kan-tui run` without `--headless`)
and by the tests, so both see the same app. Quitting always goes through the dashboard when a run
is going, so the training thread is stopped (with a checkpoint) before the process ends.
"""

from __future__ import annotations

from pathlib import Path

from textual.app import App

from kan_engine import presets_io
from kan_engine.config import RunConfig
from kan_engine.errors import KanError
from kan_tui.messages import StartRun
from kan_tui.screens.dashboard import DashboardScreen
from kan_tui.screens.setup import DEFAULT_PRESET, SetupScreen


class KanApp(App[None]):
    CSS_PATH = "app.tcss"
    TITLE = "kan-tui"
    # Screen classes for app.tcss: 80x24 is the design size, wider / taller terminals get more room.
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (110, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (34, "-tall")]

    def __init__(
        self,
        *,
        config: RunConfig | None = None,
        preset_name: str | None = None,
        start: bool = False,
        out_dir: Path = Path("runs"),
    ) -> None:
        super().__init__()
        self.initial_config = config
        self.preset_name = preset_name
        self.start_run = start
        self.out_dir = Path(out_dir)

    def on_mount(self) -> None:
        config = (self.initial_config or self._preset_config()) if self.start_run else None
        if config is None:
            self.show_setup()
            return
        # The setup screen is built only once the run is left (`n`): building and validating
        # its form would otherwise compete with the first steps of training.
        dashboard = DashboardScreen(config, self.preset_name or DEFAULT_PRESET, self.out_dir)
        self.push_screen(dashboard, lambda _: self.show_setup())

    def show_setup(self) -> None:
        """The setup screen, created on first use, filled with the app's initial config."""
        if not any(isinstance(screen, SetupScreen) for screen in self.screen_stack):
            self.push_screen(SetupScreen(self.initial_config, self.preset_name))

    def _preset_config(self) -> RunConfig | None:
        try:
            return presets_io.resolve(self.preset_name or DEFAULT_PRESET)[0]
        except KanError as exc:
            self.notify(str(exc), title="cannot start", severity="error")
            return None

    def on_start_run(self, message: StartRun) -> None:
        self.push_screen(DashboardScreen(message.config, message.preset_name, self.out_dir))

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
) -> KanApp:
    """The app, on the setup screen, or on a dashboard already training `config` when `start`."""
    return KanApp(config=config, preset_name=preset_name, start=start, out_dir=out_dir)
