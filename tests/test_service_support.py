"""Shared by the service tests that run real engine processes: starting one the way
`pairlab` does, watching a client's events, and making sure no engine outlives its test."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import psutil
import pytest

from engine.service.client import EngineLost
from pairlab.engine_process import ENGINE_ARGS_NAME
from tests.conftest import TINY_ENV

WAIT_S = 180.0                 # a loaded CI box imports torch slowly


def engine_argv(root: Path, *flags: str) -> list[str]:
    """`pairlab headless` on the workspace with the offline tuner and tiny runs."""
    return [sys.executable, "-m", "pairlab", "headless", "--workspace", str(root),
            "--agent", "tuner", "--budget", "5", "--noise-repeats", "0", *flags]


@pytest.fixture
def engine_env(monkeypatch, dataset_dir):
    """The environment engines started by the test inherit: tiny runs on prepared data."""
    for key, value in {**TINY_ENV, "PAIRLAB_DATA_DIR": str(dataset_dir),
                       "PAIRLAB_MAX_STEPS": "3"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    started: list[Path] = []
    yield started
    for root in started:                     # an engine a failed test left running
        pid = engine_pid(root)
        if pid and psutil.pid_exists(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def engine_pid(root: Path) -> int | None:
    try:
        return json.loads((Path(root) / ".pairlab" / ENGINE_ARGS_NAME).read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None


def wait_gone(pid: int, what: str = "the engine process to end") -> None:
    try:
        psutil.Process(pid).wait(WAIT_S)
    except psutil.NoSuchProcess:
        return
    except psutil.TimeoutExpired:
        raise AssertionError(f"timed out waiting for {what}") from None


class Watch:
    """Every event a client delivers, and a way to wait for one (woken by the client)."""

    def __init__(self, client) -> None:
        self.events: list = []
        self._changed = threading.Condition()
        client.subscribe(self._on_event)

    def _on_event(self, event) -> None:
        with self._changed:
            self.events.append(event)
            self._changed.notify_all()

    def wait_for(self, predicate: Callable[[object], bool], what: str,
                 timeout: float = WAIT_S):
        deadline = time.monotonic() + timeout
        seen = 0
        with self._changed:
            while True:
                for event in self.events[seen:]:
                    if predicate(event):
                        return event
                seen = len(self.events)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"timed out waiting for {what}; saw:\n{self.story()}")
                self._changed.wait(remaining)

    def lost(self, timeout: float = WAIT_S) -> EngineLost:
        return self.wait_for(lambda e: isinstance(e, EngineLost), "the connection to end",
                             timeout)

    def story(self) -> str:
        quiet = ("reasoning", "log", "progress", "device")
        return "\n".join(json.dumps(getattr(e, "type", "?")) + " " + repr(e)[:160]
                         for e in self.events if getattr(e, "type", "") not in quiet)
