"""A nudge when the loop needs a human: a proposal has waited for review for N minutes and
no key was pressed meanwhile. It rings the terminal bell and sends an OSC 9 notification
(inside tmux wrapped in its passthrough sequence, which needs `allow-passthrough on`); both
travel over SSH. Once per wait: the next nudge needs a key press first.

The setting belongs to the terminal the app runs in, not to the engine (several apps can
watch one engine): PAIRLAB_NUDGE_MINUTES, default 5; 0 turns it off."""

from __future__ import annotations

import os

from textual.timer import Timer
from textual.widget import Widget

DEFAULT_MINUTES = 5.0
SETTING = "PAIRLAB_NUDGE_MINUTES"


def nudge_minutes(environ=os.environ) -> tuple[float, str]:
    """(minutes, error): the setting, or the default and what was wrong with it."""
    raw = environ.get(SETTING, "").strip()
    if not raw:
        return DEFAULT_MINUTES, ""
    try:
        minutes = float(raw)
    except ValueError:
        minutes = -1.0
    if minutes < 0 or minutes != minutes:
        return DEFAULT_MINUTES, (f"{SETTING}={raw!r}: expected minutes (0 turns the nudge off);"
                                 f" using {DEFAULT_MINUTES:g}")
    return minutes, ""


def notification(message: str, in_tmux: bool) -> str:
    """The bell and an OSC 9 notification, as bytes for the terminal."""
    osc = f"\x1b]9;{message}\x07"
    if in_tmux:
        osc = "\x1bPtmux;" + osc.replace("\x1b", "\x1b\x1b") + "\x1b\\"
    return "\x07" + osc


class ReviewNudge(Widget):
    """Not drawn; the diff panel tells it when proposals wait, the app when a key is pressed."""

    DEFAULT_CSS = "ReviewNudge { display: none; }"

    def __init__(self, minutes: float | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.minutes, self.setting_error = ((minutes, "") if minutes is not None
                                            else nudge_minutes())
        self.waiting = False
        self.rung = 0
        self._timer: Timer | None = None

    def on_mount(self) -> None:
        if self.setting_error:
            self.notify(self.setting_error, severity="warning", timeout=12)

    def proposals_waiting(self, waiting: bool) -> None:
        if waiting and not self.waiting:     # the oldest one's wait starts now
            self._arm()
        elif not waiting:
            self._disarm()
        self.waiting = waiting

    def key_pressed(self) -> None:
        if self.waiting:
            self._arm()                 # the human is here: the wait starts again

    def _arm(self) -> None:
        self._disarm()
        if self.minutes > 0:
            self._timer = self.set_timer(self.minutes * 60, self._ring)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.stop()
            self._timer = None

    def _ring(self) -> None:
        self._timer = None
        if not self.waiting:
            return
        self.rung += 1
        message = f"pairlab: a proposal has waited {self.minutes:g} min for your review"
        driver = self.app._driver       # Textual writes its own OSC 52 the same way
        if driver is not None and not self.app.is_headless:
            driver.write(notification(message, in_tmux=bool(os.environ.get("TMUX"))))
        self.notify(message, title="review", timeout=30)
