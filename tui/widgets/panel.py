"""A titled, maximizable panel: the unit of layout, focus cycling and full-screen."""

from __future__ import annotations

from textual.containers import Vertical
from textual.widget import Widget


class Panel(Vertical):
    # `f` maximizes the focused widget's nearest maximizable ancestor: the panel.
    ALLOW_MAXIMIZE = True
    TITLE = ""

    def on_mount(self) -> None:
        self.border_title = self.TITLE

    def focus_target(self) -> Widget:
        """The widget that takes focus when the panel is cycled to."""
        raise NotImplementedError
