"""A client of the engine service with the Session facade's getters and commands, so the
app (and scripts) run the same on a Client as on an in-process Session.

The client keeps a mirror of the engine's screen state (engine/service/mirror.py): the
snapshot it got on attach, brought up to date by each event. Commands go over the socket
and return when the engine answered; a refusal raises with the engine's message (a refused
patch as PatchRefused).
Subscribers get the engine's events on the client's reader thread, plus two of the
client's own: `Resynced` (a fresh snapshot replaced the mirror) and `EngineLost`.
"""

from __future__ import annotations

import itertools
import socket
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar

from engine.base.commands import Command, CommandRefused, Controls, Stop
from engine.service import protocol as proto
from engine.base.events import Event
from engine.workspace.patch import PatchRefused
from engine.service.address import ServiceError, reachable
from engine.service.mirror import MirrorMixin

REPLY_TIMEOUT_S = 120.0                 # a stop waits for the run in flight to be killed
BACKLOG_EVENTS = 10_000                 # kept for the first subscriber, at most


class EngineFailed(CommandRefused):
    """The command raised an unexpected error inside the engine (its log has the trace)."""


@dataclass
class Resynced(Event):
    """The client's mirror was replaced by a fresh snapshot (it had fallen behind)."""

    type: ClassVar[str] = "client_resynced"


@dataclass
class EngineLost(Event):
    """The connection to the engine ended. `stopped`: after the loop stopped as asked;
    otherwise the engine died (killed, crashed, or its machine went away)."""

    type: ClassVar[str] = "client_engine_lost"
    stopped: bool
    message: str


def connect(path: Path, read_only: bool = False, timeout: float = 10.0) -> "EngineClient":
    """Attach to the engine serving `path`; ServiceError if none does, or it refuses."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        with reachable(Path(path)) as address:
            sock.connect(address)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        sock.close()
        raise ServiceError(f"no engine is running (nothing listens on {path})") from exc
    except OSError:
        sock.close()
        raise
    try:
        return EngineClient(sock, read_only)
    except BaseException:
        sock.close()
        raise


class EngineClient(MirrorMixin, Controls):
    def __init__(self, sock: socket.socket, read_only: bool = False):
        self.read_only = read_only
        self._sock = sock
        self._reader = sock.makefile("rb")
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._waiting: dict[int, tuple[threading.Event, list]] = {}
        self._subscribers: list[Callable[[Event], None]] = []
        # Events that came before anyone subscribed (while the app starts), handed to the
        # first subscriber so that nothing between the snapshot and the screen is missed.
        self._backlog: list[Event] | None = []
        self._delivering = threading.RLock()  # the backlog goes out before newer events
        self._workspace_handle = None
        self._lost = threading.Event()
        self._stop_seen = False
        self._handshake()
        sock.settimeout(None)
        threading.Thread(target=self._read_loop, name="pairlab-client-reader",
                         daemon=True).start()

    # ------------------------------------------------------------------ connection

    def _handshake(self) -> None:
        hello = self._next_message()
        if isinstance(hello, proto.Refused):
            raise ServiceError(hello.message)
        if not isinstance(hello, proto.Hello):
            raise ServiceError("the engine did not greet with a hello")
        if hello.version != proto.PROTOCOL_VERSION:
            raise ServiceError(proto.version_mismatch(proto.PROTOCOL_VERSION, hello.version,
                                                      we="client", they="engine"))
        self._send(proto.Hello(proto.PROTOCOL_VERSION, "client", read_only=self.read_only))
        snapshot = self._next_message()
        if isinstance(snapshot, proto.Refused):
            raise ServiceError(snapshot.message)
        if not isinstance(snapshot, proto.Snapshot):
            raise ServiceError(f"expected a snapshot from the engine, got {snapshot!r}")
        self._load(snapshot)

    def _next_message(self):
        line = self._reader.readline()
        if not line:
            raise ServiceError("the engine closed the connection during the handshake")
        return proto.decode(line)

    def _send(self, message) -> None:
        with self._send_lock:
            self._sock.sendall(proto.encode(message))

    def close(self) -> None:
        """Detach: the engine and its loop go on."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()

    def _read_loop(self) -> None:
        try:
            while True:
                line = self._reader.readline()
                if not line:
                    break
                message = proto.decode(line)
                if isinstance(message, proto.Reply):
                    self._answer(message)
                elif isinstance(message, proto.EventMessage):
                    self._apply(message.event)
                    self._emit(message.event)
                elif isinstance(message, proto.Snapshot):
                    self._load(message)
                    self._emit(Resynced())
        except (OSError, ValueError, proto.ProtocolError):
            pass
        finally:
            self._lost.set()
            with self._lock:
                waiting = list(self._waiting.values())
            for done, _ in waiting:
                done.set()
            if self._stop_seen:
                message = "the engine stopped"
            else:
                message = (f"the engine is gone (killed or crashed); its log is "
                           f"{Path(self._workspace) / '.pairlab' / 'engine.log'}")
            self._emit(EngineLost(self._stop_seen, message))

    @property
    def connected(self) -> bool:
        return not self._lost.is_set()

    # ------------------------------------------------------------------ events

    def subscribe(self, callback: Callable[[Event], None]) -> None:
        with self._delivering:
            with self._lock:
                backlog, self._backlog = self._backlog or [], None
                self._subscribers.append(callback)
            for event in backlog:
                callback(event)

    def _emit(self, event: Event) -> None:
        with self._lock:
            if self._backlog is not None:
                if len(self._backlog) < BACKLOG_EVENTS:
                    self._backlog.append(event)
                return
            subscribers = list(self._subscribers)
        with self._delivering:
            for callback in subscribers:
                try:
                    callback(event)
                except Exception as exc:      # a broken subscriber must not end the reading
                    print(f"pairlab: event subscriber failed: {exc!r}", file=sys.stderr)

    # ------------------------------------------------------------------ commands

    def send(self, command: Command):
        """The command to the engine, and its reply's value; a refusal raises, as the
        Session's does."""
        if self._lost.is_set():
            raise CommandRefused("not connected: the engine is gone")
        request = proto.Request(next(self._ids), command)
        done, answer = threading.Event(), []
        with self._lock:
            self._waiting[request.request_id] = (done, answer)
        try:
            self._send(request)
            if not done.wait(REPLY_TIMEOUT_S):
                raise CommandRefused(f"{command.words()}: the engine did not answer in "
                                     f"{REPLY_TIMEOUT_S:g} s")
        except OSError as exc:
            raise CommandRefused(f"not connected: {exc}") from exc
        finally:
            with self._lock:
                self._waiting.pop(request.request_id, None)
        if not answer:
            raise CommandRefused("the engine went away before it answered")
        reply: proto.Reply = answer[0]
        if reply.ok:
            return reply.value
        if reply.refusal == "patch":
            raise PatchRefused(reply.rule, reply.error)
        if reply.refusal == "internal":
            raise EngineFailed(reply.error)
        raise CommandRefused(reply.error)

    def _answer(self, reply: proto.Reply) -> None:
        with self._lock:
            waiter = self._waiting.get(reply.request_id)
        if waiter is not None:
            waiter[1].append(reply)
            waiter[0].set()

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the engine's loop (not just this client): returns once it has stopped and
        the engine let go of the connection, or after timeout seconds."""
        self.send(Stop())
        self._lost.wait(timeout)

    def start(self) -> None:
        """The engine's loop already runs: nothing to start from a client."""

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the connection ends (the engine stopped or died). True if it did."""
        return self._lost.wait(timeout)

    @property
    def stopped(self) -> bool:
        return self._stop_seen or self._lost.is_set()

    @property
    def workspace(self):
        """The engine's workspace, opened here (same machine, same user)."""
        from engine.workspace import Workspace
        if self._workspace_handle is None:
            self._workspace_handle = Workspace.open(self._workspace)
        return self._workspace_handle
