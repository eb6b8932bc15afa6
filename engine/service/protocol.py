"""The engine service's wire protocol: newline-delimited JSON over a Unix socket.

Every line is one message: `{"kind": ..., ...fields}`. The two ends first exchange a
`Hello` carrying PROTOCOL_VERSION; a mismatch is refused with both versions named. Then the
engine sends a `Snapshot` (what a new screen needs), then `EventMessage`s; the client sends
commands (engine/base/commands.py) in `Request`s, each answered by one `Reply` with its
`request_id`.

(De)serialization is generic: a dataclass becomes a dict of its fields, an Enum its value;
decoding follows the type hints, so nested records and enums come back typed. Engine events
are found by their `type` ClassVar among all subclasses of `engine.base.events.Event`, so a new
event class crosses the socket with no change here.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar

from engine.base.commands import COMMANDS, Command
from engine.base.events import Event
from engine.base.view import View

PROTOCOL_VERSION = 2


class ProtocolError(Exception):
    """A line that is not a message of this protocol; the message says what is wrong."""


# ---------------------------------------------------------------------- generic values


def to_plain(value: Any) -> Any:
    """A JSON-ready copy of `value`: dataclasses as dicts of fields, enums as values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, float) and value != value:     # NaN is not JSON
        return None
    return value


def from_plain(hint: Any, value: Any) -> Any:
    """`value` (parsed JSON) rebuilt as the type `hint` names."""
    if value is None or hint is Any:
        return value
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        return from_plain(options[0], value) if len(options) == 1 else value
    if origin in (list, tuple, dict):
        args = typing.get_args(hint)
        if origin is dict:
            return {k: from_plain(args[1] if args else Any, v) for k, v in value.items()}
        if origin is tuple and args and args[-1] is not Ellipsis:
            return tuple(from_plain(a, v) for a, v in zip(args, value))
        items = [from_plain(args[0] if args else Any, v) for v in value]
        return tuple(items) if origin is tuple else items
    if isinstance(hint, type):
        if dataclasses.is_dataclass(hint):
            return _dataclass_from_plain(hint, value)
        if issubclass(hint, Enum):
            return hint(value)
        if issubclass(hint, Path):
            return Path(value)
        if hint is float and isinstance(value, int):
            return float(value)
    return value


_HINTS: dict[type, dict[str, Any]] = {}


def _dataclass_from_plain(cls: type, value: dict) -> Any:
    if not isinstance(value, dict):
        raise ProtocolError(f"{cls.__name__} must be a JSON object, not {type(value).__name__}")
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    try:
        return cls(**{k: from_plain(hints[k], v) for k, v in value.items() if k in known})
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"bad {cls.__name__}: {exc}") from exc


def event_classes() -> dict[str, type[Event]]:
    """Every Event subclass defined so far, by its `type` ClassVar."""
    found: dict[str, type[Event]] = {}
    pending = [Event]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls is not Event:
            found[cls.type] = cls
    return found


def encode_event(event: Event) -> dict:
    return {"type": event.type, **to_plain(event)}


def decode_event(value: dict) -> Event:
    cls = event_classes().get(value.get("type"))
    if cls is None:
        raise ProtocolError(f"unknown event type {value.get('type')!r}")
    return _dataclass_from_plain(cls, value)


# ---------------------------------------------------------------------- messages


@dataclass
class Hello:
    """The first line each end sends."""

    kind: ClassVar[str] = "hello"
    version: int
    role: str                          # "engine" | "client"
    read_only: bool = False            # a client that may watch but not decide
    workspace: str = ""                # the engine's workspace root


@dataclass
class Refused:
    """The connection is not served, and why; the engine closes it after this line."""

    kind: ClassVar[str] = "refused"
    message: str


@dataclass
class Snapshot:
    """What a client needs to draw the whole screen on attach (and again on a resync)."""

    kind: ClassVar[str] = "snapshot"
    view: View
    workspace: str                     # the engine's workspace root
    targets: list[str]                 # the files the agent may edit
    resync: bool = False               # True: sent because this client fell behind


@dataclass
class EventMessage:
    kind: ClassVar[str] = "event"
    event: Event


@dataclass
class Reply:
    """The answer to one command: ok (with a value for queries), or the engine's refusal."""

    kind: ClassVar[str] = "reply"
    request_id: int
    ok: bool
    value: Any = None
    error: str = ""
    refusal: str = ""                  # "patch" (with `rule`) | "refused" | "internal"
    rule: str = ""


@dataclass
class Request:
    """A command (engine/base/commands.py, the one definition) on its way to the engine;
    the Reply carries the same request_id."""

    kind: ClassVar[str] = "command"
    request_id: int
    command: Command


MESSAGES = {cls.kind: cls for cls in (Hello, Refused, Snapshot, EventMessage, Reply)}


def encode(message) -> bytes:
    """One message as one line of JSON, newline included."""
    if isinstance(message, EventMessage):
        body = {"kind": "event", "event": encode_event(message.event)}
    elif isinstance(message, Request):
        body = {"kind": "command", "request_id": message.request_id,
                "name": type(message.command).__name__,
                "arguments": to_plain(message.command.arguments())}
    else:
        body = {"kind": message.kind, **to_plain(message)}
    return (json.dumps(body, ensure_ascii=False, allow_nan=False, default=str) + "\n").encode()


def decode(line: bytes | str):
    """The message on one line; ProtocolError says what is wrong with a bad one."""
    try:
        body = json.loads(line)
    except ValueError as exc:
        raise ProtocolError(f"not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ProtocolError("a message must be a JSON object")
    kind = body.get("kind")
    if kind == "event":
        return EventMessage(decode_event(body.get("event") or {}))
    if kind == "command":
        cls = COMMANDS.get(body.get("name"))
        if cls is None:
            raise ProtocolError(f"unknown command {body.get('name')!r}; known: "
                                f"{', '.join(sorted(COMMANDS))}")
        return Request(body.get("request_id", 0),
                       _dataclass_from_plain(cls, body.get("arguments") or {}))
    cls = MESSAGES.get(kind)
    if cls is None:
        raise ProtocolError(f"unknown message kind {kind!r}")
    return _dataclass_from_plain(cls, body)


def version_mismatch(ours: int, theirs: int, we: str, they: str) -> str:
    """The one sentence both ends show when their protocol versions differ."""
    return (f"protocol version mismatch: the {they} speaks pairlab protocol v{theirs}, "
            f"the {we} speaks v{ours}; run the same pairlab for both (restart the engine "
            f"with `pairlab stop`, then `pairlab`)")
