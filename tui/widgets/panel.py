"""A titled panel (the unit of layout and focus cycling), and the grid that holds them and
shows one alone for `f`."""

from __future__ import annotations

from textual.containers import Container, Vertical
from textual.widget import Widget


class Panel(Vertical):
    TITLE = ""

    def on_mount(self) -> None:
        self.border_title = self.TITLE

    def focus_target(self) -> Widget:
        """The widget that takes focus when the panel is cycled to."""
        raise NotImplementedError


class PanelGrid(Container):
    """The panels, laid out by the stylesheet; `toggle_full` shows one alone, full size.

    Done with inline styles (the other panels' display, the grid's layout) rather than
    Screen.maximize: that sets a class on the screen, and a class change restyles every
    widget below it, the whole app (80-170 ms a key); this restyles nothing and lays out
    one panel."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.full: Panel | None = None

    def toggle_full(self, panel: Panel) -> None:
        if self.full is not None:
            self.restore()
            return
        for other in self.query_children(Panel):
            if other is not panel:
                other.styles.display = "none"
        self.styles.layout = "vertical"
        self.full = panel

    def restore(self) -> None:
        if self.full is None:
            return
        for panel in self.query_children(Panel):
            panel.styles.display = None            # None: back to the stylesheet's say
        self.styles.layout = None
        self.full = None
