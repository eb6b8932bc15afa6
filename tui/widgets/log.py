"""The live training log: the run in flight, tailed like a terminal (finished lines scroll
up, the `\\r` progress line is the last row, rewritten in place); bounded; follows the tail
unless the user has scrolled up."""

from __future__ import annotations

import textwrap
from collections import deque

from textual.app import ComposeResult
from textual.widget import Widget

from engine.base.events import RunStarted
from tui.widgets.live_log import LiveLog
from tui.widgets.panel import Panel

MAX_LOG_LINES = 5000


class LogPanel(Panel):
    TITLE = "training log"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.run_id: str | None = None
        self.log_path: str | None = None          # of the run shown: the log viewer follows it
        self.lines_written = 0
        # Lines of runs not shown: another slot's, or one whose start has not arrived yet
        # (the engine holds a run's start until its step ends; the trainer writes at once).
        self.others: dict[str, tuple[deque[str], str]] = {}   # run id -> (lines, open line)
        self.finished: set[str] = set()

    def compose(self) -> ComposeResult:
        yield LiveLog(max_lines=MAX_LOG_LINES, id="log")

    def focus_target(self) -> Widget:
        return self.query_one("#log")

    @property
    def log(self) -> LiveLog:
        return self.query_one("#log", LiveLog)

    def start_run(self, run: RunStarted) -> None:
        self.run_id, self.log_path = run.run_id, run.log_path
        self.log.clear()
        self.log.write_line(f"── run {run.run_id} · experiment #{run.experiment_id} · "
                            f"{run.commit[:7]} · {run.description}")
        self.border_subtitle = f"run {run.run_id}"
        lines, live = self.others.pop(run.run_id, ((), ""))
        self.log.write_lines(lines)
        self.log.set_live(live)

    def show_tail(self, lines: int = 200) -> None:
        """What the shown run logged before the panel followed it (its log file's end), when
        the panel has not kept its lines itself."""
        if len(self.log.lines) > 1:       # more than its header: lines kept from the engine
            return
        try:
            with open(self.log_path or "", encoding="utf-8", errors="replace") as f:
                tail = list(deque(f, maxlen=lines))
        except OSError:
            return                       # a remote engine's log: only new lines arrive
        self.log.write_lines([line.rstrip("\n") for line in tail])

    def write(self, run_id: str, lines: list[str], dropped: int, live: str = "") -> None:
        if self.run_id is None:
            self.run_id = run_id
        if run_id != self.run_id:
            if run_id not in self.finished:      # kept for when the panel shows that run
                kept, _ = self.others.setdefault(run_id, (deque(maxlen=MAX_LOG_LINES), ""))
                kept.extend(lines)
                self.others[run_id] = (kept, live)
            return
        log = self.log
        if dropped:
            log.write_line(f"… {dropped:,} lines skipped to keep up (full log on disk) …")
        log.write_lines(lines)
        log.set_live(live)
        self.lines_written += len(lines)

    def finish_run(self, run_id: str, summary: str) -> None:
        self.finished.add(run_id)
        self.others.pop(run_id, None)
        if run_id == self.run_id:
            self.log.set_live("")
            # wrapped to the panel: a crash's error is read whole, not cut at the edge
            width = max(20, self.log.scrollable_content_region.width - 1)
            self.log.write_lines(textwrap.wrap(f"── {summary}", width, subsequent_indent="   ",
                                               break_on_hyphens=False) or ["──"])
