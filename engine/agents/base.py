"""What every agent gets and gives: a DraftContext in, a Draft out, reasoning streamed."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from engine.base.records import Draft, HistoryItem

# emit(kind, text): kind is "thinking", "text" or "tool"
Emit = Callable[[str, str], None]
# validate(new_files) -> None when acceptable, else a precise message for the model
Validate = Callable[[dict[str, str]], "str | None"]


class AgentError(Exception):
    """A failure the user must see, with what they can do about it."""

    def __init__(self, message: str, hint: str = "", retryable: bool = False):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.retryable = retryable


class DraftCancelled(Exception):
    """The session asked the agent to stop drafting (shutdown, or the best moved on)."""


@dataclass
class DraftContext:
    workspace: Path
    targets: list[str]
    files: dict[str, str]            # target path -> text at base_commit
    base_commit: str
    program: str                     # program.md
    harness_source: str              # read-only context for the agent
    history: list[HistoryItem] = field(default_factory=list)
    best_val_bpb: float | None = None
    noise_floor: float | None = None
    validate: Validate = lambda files: None
    feedback: str = ""               # notes from the engine: a stale draft, a human's edit
    in_flight: list[HistoryItem] = field(default_factory=list)   # pending, queued, training


class Agent(Protocol):
    name: str

    def draft(self, ctx: DraftContext, emit: Emit, cancel: threading.Event) -> Draft:
        ...
