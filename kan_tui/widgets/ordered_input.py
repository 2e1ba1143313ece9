"""A text Input whose editing keys take effect in the order they were typed.

Textual's Input inserts a printable key where it arrives, but runs its own key bindings
(backspace, delete, ctrl+u, the arrows, home/end) only once the key has bubbled up to the App
(Textual issue #6605). Each hop is a message queue; the setup form's queue is busy re-validating
after every edit, so a burst typed right after ctrl+u or backspace (a paste from tmux, fast
fingers) was inserted before the deletion ran, which then deleted the new text: clearing the base
LR and typing `0.00987654` left an empty field. Here the Input's own bindings run where its
printable keys do, in the Input's own queue, so every key is applied in order.
"""

from __future__ import annotations

from textual import events
from textual.widgets import Input


class OrderedInput(Input):
    """An Input that runs its own (non-priority) key bindings as soon as the key reaches it."""

    async def _on_key(self, event: events.Key) -> None:
        # Textual calls each class's `_on_key` along the MRO, this one first: printable keys go
        # on to Input's, which inserts them; a key bound here is run now and goes no further
        if event.is_printable:
            return
        for binding in self._bindings.key_to_bindings.get(event.key, ()):
            if not binding.priority and await self.app.run_action(binding.action, self):
                event.stop()
                event.prevent_default()
                return
