"""The cyclic garbage collector run on the app's schedule, between frames, not inside them.

Left to itself the collector runs when allocations cross a threshold, and a frame allocates
more than anything else the app does: at 20,000 log lines/s a middle-generation collection
(5-13 ms) landed in most frames that redrew a whole panel, and a full one (33-40 ms, every
~2 s) in some, so a key's repaint waited for them (issue 10). Here, once the first frame is
up, what startup built (modules, classes, styles, widgets: ~100k objects that live as long
as the app) leaves the collector's view, automatic collection is off, and a timer collects
the young generation ten times a second, the middle one every second and everything once a
minute: short pauses at moments of their own, and all the garbage collected as before."""

from __future__ import annotations

import gc

TICK_S = 0.1             # the young generation collected this often
MIDDLE_EVERY = 10        # ticks between collections of the middle generation (1 s)
FULL_EVERY = 600         # ticks between full collections (60 s)


class ScheduledCollector:
    def __init__(self) -> None:
        self.ticks = 0
        self.running = False
        self._was_enabled = True

    def start(self) -> None:
        """Once the first frame is up. No collection first: it would cost the first key what
        the freeze saves; what little garbage startup left is kept until the app exits."""
        self._was_enabled = gc.isenabled()
        gc.freeze()
        gc.disable()
        self.running = True

    def tick(self) -> None:
        if not self.running:
            return
        self.ticks += 1
        if self.ticks % FULL_EVERY == 0:
            gc.collect(2)
        else:
            gc.collect(1 if self.ticks % MIDDLE_EVERY == 0 else 0)

    def stop(self) -> None:
        """The process goes on after the app (a test run): the collector as it found it."""
        if self.running:
            self.running = False
            gc.unfreeze()
            if self._was_enabled:
                gc.enable()
