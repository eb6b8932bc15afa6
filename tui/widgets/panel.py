"""A titled panel (the unit of layout and focus cycling), and the grid that holds them and
shows one alone for `f`."""

from __future__ import annotations

from textual.containers import Container, Vertical
from textual.screen import Screen
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

    Full size is the screen's maximized widget (Screen.arrange then lays out that panel and
    what the screen's ALLOW_IN_MAXIMIZED_VIEW names), set without Screen.maximize's watcher:
    that one classes the screen, and a class change restyles the whole app (80-170 ms a
    key). Hiding the other panels instead re-renders each of them when they come back; set
    this way, only the panel that changed size renders, both ways."""

    @property
    def full(self) -> Panel | None:
        maximized = self.screen.maximized
        return maximized if isinstance(maximized, Panel) else None

    def toggle_full(self, panel: Panel) -> None:
        self._set_full(None if self.full is not None else panel)

    def restore(self) -> None:
        if self.full is not None:
            self._set_full(None)

    def _set_full(self, panel: Panel | None) -> None:
        screen = self.screen
        screen.set_reactive(Screen.maximized, panel)
        # A new layout draws everything that moved; a repaint as well would draw it twice.
        screen.refresh(layout=True, repaint=False)
