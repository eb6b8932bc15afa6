"""The main screen's panels: side by side, or stacked one at a time below a size (chosen
with tab), the panel bar that names them, full-screening one. A mixin of MainScreen
(tui/screens/main.py)."""

from __future__ import annotations

from textual.content import Content
from textual.widgets import Footer, Static

from tui.widgets.panel import Panel, PanelGrid

# Below this size the panels stack: one at a time, chosen with tab.
NARROW_WIDTH = 100
NARROW_HEIGHT = 28
PANEL_NAMES = {
    "reasoning-panel": "reasoning", "diff-panel": "diff", "device-panel": "device",
    "chart-panel": "chart", "log-panel": "log", "experiments-panel": "runs",
}


class PanelLayoutMixin:
    """Which panel is current, and how the panels share the screen."""

    def _apply_size(self, width: int, height: int) -> None:
        narrow = width < NARROW_WIDTH or height < NARROW_HEIGHT
        self.set_class(narrow, "narrow")
        self.query_one(Footer).compact = narrow
        self._show_current_panel()

    def panels(self) -> list[Panel]:
        return list(self.query_one("#panels").query_children(Panel))

    def focus_panel(self, panel_id: str) -> None:
        self.current_panel = panel_id
        self._show_current_panel()
        self.query_one(f"#{panel_id}", Panel).focus_target().focus()

    def _show_current_panel(self) -> None:
        for panel in self.panels():
            panel.set_class(panel.id == self.current_panel, "-current")
        self.query_one("#panel-bar", Static).update(Content.assemble(*(
            (f" {name} ", "reverse bold" if panel_id == self.current_panel else "dim")
            for panel_id, name in PANEL_NAMES.items())))

    def on_descendant_focus(self, event) -> None:
        for node in event.widget.ancestors_with_self:
            if isinstance(node, Panel):
                if node.id != self.current_panel:
                    self.current_panel = node.id
                    self._show_current_panel()
                return

    def action_cycle_panel(self, step: int) -> None:
        ids = [panel.id for panel in self.panels()]
        index = ids.index(self.current_panel) if self.current_panel in ids else 0
        self.query_one(PanelGrid).restore()
        self.focus_panel(ids[(index + step) % len(ids)])

    def action_toggle_maximize(self) -> None:
        self.query_one(PanelGrid).toggle_full(self.query_one(f"#{self.current_panel}", Panel))
