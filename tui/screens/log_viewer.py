"""Any past experiment's log, read from disk in a worker (the last lines only: bounded)."""

from __future__ import annotations

from collections import deque
from pathlib import Path

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Log, Static

MAX_VIEW_LINES = 20000


class LogViewerScreen(Screen[None]):
    BINDINGS = [Binding("escape,q,o", "close", "Close", id="close-log")]

    def __init__(self, title: str, path: Path) -> None:
        super().__init__()
        self.title_text = title
        self.path = path

    def compose(self) -> ComposeResult:
        yield Static(f"{self.title_text} · {self.path}", id="log-viewer-title")
        yield Log(max_lines=MAX_VIEW_LINES, id="past-log")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(Log).focus()
        self._load()

    @work(thread=True, exit_on_error=False)
    def _load(self) -> None:
        try:
            with self.path.open(encoding="utf-8", errors="replace") as handle:
                lines = list(deque(handle, maxlen=MAX_VIEW_LINES))
        except OSError as error:
            lines = [f"cannot read the log: {error}"]
        self.app.call_from_thread(self._show, [line.rstrip("\n") for line in lines])

    def _show(self, lines: list[str]) -> None:
        log = self.query_one(Log)
        log.write_lines(lines or ["(empty log)"])
        log.scroll_end(animate=False)

    def action_close(self) -> None:
        self.dismiss(None)
