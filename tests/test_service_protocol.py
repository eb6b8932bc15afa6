"""The wire protocol: every event, command and reply survives a round trip as one JSON line,
typed (nested records and enums come back as themselves), and bad lines say what is wrong."""

from __future__ import annotations

import dataclasses
import enum
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest

from engine.base.commands import COMMANDS
from engine.base.events import EVENT_TYPES, Event, RunStarted
from engine.base.records import Experiment, Proposal, ProposalState, RunStatus, Usage
from engine.service import protocol as proto


def sample(hint, depth: int = 0):
    """A value of type `hint` with nothing left at its default: each field is exercised."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return sample(next(a for a in typing.get_args(hint) if a is not type(None)), depth)
    if origin is list:
        return [sample(typing.get_args(hint)[0], depth + 1), sample(typing.get_args(hint)[0], depth + 1)]
    if origin is tuple:
        args = typing.get_args(hint)
        if args[-1] is Ellipsis:
            return (sample(args[0], depth + 1), sample(args[0], depth + 1))
        return tuple(sample(a, depth + 1) for a in args)
    if origin is dict:
        key, value = typing.get_args(hint)
        return {"train.py": sample(value, depth + 1)}
    if hint is dict:
        return {"name": "cuda:0", "util": 97.5, "nested": [1, 2]}
    if hint is Any:
        return {"any": [1, "two"]}
    if hint is bool:
        return True
    if hint is int:
        return 7 + depth
    if hint is float:
        return 1.25 + depth
    if hint is str:
        return f"text ünïcode\n\"quoted\" {depth}"
    if hint is Path:
        return Path("/tmp/x.log")
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return list(hint)[-1]
    if dataclasses.is_dataclass(hint):
        hints = typing.get_type_hints(hint)
        return hint(**{f.name: sample(hints[f.name], depth + 1)
                       for f in dataclasses.fields(hint) if f.init})
    raise AssertionError(f"no sample for {hint!r}")


def round_trip(message):
    line = proto.encode(message)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    return proto.decode(line)


@pytest.mark.parametrize("event_class", sorted(proto.event_classes().values(),
                                               key=lambda c: c.type), ids=lambda c: c.type)
def test_every_event_class_round_trips_typed(event_class):
    event = sample(event_class)
    back = round_trip(proto.EventMessage(event))
    assert isinstance(back, proto.EventMessage)
    assert type(back.event) is event_class
    assert back.event == event


def test_the_registry_holds_every_engine_event():
    assert set(EVENT_TYPES.items()) <= set(proto.event_classes().items())


def test_a_new_event_class_crosses_with_no_protocol_change():
    @dataclass
    class DraftRetried(Event):
        type: ClassVar[str] = "test_draft_retried"
        attempt: int
        status: RunStatus
        proposal: Proposal | None = None

    event = DraftRetried(2, RunStatus.CRASH, sample(Proposal), at=5.0)
    back = round_trip(proto.EventMessage(event)).event
    assert type(back) is DraftRetried and back == event
    assert isinstance(back.proposal.usage, Usage) and back.proposal.state is list(ProposalState)[-1]


def test_nan_becomes_null_not_invalid_json():
    line = proto.encode(proto.EventMessage(RunStarted("r1", 1, None, "c", "d", float("nan"), "p")))
    assert json.loads(line)["event"]["budget_s"] is None


@pytest.mark.parametrize("command_class", COMMANDS.values(), ids=lambda c: c.__name__)
def test_every_command_round_trips_in_a_request(command_class):
    command = sample(command_class)
    back = round_trip(proto.Request(41, command))
    assert back.request_id == 41
    assert type(back.command) is command_class and back.command == command


def test_snapshot_and_reply_round_trip_with_nested_records():
    snapshot = sample(proto.Snapshot)
    back = round_trip(snapshot)
    assert back == snapshot
    view = back.view
    assert isinstance(view.current_run, RunStarted) and isinstance(view.runs, tuple)
    assert isinstance(view.experiments[0], Experiment) and view.experiments[0].status is list(RunStatus)[-1]
    assert isinstance(view.best, tuple) and view.best == snapshot.view.best
    assert view.draft.reasoning == snapshot.view.draft.reasoning
    reply = proto.Reply(3, False, error="#7 was already accepted from another client",
                        refusal="refused")
    assert round_trip(reply) == reply


def test_hello_carries_the_version():
    hello = round_trip(proto.Hello(proto.PROTOCOL_VERSION, "client", read_only=True))
    assert hello == proto.Hello(proto.PROTOCOL_VERSION, "client", read_only=True)


@pytest.mark.parametrize("line, message", [
    (b"{not json", "not JSON"),
    (b"[1, 2]", "a message must be a JSON object"),
    (b'{"kind": "gossip"}', "unknown message kind 'gossip'"),
    (b'{"kind": "command", "name": "format_disk"}', "unknown command 'format_disk'; known: Accept"),
    (b'{"kind": "event", "event": {"type": "nope"}}', "unknown event type 'nope'"),
    (b'{"kind": "command", "name": "Accept"}', "bad Accept"),
])
def test_bad_lines_are_refused_with_what_is_wrong(line, message):
    with pytest.raises(proto.ProtocolError, match=message.replace("(", r"\(")):
        proto.decode(line)


def test_version_mismatch_names_both_versions():
    text = proto.version_mismatch(1, 2, we="engine", they="client")
    assert "the client speaks pairlab protocol v2" in text and "the engine speaks v1" in text
