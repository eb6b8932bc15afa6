"""From engine threads to the app's message queue, without ever blocking the engine.

The session calls `EventBridge.__call__` on its own threads. Low-rate events are posted at
once; high-rate ones (reasoning deltas, log lines, progress) are buffered and flushed by a
~20 Hz timer on the app, so a training log at 100k lines/s costs the UI twenty messages a
second. Any buffered data is flushed before a low-rate event is posted, and `post` keeps the
order of its calls from any thread, so the app sees events in the order the engine emitted
them. Each run's log is buffered apart (several trainer slots write at once), so one run's
lines never cut short another's open line.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Callable

from textual.message import Message

from engine.base.events import (DeviceSample, Event, LiveLine, LogLines, ReasoningDelta,
                                RunFinished, RunProgress)
from tui.messages import DeviceUpdate, EngineEvent, LogBatch, ProgressBatch, ReasoningBatch

FLUSH_INTERVAL_S = 0.05


class RunLog:
    """One run's log lines since the last flush, and its open line."""

    def __init__(self, max_lines: int) -> None:
        # Bounded: lines beyond what the log panel keeps would be pruned on arrival anyway.
        self.lines: deque[str] = deque(maxlen=max_lines)
        self.dropped = 0
        self.live = ""                   # the open line; only its latest state matters
        self.live_changed = False


class EventBridge:
    def __init__(self, post: Callable[[Message], None], max_log_lines: int) -> None:
        self._post = post
        self._lock = threading.Lock()
        self._reasoning_draft: int | None = None
        self._reasoning: list[tuple[str, str]] = []
        self._max_log_lines = max_log_lines
        self._logs: dict[str, RunLog] = {}        # by run id, while the run trains
        self._progress: list[RunProgress] = []
        self.lines_accepted = 0

    def __call__(self, event: Event) -> None:
        with self._lock:
            if isinstance(event, (LogLines, LiveLine)):
                log = self._logs.get(event.run_id)
                if log is None:
                    log = self._logs[event.run_id] = RunLog(self._max_log_lines)
                if isinstance(event, LiveLine):
                    log.live, log.live_changed = event.text, True
                else:
                    overflow = len(log.lines) + len(event.lines) - self._max_log_lines
                    if overflow > 0:
                        log.dropped += overflow
                    log.lines.extend(event.lines)
                    self.lines_accepted += len(event.lines)
            elif isinstance(event, ReasoningDelta):
                if event.draft_id != self._reasoning_draft:
                    self._flush_reasoning()
                    self._reasoning_draft = event.draft_id
                if self._reasoning and self._reasoning[-1][0] == event.kind:
                    kind, text = self._reasoning[-1]
                    self._reasoning[-1] = (kind, text + event.text)
                else:
                    self._reasoning.append((event.kind, event.text))
            elif isinstance(event, RunProgress):
                self._progress.append(event)
            elif isinstance(event, DeviceSample):
                self._post(DeviceUpdate(event))
            else:
                self._flush_all()
                if isinstance(event, RunFinished):
                    self._logs.pop(event.result.run_id, None)
                self._post(EngineEvent(event))

    def flush(self) -> None:
        """Deliver everything buffered (the app's timer calls this)."""
        with self._lock:
            self._flush_all()

    def _flush_all(self) -> None:
        self._flush_reasoning()
        self._flush_log()
        if self._progress:
            self._post(ProgressBatch(self._progress))
            self._progress = []

    def _flush_reasoning(self) -> None:
        if self._reasoning and self._reasoning_draft is not None:
            self._post(ReasoningBatch(self._reasoning_draft, self._reasoning))
        self._reasoning = []

    def _flush_log(self) -> None:
        for run_id, log in self._logs.items():
            if log.lines or log.live_changed:
                self._post(LogBatch(run_id, list(log.lines), log.dropped, log.live))
                log.lines.clear()
                log.dropped, log.live_changed = 0, False
