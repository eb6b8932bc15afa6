"""Any experiment's log, read from disk in a worker (the last lines only: bounded), shown as
a terminal would show it. The log of the run in flight is followed: new lines as the file
grows, and the live `\\r` line from the training log panel as the last row."""

from __future__ import annotations

import codecs
from collections import deque
from pathlib import Path

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Static

from tui.widgets.live_log import LiveLog, terminal_lines
from tui.widgets.log import LogPanel

MAX_VIEW_LINES = 20000
FOLLOW_INTERVAL_S = 0.25
READ_CHUNK = 1 << 20


def log_title(experiment) -> str:
    """The viewer's title for a run: which run, its experiment, what it tried, how it was judged."""
    number = "—" if experiment.id is None or experiment.id < 0 else f"#{experiment.id}"
    judged = f" · {experiment.measure.describe()}" if experiment.measure else ""
    if experiment.revert is not None:
        judged += f" · {experiment.revert.describe()}"
    return f"run {experiment.run_id} · experiment {number} · {experiment.description}{judged}"


class LogViewerScreen(Screen[None]):
    BINDINGS = [Binding("escape,q,o", "close", "Close", id="close-log")]

    def __init__(self, title: str, path: Path) -> None:
        super().__init__()
        self.title_text = title
        self.path = path
        self._offset = 0                 # bytes of the file already shown
        self._partial = ""               # the file's last line, not ended yet
        self._reading = False
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def compose(self) -> ComposeResult:
        yield Static(f"{self.title_text} · {self.path}", id="log-viewer-title")
        yield LiveLog(max_lines=MAX_VIEW_LINES, id="past-log")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(LiveLog).focus()
        self._load()

    def _live_panel(self) -> LogPanel | None:
        """The training log panel, if the run it shows is the one in this file."""
        for screen in self.app.screen_stack:
            for panel in screen.query(LogPanel):
                if panel.log_path and Path(panel.log_path) == self.path:
                    return panel
        return None

    @work(thread=True, exit_on_error=False)
    def _load(self) -> None:
        try:
            with self.path.open("rb") as handle:
                size = handle.seek(0, 2)
                # The tail only: a 2 GB log costs what its last lines cost.
                start = max(0, size - MAX_VIEW_LINES * 256)
                handle.seek(start)
                data = handle.read()
        except OSError as error:
            self.app.call_from_thread(self._show_error, f"cannot read the log: {error}")
            return
        text = self._decoder.decode(data)     # used by _append only after this hands over
        if start:
            text = text.partition("\n")[2]          # the first line was cut by the seek
        finished, partial = terminal_lines(text)
        self.app.call_from_thread(self._show, list(deque(finished, maxlen=MAX_VIEW_LINES)),
                                  partial, start + len(data))

    def _show_error(self, message: str) -> None:
        self.query_one(LiveLog).write_line(message)

    def _show(self, lines: list[str], partial: str, offset: int) -> None:
        log = self.query_one(LiveLog)
        self._offset, self._partial = offset, partial
        if not lines and not partial and self._live_panel() is None:
            lines = ["(empty log)"]
        log.write_lines(lines)
        self._show_live()
        log.scroll_end(animate=False)
        if self._live_panel() is not None:
            self.set_interval(FOLLOW_INTERVAL_S, self._follow)

    def _follow(self) -> None:
        if not self._reading:
            self._reading = True
            self._read_more()
        self._show_live()

    @work(thread=True, exit_on_error=False)
    def _read_more(self) -> None:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self._offset)
                data = handle.read(READ_CHUNK)
        except OSError:
            data = b""
        self.app.call_from_thread(self._append, data)

    def _append(self, data: bytes) -> None:
        self._reading = False
        if not data:
            return
        self._offset += len(data)
        finished, self._partial = terminal_lines(self._partial + self._decoder.decode(data))
        self.query_one(LiveLog).write_lines(finished)
        self._show_live()

    def _show_live(self) -> None:
        panel = self._live_panel()
        live = panel.log.live if panel is not None else ""
        self.query_one(LiveLog).set_live(live or self._partial)

    def action_close(self) -> None:
        self.dismiss(None)
