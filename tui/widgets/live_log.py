"""A log that behaves like a terminal's last rows: finished lines scroll up, and the open
line (a `\\r` progress line being rewritten) is the last row, updated in place.

Modelled on Textual's `Log` (a ScrollView with the Line API and a cache of rendered strips),
with what a training log needs: a live last row, pruning that keeps the cache, and input
that is already split into lines (the runner and the bridge hand over whole lines)."""

from __future__ import annotations

import re
from typing import Iterable, Sequence

from rich.cells import cell_len
from rich.segment import Segment
from rich.style import Style
from textual.cache import LRUCache
from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.strip import Strip

# Control characters would move the terminal's cursor: shown as a replacement mark instead.
CONTROL_CHARACTERS = re.compile("[\u0000-\u0008\u000b-\u001f\u007f]")


def clean(line: str) -> str:
    return CONTROL_CHARACTERS.sub("\ufffd", line.expandtabs())


def terminal_lines(text: str) -> tuple[list[str], str]:
    """Raw output as a terminal would leave it: (finished lines, the open line). A `\\r`
    inside a line returns to its start, so only the text after the last one remains."""
    *finished, rest = text.replace("\r\n", "\n").split("\n")
    return [_last_state(line) for line in finished], _last_state(rest)


def _last_state(line: str) -> str:
    states = [state for state in line.split("\r") if state]
    return states[-1] if states else ""


class LiveLog(ScrollView, can_focus=True):
    DEFAULT_CSS = """
    LiveLog {
        background: $surface;
        color: $text;
        overflow: scroll;
        &:focus { background-tint: $foreground 5%; }
    }
    """

    def __init__(self, max_lines: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.max_lines = max_lines
        self._lines: list[str] = []
        self._first = 0                  # absolute number of _lines[0]: cache keys survive pruning
        self._live = ""
        self._width = 0
        self._strips: LRUCache[int, Strip] = LRUCache(128)
        self._line_style = Style()       # this render pass's style (render_lines sets it)

    @property
    def lines(self) -> Sequence[str]:
        """The finished lines (read only)."""
        return self._lines

    @property
    def live(self) -> str:
        """The open last row; "" when there is none."""
        return self._live

    @property
    def line_count(self) -> int:
        return len(self._lines) + bool(self._live)

    def write_lines(self, lines: Iterable[str]) -> None:
        new = [clean(line) for line in lines]
        if not new:
            return
        follow = self._following()
        self._lines.extend(new)
        excess = len(self._lines) - self.max_lines
        if excess > 0:
            del self._lines[:excess]
            self._first += excess
        self._width = max(self._width, max(map(cell_len, new)))
        self._resized(follow)

    def write_line(self, line: str) -> None:
        self.write_lines([line])

    def set_live(self, text: str) -> None:
        text = clean(text.rstrip())
        if text == self._live:
            return
        follow = self._following()
        rows_change = bool(text) != bool(self._live)
        self._live = text
        self._width = max(self._width, cell_len(text))
        if rows_change or self.virtual_size.width < self._width:
            self._resized(follow)
        else:                            # the same row, rewritten: repaint just that row
            self.refresh_lines(len(self._lines))

    def clear(self) -> None:
        self._first += len(self._lines)
        self._lines.clear()
        self._live = ""
        self._width = 0
        self._strips.clear()
        self._resized(follow=False)

    def _following(self) -> bool:
        return self.is_vertical_scroll_end and not self.is_vertical_scrollbar_grabbed

    def _resized(self, follow: bool) -> None:
        """The scrollable size changed. Assigning `virtual_size` lays out the whole screen (it
        is a layout reactive), ~20 times a second while a run logs, and a key pressed
        meanwhile waits for it; the log's own size does not change with its line count, so
        only its scrollbars are updated. One that appears or goes still lays the screen out
        (its visibility is a layout reactive)."""
        size = Size(self._width, self.line_count)
        widened = size.width != self.virtual_size.width
        self.set_reactive(ScrollView.virtual_size, size)
        if widened:
            self._scroll_update(size)
        else:
            # Only the height moved: the vertical bar's reactive repaints it. The horizontal
            # bar, which nothing changed, is not re-rendered (that was a quarter of a frame).
            self.vertical_scrollbar.window_virtual_size = size.height
            self.scroll_y = self.validate_scroll_y(self.scroll_y)
        if follow:
            self.scroll_end(animate=False, immediate=True, x_axis=False)
        self.refresh()

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._strips.clear()

    def render_lines(self, crop):
        # Once a pass, not once a line: rich_style walks every ancestor's styles (~0.3 ms),
        # most of what a frame of a scrolling log cost.
        self._line_style = self.rich_style
        return super().render_lines(crop)

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        index = scroll_y + y
        width = self.size.width
        style = self._line_style
        if index < len(self._lines):
            key = self._first + index
            strip = self._strips.get(key)
            if strip is None:
                strip = self._strip(self._lines[index])
                self._strips[key] = strip
        elif index == len(self._lines) and self._live:
            strip = self._strip(self._live)
        else:
            return Strip.blank(width, style)
        return strip.crop_extend(scroll_x, scroll_x + width, style)

    @staticmethod
    def _strip(line: str) -> Strip:
        # One unstyled segment (the widget's style is applied around it): a log line is
        # plain text, already cleaned of control characters.
        return Strip([Segment(line)], cell_len(line))
