"""Commands: the one vocabulary of what a client can ask the engine, and the refusal a
command can get.

Each command is one dataclass here. The coordinator applies those that change the loop, one
at a time, between worker results (engine/loop/decisions.py holds their handlers); the
session answers the queries (`decides` False) from its reads. The same objects cross the
socket (engine/service/protocol.py encodes them generically, by class name), are built by
`Controls`' methods for the app and scripts, and by `parse` from a line of headless stdin.
The caller waits on `reply` and gets the result or the refusal; `str()` of a refusal is
the message for the user.
"""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar


class CommandRefused(ValueError):
    """A command that cannot be applied now; the message says why and what to do."""


@dataclass
class Command:
    verb: ClassVar[str] = ""         # its word on headless stdin
    decides: ClassVar[bool] = True   # False: a query, which a read-only client may send
    reply: Future = field(default_factory=Future, init=False, repr=False, compare=False)

    def words(self) -> str:
        """The command in words for a message: SetMode -> "set mode"."""
        return re.sub(r"(?<!^)(?=[A-Z])", " ", type(self).__name__).lower()

    def arguments(self) -> dict:
        """Its fields, as sent: the reply is the caller's."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}


@dataclass
class Accept(Command):
    verb: ClassVar[str] = "accept"
    proposal_id: int
    who: str = "human"


@dataclass
class Veto(Command):
    verb: ClassVar[str] = "veto"
    proposal_id: int
    reason: str


@dataclass
class Edit(Command):
    verb: ClassVar[str] = "edit"
    proposal_id: int
    files: dict[str, str]
    base_commit: str | None = None   # the commit the editor opened on; None: the current base


@dataclass
class Pause(Command):
    verb: ClassVar[str] = "pause"
    reason: str = "paused by the user"


@dataclass
class Resume(Command):
    verb: ClassVar[str] = "resume"


@dataclass
class KillRun(Command):
    verb: ClassVar[str] = "kill"


@dataclass
class SetMode(Command):
    verb: ClassVar[str] = "mode"
    mode: str


@dataclass
class Note(Command):
    verb: ClassVar[str] = "note"
    text: str


@dataclass
class EditProgram(Command):
    verb: ClassVar[str] = "program"
    text: str                        # the whole new program.md


@dataclass
class Stop(Command):
    verb: ClassVar[str] = "stop"
    reason: str = "stopped by the user"


@dataclass
class ProposalText(Command):
    """A file as a proposal would leave it (its own text, else its base's)."""

    verb: ClassVar[str] = "text"
    decides: ClassVar[bool] = False
    proposal_id: int
    path: str


@dataclass
class LogPath(Command):
    verb: ClassVar[str] = "log"
    decides: ClassVar[bool] = False
    experiment_id: int


@dataclass
class Summary(Command):
    verb: ClassVar[str] = "summary"
    decides: ClassVar[bool] = False


COMMANDS: dict[str, type[Command]] = {cls.__name__: cls for cls in (
    Accept, Veto, Edit, Pause, Resume, KillRun, SetMode, Note, EditProgram, Stop,
    ProposalText, LogPath, Summary)}
BY_VERB = {cls.verb: cls for cls in COMMANDS.values()}


class Controls:
    """Every command as a method, for each facade of the engine alike (the in-process
    Session, the socket's EngineClient): a method builds its command and sends it."""

    def send(self, command: Command):
        raise NotImplementedError

    def accept(self, proposal_id: int) -> None:
        self.send(Accept(proposal_id))

    def veto(self, proposal_id: int, reason: str) -> None:
        self.send(Veto(proposal_id, reason))

    def edit(self, proposal_id: int, files: dict[str, str],
             base_commit: str | None = None) -> None:
        """Replace the agent's files with the human's; base_commit is the commit the editor
        opened on (None: the proposal's current base)."""
        self.send(Edit(proposal_id, files, base_commit))

    def pause(self, reason: str = Pause.reason) -> None:
        self.send(Pause(reason))

    def resume(self) -> None:
        self.send(Resume())

    def kill_run(self) -> bool:
        return bool(self.send(KillRun()))

    def set_mode(self, mode: str) -> None:
        self.send(SetMode(mode))

    def note(self, text: str) -> int:
        """A steering note for the agent's next draft; returns its id in the journal."""
        return self.send(Note(text))

    def edit_program(self, text: str) -> str | None:
        """The human's program.md: the agent's next draft is told; committed on the research
        branch as a human change (returns the commit), or once the run in flight ends (None)."""
        return self.send(EditProgram(text))

    def proposal_text(self, proposal_id: int, path: str) -> str:
        return self.send(ProposalText(proposal_id, path))

    def log_path(self, experiment_id: int) -> Path:
        return Path(self.send(LogPath(experiment_id)))

    def summary(self) -> str:
        return self.send(Summary())


def usage(cls: type[Command]) -> str:
    """The command's line on stdin: `veto PROPOSAL_ID REASON...`."""
    words = [cls.verb]
    for f in dataclasses.fields(cls):
        if f.init:
            optional = f.default is not dataclasses.MISSING
            word = f.name.upper() + ("..." if _hint(cls, f.name) is str else "")
            words.append(f"[{word}]" if optional else word)
    return " ".join(words)


def parse(line: str) -> Command:
    """The command a line of headless stdin names: the verb, then its fields in order; the
    last text field takes the rest of the line, a dict field is JSON. ValueError says what
    is wrong, with the command's usage."""
    verb, _, rest = line.strip().partition(" ")
    cls = BY_VERB.get(verb.lower())
    if cls is None:
        raise ValueError(f"unknown command {verb!r}; "
                         f"commands: {' | '.join(usage(c) for c in COMMANDS.values())}")
    fields = [f for f in dataclasses.fields(cls) if f.init]
    values, rest = {}, rest.strip()
    for index, f in enumerate(fields):
        if not rest:
            if f.default is dataclasses.MISSING:
                raise ValueError(f"{verb}: {f.name} is missing; usage: {usage(cls)}")
            break
        hint = _hint(cls, f.name)
        last_text = hint is str and all(_hint(cls, g.name) is not str for g in fields[index + 1:])
        if last_text:
            values[f.name], rest = rest, ""
        elif typing.get_origin(hint) is dict:
            values[f.name], rest = _json_object(rest, f.name, cls)
        else:
            word, _, rest = rest.partition(" ")
            try:
                values[f.name] = int(word) if hint is int else word
            except ValueError:
                raise ValueError(f"{verb}: {f.name} must be a number, not {word!r}; "
                                 f"usage: {usage(cls)}") from None
            rest = rest.strip()
    if rest:
        raise ValueError(f"{verb}: unexpected {rest!r}; usage: {usage(cls)}")
    return cls(**values)


def _hint(cls: type, name: str):
    return typing.get_type_hints(cls)[name]


def _json_object(text: str, name: str, cls: type) -> tuple[dict, str]:
    try:
        value, end = json.JSONDecoder().raw_decode(text)
    except ValueError as exc:
        raise ValueError(f"{cls.verb}: {name} must be a JSON object ({exc}); "
                         f"usage: {usage(cls)}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{cls.verb}: {name} must be a JSON object; usage: {usage(cls)}")
    return value, text[end:].strip()


@dataclass
class ClientsAttached:
    """From the service, not a client: how many attached clients may decide (not read-only).
    With none in auto mode, nobody can press a key: a failure the loop cannot go on from
    ends the engine instead of pausing it."""

    deciding: int
