"""The preset picker: built-ins and the user's own presets, marked (`presets_io.list_presets`)."""

from __future__ import annotations

from rich.text import Text
from textual.binding import Binding
from textual.widgets import OptionList
from textual.widgets.option_list import Option

from kan_engine import presets_io


class PresetList(OptionList):
    """Enter (or a click) loads the highlighted preset into the form; `d` deletes a user preset."""

    # Not in the footer: at 80 columns it would push `q Quit` off the screen; the setup screen's
    # hint line names `d` while the list has focus.
    BINDINGS = [Binding("d,delete", "screen.delete_preset", "Delete preset", show=False)]

    def __init__(self, **kwargs: str) -> None:
        super().__init__(**kwargs)
        self.presets: dict[str, presets_io.PresetInfo] = {}

    def reload(self, highlight: str | None = None) -> None:
        """Re-read the preset folders (another process may have saved or deleted one)."""
        self.presets = {info.name: info for info in presets_io.list_presets()}
        self.clear_options()
        for info in self.presets.values():
            kind = Text(" built-in", style="dim") if info.builtin else Text(" user", style="green")
            self.add_option(Option(Text.assemble(info.name, kind), id=info.name))
        if highlight in self.presets:
            self.highlighted = self.get_option_index(highlight)

    @property
    def highlighted_name(self) -> str | None:
        option = self.highlighted_option
        return option.id if option is not None else None
