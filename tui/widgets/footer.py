"""The footer: Textual's, less the keys that do not fit. Textual's cuts the last key shown
at the right edge (at 80 columns "m Mode" became "m Mo"); here a key is shown whole or not
at all, in the footer's order of importance, and a shorter key further on may still take
the room left (`?` lists every key). Textual's recomposes on every change of the screen's
bindings, focus moves included, and restyling its keys cost a key press tens of ms; this one
recomposes only when the keys it shows would change."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import Footer
from textual.widgets._footer import FooterKey


def key_width(key: FooterKey, compact: bool) -> int:
    """Columns the key takes, as FooterKey's stylesheet lays it out."""
    if compact:                   # "k Kill" and a margin of one
        return len(key.key_display) + 1 + len(key.description) + 1
    return len(key.key_display) + 2 + len(key.description) + 1     # " k " "Kill "


class WholeKeysFooter(Footer):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._composed_for = 0           # the width the keys were chosen for
        self._shown: tuple = ()          # the bindings the keys were made from

    def compose(self) -> ComposeResult:
        # before the first layout the footer has no size: the terminal's width is its own
        room = self._composed_for = self.size.width or self.app.size.width
        for widget in super().compose():
            if isinstance(widget, FooterKey):
                width = key_width(widget, self.compact)
                if width > room:
                    continue
                room -= width
            yield widget

    def bindings_changed(self, screen: Screen) -> None:
        shown = tuple((binding.key, binding.description, enabled)
                      for _, binding, enabled, _ in screen.active_bindings.values()
                      if binding.show)
        if shown == self._shown and self._bindings_ready:
            return
        self._shown = shown
        super().bindings_changed(screen)

    def on_resize(self) -> None:
        if self.size.width != self._composed_for:
            self.refresh(recompose=True)

    def watch_compact(self) -> None:
        self.refresh(recompose=True)
