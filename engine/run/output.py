"""A training run's output as it arrives: raw chunks turned into finished lines.

Output is read in raw chunks so that `\\r` progress updates are seen as they happen; they
are collapsed, so the log file and the line callback only ever get finished lines. The
open line (a progress line being rewritten) is kept apart for a live view.

The output is train.py's, so it is hostile text: every line is redacted (engine/base/api_key.py)
before it is written, kept or handed on, and so is the open line.
"""

from __future__ import annotations

import codecs
import math
import os
import re
import threading
import time
from collections import deque

from engine.base.api_key import redact

PROGRESS_RE = re.compile(r"step (\d+) \(([\d.]+)%\) \| loss: ([-\w.+]+).*?remaining: (\d+)s")
KEPT_LINES = 400              # in memory, for the tail, the traceback and the summary block
MAX_LINE_CHARS = 64 * 1024    # an endless line without a newline is cut into pieces
MAX_LIVE_CHARS = 1024         # of the open line sent live: wider than any terminal
READ_CHUNK = 64 * 1024


class OutputCollector:
    """Turns the child's raw output into finished lines and progress updates.

    The reader thread calls `read_all`; the supervising thread calls `take` to collect what
    arrived since the last call. A `\\r`-terminated segment is a progress update: it is
    parsed, and only its last state is written, once, before the next finished line (or at
    the end), unless that next line is itself the newer state of the same progress line.
    The open line (what a terminal shows on its last row: the text after the last `\\r`, or
    the last `\\r` state while nothing follows it) is kept for `take_live`.
    """

    def __init__(self, log_file, started: float):
        self.log_file = log_file
        self.started = started
        self.kept: deque[str] = deque(maxlen=KEPT_LINES)
        self.log_error: OSError | None = None
        self.last_output_at = started
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""
        self._pending_progress: str | None = None   # last \r segment not yet written
        self._reported: str | None = None            # the open segment already parsed live
        self._lock = threading.Lock()        # guards what take() hands over
        self._feed_lock = threading.Lock()   # feed() against finish() if the reader lingers
        self._finished = False
        self._lines: list[str] = []
        self._progress: list[tuple[int, float, float, float, float]] = []
        self._live = ""                      # the open line now
        self._live_taken = ""                # the open line take_live last handed over

    def read_all(self, fd: int) -> None:
        while True:
            try:
                chunk = os.read(fd, READ_CHUNK)
            except OSError:
                chunk = b""
            if not chunk:
                return
            self.last_output_at = time.monotonic()
            with self._feed_lock:
                if self._finished:   # the run is judged and the log closed
                    return
                self.feed(self._decoder.decode(chunk))

    def feed(self, text: str) -> None:
        buffer = self._buffer + text
        # "\r\n" is a newline; hold a trailing "\r" until we know whether "\n" follows.
        buffer = buffer.replace("\r\n", "\n")
        start = 0
        finished: list[str] = []
        for match in re.finditer(r"[\r\n]", buffer):
            end = match.start()
            if buffer[end] == "\r" and end == len(buffer) - 1:
                break
            self._segment(buffer[start:end], buffer[end], finished)
            start = end + 1
        rest = buffer[start:]
        while len(rest) > MAX_LINE_CHARS:
            self._segment(rest[:MAX_LINE_CHARS], "\n", finished)
            rest = rest[MAX_LINE_CHARS:]
        self._buffer = rest
        # An open segment can already be a complete progress line (autoresearch prints
        # "\rstep ..." with end=""): report it now rather than at the next step.
        open_segment = rest.rstrip("\r")
        if open_segment and open_segment != self._reported and self._parse_progress(open_segment):
            self._reported = open_segment
        self._write(finished)
        self._set_live(open_segment or self._pending_progress or "")

    def finish(self) -> None:
        """End of output: flush what is still open into the log."""
        with self._feed_lock:
            finished: list[str] = []
            tail = self._buffer + self._decoder.decode(b"", final=True)
            self._buffer = ""
            if tail.rstrip("\r"):
                self._segment(tail.rstrip("\r"), "\r" if tail.endswith("\r") else "\n", finished)
            if self._pending_progress is not None:
                finished.append(self._pending_progress)
                self._pending_progress = None
            self._write(finished)
            self._set_live("")
            self._finished = True

    def take(self) -> tuple[list[str], list[tuple[int, float, float, float, float]]]:
        with self._lock:
            lines, self._lines = self._lines, []
            progress, self._progress = self._progress, []
        return lines, progress

    def take_live(self) -> str | None:
        """The open line if it changed since the last call ("" once none is open), else None:
        called at the delivery rate, so a writer rewriting its line 10,000 times a second
        costs the consumer one update per delivery."""
        with self._lock:
            live = self._live
        if live == self._live_taken:
            return None
        self._live_taken = live
        return live

    def _set_live(self, text: str) -> None:
        text = redact(text[:MAX_LIVE_CHARS])
        with self._lock:
            self._live = text

    def _segment(self, text: str, terminator: str, finished: list[str]) -> None:
        if terminator == "\r":
            if text:
                if text != self._reported:
                    self._parse_progress(text)
                self._pending_progress = text
            self._reported = None
            return
        if text:
            is_progress = self._parse_progress(text) if text != self._reported else True
            if self._pending_progress is not None and not is_progress:
                finished.append(self._pending_progress)
            finished.append(text)
        elif self._pending_progress is not None:
            finished.append(self._pending_progress)
        else:
            finished.append(text)
        self._pending_progress = None
        self._reported = None

    def _parse_progress(self, text: str) -> bool:
        match = PROGRESS_RE.search(text)
        if not match:
            return False
        step, percent, loss, remaining = match.groups()
        try:
            loss_value = float(loss)
        except ValueError:
            loss_value = math.nan
        update = (int(step), loss_value, float(percent), time.monotonic() - self.started,
                  float(remaining))
        with self._lock:
            self._progress.append(update)
        return True

    def _write(self, finished: list[str]) -> None:
        if not finished:
            return
        finished = [redact(line) for line in finished]
        if self.log_error is None:
            try:
                self.log_file.write("".join(line + "\n" for line in finished))
                self.log_file.flush()
            except OSError as exc:       # e.g. disk full: keep draining the pipe, say so later
                self.log_error = exc
        self.kept.extend(finished)
        with self._lock:
            self._lines.extend(finished)
