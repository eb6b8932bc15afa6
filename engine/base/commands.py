"""Commands a client sends the coordinator, and the refusal a command can get.

A command is applied by the coordinator thread, one at a time, between worker results; the
caller waits on `reply` and gets the result or the refusal. `str()` of a refusal is the
message for the user.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field


class CommandRefused(ValueError):
    """A command that cannot be applied now; the message says why and what to do."""


@dataclass
class Command:
    reply: Future = field(default_factory=Future, init=False, repr=False, compare=False)


@dataclass
class Accept(Command):
    proposal_id: int
    who: str = "human"


@dataclass
class Veto(Command):
    proposal_id: int
    reason: str


@dataclass
class Edit(Command):
    proposal_id: int
    files: dict[str, str]
    base_commit: str | None = None   # the commit the editor opened on; None: the current base


@dataclass
class Pause(Command):
    reason: str = "paused by the user"


@dataclass
class Resume(Command):
    pass


@dataclass
class KillRun(Command):
    pass


@dataclass
class SetMode(Command):
    mode: str


@dataclass
class Note(Command):
    text: str


@dataclass
class EditProgram(Command):
    text: str                        # the whole new program.md


@dataclass
class Stop(Command):
    reason: str = "stopped by the user"


@dataclass
class ClientsAttached:
    """From the service, not a client: how many attached clients may decide (not read-only).
    With none in auto mode, nobody can press a key: a failure the loop cannot go on from
    ends the engine instead of pausing it."""

    deciding: int
