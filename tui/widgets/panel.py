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

    Done with inline styles on the panels (the others' display, the one's span over the
    whole grid) rather than Screen.maximize, which sets a class on the screen: a class
    change restyles every widget below it, the whole app (80-170 ms a key). Nor by changing
    the grid's layout: that refreshes every widget below the grid too. This lays out once
    and renders only what changed size."""

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
        columns, rows = self.styles.grid_size_columns, self.styles.grid_size_rows
        panel.styles.column_span, panel.styles.row_span = columns, rows
        self.full = panel

    def restore(self) -> None:
        if self.full is None:
            return
        for panel in self.query_children(Panel):
            panel.styles.display = None            # None: back to the stylesheet's say
        self.full.styles.column_span = self.full.styles.row_span = None
        self.full = None
