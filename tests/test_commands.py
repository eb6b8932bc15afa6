"""One vocabulary: every command is one dataclass (engine/base/commands.py), and from that
definition alone it has a handler, crosses the socket, is a method of both facades of the
engine and is a line of headless stdin. A new command that misses any of these fails here."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from engine.base import commands
from engine.base.commands import COMMANDS, Command, Controls
from engine.loop.decisions import HANDLERS
from engine.service import protocol as proto
from engine.service.client import EngineClient
from engine.session import QUERIES, Session
from tests.test_service_protocol import sample


class Recorder(Controls):
    def __init__(self):
        self.sent: list[Command] = []

    def send(self, command):
        self.sent.append(command)
        return "/tmp/log" if isinstance(command, commands.LogPath) else None


EACH = pytest.mark.parametrize("cls", COMMANDS.values(), ids=lambda c: c.__name__)


@EACH
def test_each_command_has_one_handler(cls):
    if cls.decides:
        assert cls in set(HANDLERS) and cls not in QUERIES
    else:
        assert cls in QUERIES and cls not in set(HANDLERS)


@EACH
def test_each_command_crosses_the_socket_as_itself(cls):
    command = sample(cls)
    back = proto.decode(proto.encode(proto.Request(3, command)))
    assert type(back.command) is cls and back.command == command


@EACH
def test_each_command_is_a_method_of_both_facades(cls):
    if cls is commands.Stop:       # each facade's stop(timeout): it waits for the end its way
        assert "stop" in vars(Session) and "stop" in vars(EngineClient)
        return
    command = sample(cls)
    methods = [name for name, member in vars(Controls).items()
               if callable(member) and name != "send" and not name.startswith("_")]
    recorder = Recorder()
    for name in methods:
        parameters = list(inspect.signature(getattr(Controls, name)).parameters)[1:]
        if parameters != [f.name for f in dataclasses.fields(cls) if f.init][:len(parameters)]:
            continue
        recorder.sent.clear()
        getattr(recorder, name)(*(getattr(command, p) for p in parameters))
        if recorder.sent and type(recorder.sent[0]) is cls:
            assert recorder.sent[0] == commands.COMMANDS[cls.__name__](
                **{p: getattr(command, p) for p in parameters})
            break
    else:
        raise AssertionError(f"no method of Controls sends {cls.__name__}")
    assert issubclass(Session, Controls) and issubclass(EngineClient, Controls)
    assert "send" in vars(Session) and "send" in vars(EngineClient)


def stdin_line(command: Command) -> str:
    words = [command.verb]
    for f in dataclasses.fields(command):
        value = getattr(command, f.name) if f.init else None
        if value is None:
            continue
        words.append(proto.json.dumps(value) if isinstance(value, dict) else str(value))
    return " ".join(words)


@EACH
def test_each_command_is_a_line_of_headless_stdin(cls):
    command = sample(cls)
    for f in dataclasses.fields(command):             # one line: words without newlines
        if isinstance(getattr(command, f.name, None), str):
            setattr(command, f.name, f"{f.name}-value")
    assert commands.parse(stdin_line(command)) == command


@pytest.mark.parametrize("line, error", [
    ("accept seven", "accept: proposal_id must be a number, not 'seven'; usage: accept PROPOSAL_ID"),
    ("veto", "veto: proposal_id is missing; usage: veto PROPOSAL_ID REASON..."),
    ("veto 3 too slow, and noisy", None),
    ("edit 3 [1]", "edit: files must be a JSON object; usage: edit PROPOSAL_ID FILES"),
    ("resume now", "resume: unexpected 'now'; usage: resume"),
    ("format /", "unknown command 'format'; commands: accept PROPOSAL_ID"),
])
def test_a_bad_line_says_what_is_wrong_with_the_usage(line, error):
    if error is None:                                  # the last text field takes the rest
        assert commands.parse(line) == commands.Veto(3, "too slow, and noisy")
        return
    with pytest.raises(ValueError) as refused:
        commands.parse(line)
    assert str(refused.value).startswith(error)


def test_the_verbs_and_class_names_are_unique():
    assert len({cls.verb for cls in COMMANDS.values()}) == len(COMMANDS)
    assert all(name == cls.__name__ for name, cls in COMMANDS.items())
