"""What the coordinator lends its parts (engine/loop/coordinator.py): the loop's state, the
journal, git and the event stream. A part holds its own state and reaches everything else
through its host, on the coordinator's thread only; each part's Host says what it uses."""

from __future__ import annotations

from typing import Protocol

from engine.base.events import Event
from engine.journal import Journal
from engine.loop.loop_state import LoopState, Snapshot
from engine.workspace import Workspace


class LoopHost(Protocol):
    loop: LoopState
    journal: Journal
    workspace: Workspace
    settings: object                 # engine.session.SessionSettings (a floor up)
    snapshot: Snapshot

    def emit(self, event: Event) -> None: ...

    def notice(self, level: str, message: str, hint: str = "") -> None: ...
