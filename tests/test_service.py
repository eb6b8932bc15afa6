"""The engine service on real Unix sockets, over a real Session (real git workspace, real
SQLite journal) that is not started: its controls emit real events without training."""

from __future__ import annotations

import os
import re
import socket
import stat
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from engine.agents.tuner import TunerAgent
from engine.base.events import StateChanged
from engine.service import peers as service_peers
from engine.base.commands import Summary
from engine.service import protocol as proto
from engine.service.client import CommandRefused, EngineClient, EngineLost, connect
from engine.service.server import EngineLock, EngineService, ServiceError, reachable, socket_path
from engine.session import Session, SessionSettings
from engine.workspace import init

OTHER_UID = 65534                      # nobody


@pytest.fixture
def served(tmp_path):
    """(session, service) on a fresh workspace; the service closed afterwards."""
    workspace = init(tmp_path / "ws", tag="test")
    session = Session(workspace, TunerAgent(), SessionSettings(), monitor=False)
    services = []

    def serve(**options):
        service = EngineService(session, socket_path(workspace.pairlab_dir), **options)
        service.start()
        services.append(service)
        return session, service

    yield serve
    for service in services:
        service.close()
    session.journal.close()


class RawPeer:
    """A hand-driven client: reads and writes protocol lines itself."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with reachable(path) as address:
            self.sock.connect(address)
        self.reader = self.sock.makefile("rb")

    def read(self):
        line = self.reader.readline()
        return proto.decode(line) if line else None

    def send(self, message) -> None:
        self.sock.sendall(proto.encode(message))

    def close(self) -> None:
        self.sock.close()


def test_the_socket_is_the_owners_only(served):
    session, service = served()
    assert stat.S_IMODE(service.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(service.path.parent.stat().st_mode) == 0o700
    assert stat.S_ISSOCK(service.path.stat().st_mode)


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to connect as another uid")
def test_another_uid_is_refused_by_its_peer_credentials(served):
    """Even with the modes loosened, a connection from another uid is refused, with why."""
    session, service = served()
    service.path.parent.chmod(0o711)
    service.path.chmod(0o666)
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:                                    # the other user
        try:
            os.close(read_end)
            os.chdir(service.path.parent)   # the tmp dirs above are not its to traverse
            os.setgid(OTHER_UID)
            os.setuid(OTHER_UID)
            peer = RawPeer(Path(service.path.name))
            first = peer.reader.readline()
            rest = peer.reader.readline()             # the engine hangs up after saying why
            os.write(write_end, first + (b"EOF" if rest == b"" else b"MORE"))
        except BaseException as exc:                  # report, never run pytest's teardown
            os.write(write_end, f"child failed: {exc!r}".encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        said = pipe.read()
    os.waitpid(child, 0)
    message = proto.decode(said.removesuffix(b"EOF"))
    assert said.endswith(b"EOF"), said
    assert isinstance(message, proto.Refused)
    assert message.message == (f"connection refused: this engine belongs to uid {os.getuid()}, "
                               f"and uid {OTHER_UID} may not attach to it")
    assert service.client_count() == 0


# A client written by hand, as train.py would: the first line it gets, and whether more came.
PEER = textwrap.dedent('''
    import os, socket, sys
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    os.chdir(os.path.dirname(sys.argv[1]))
    sock.connect(os.path.basename(sys.argv[1]))
    lines = sock.makefile("rb")
    print(lines.readline().decode().strip(), flush=True)
    try:            # the engine hangs up after saying why: a reset is its end too
        sock.sendall(b'{"kind": "hello", "version": 1, "role": "client"}\\n')
        more = lines.readline()
    except (BrokenPipeError, ConnectionResetError):
        more = b""
    print("EOF" if more == b"" else "MORE")
''')


def test_a_process_the_engine_started_is_refused(served):
    """A training run is the owner's too: a process that descends from the engine (here, the
    test process serving it) is told why and disconnected."""
    session, service = served()
    proc = subprocess.run([sys.executable, "-c", PEER, str(service.path)], capture_output=True,
                          text=True, timeout=60)
    said, more = proc.stdout.splitlines()
    refused = proto.decode(said)
    assert isinstance(refused, proto.Refused) and more == "EOF", proc.stdout + proc.stderr
    assert re.fullmatch(r"connection refused: the peer is a process of one of this engine's "
                        r"runs \(pid \d+\): a run may not drive the engine", refused.message)
    assert service.client_count() == 0


def test_a_process_that_the_engine_did_not_start_is_served(served):
    """The same client, orphaned before it connects (its parent exits, as `pairlab` does when
    it is done), descends from the engine no more: served."""
    session, service = served()
    orphan = ("import os\nparent = os.getpid()\nif os.fork():\n    os._exit(0)\n"
              "while os.getppid() == parent:\n    pass\n" + PEER)
    launcher = subprocess.Popen([sys.executable, "-c", orphan, str(service.path)],
                                stdout=subprocess.PIPE, text=True)
    out, _ = launcher.communicate(timeout=60)
    hello = proto.decode(out.splitlines()[0])
    assert isinstance(hello, proto.Hello) and hello.role == "engine", out


def fake_proc(root: Path, parents: dict[int, int], namespaces: dict[int, str]) -> Path:
    """A /proc with stat and ns/pid for the given pids (self: the engine, pid 10)."""
    for pid, parent in parents.items():
        (root / str(pid) / "ns").mkdir(parents=True)
        (root / str(pid) / "stat").write_text(f"{pid} (a (strange) name) S {parent} 1 1 0\n")
        (root / str(pid) / "ns" / "pid").symlink_to(namespaces.get(pid, "pid:[1]"))
    (root / "self").symlink_to(root / "10")
    return root


@pytest.mark.parametrize("pid, expected", [
    (10, None),                                             # the engine's own threads
    (30, None),                                             # the app: started it, not by it
    (12, "a process of one of this engine's runs (pid 12)"),     # a run's launcher
    (13, "a process of one of this engine's runs (pid 13)"),     # what the run started
    (40, "(pid 40) lives in another PID namespace"),        # another engine's confined run
    (99, "(pid 99) could not be told apart"),               # gone before it was checked
    (0, "(pid 0) could not be told apart"),                 # not in our PID namespace
])
def test_who_may_attach(tmp_path, pid, expected):
    proc = fake_proc(tmp_path, {10: 30, 12: 10, 13: 12, 30: 1, 40: 1},
                     namespaces={40: "pid:[2]"})
    refused = service_peers.refusal(pid, 1000, owner_uid=1000, engine_pid=10, proc=proc)
    assert (refused is None) if expected is None else (expected in refused), refused
    assert service_peers.refusal(10, 1001, owner_uid=1000, engine_pid=10, proc=proc) == (
        "connection refused: this engine belongs to uid 1000, and uid 1001 may not attach to it")


def test_a_client_of_another_version_is_refused_with_both_versions(served):
    session, service = served()
    peer = RawPeer(service.path)
    hello = peer.read()
    assert hello == proto.Hello(proto.PROTOCOL_VERSION, "engine", workspace=str(session.workspace.root))
    peer.send(proto.Hello(proto.PROTOCOL_VERSION + 1, "client"))
    refused = peer.read()
    assert isinstance(refused, proto.Refused)
    assert (f"the client speaks pairlab protocol v{proto.PROTOCOL_VERSION + 1}, the engine "
            f"speaks v{proto.PROTOCOL_VERSION}") in refused.message
    assert peer.read() is None
    peer.close()


def test_the_client_refuses_an_engine_of_another_version():
    ours, theirs = socket.socketpair()
    theirs.sendall(proto.encode(proto.Hello(proto.PROTOCOL_VERSION + 3, "engine")))
    with pytest.raises(ServiceError) as refused:
        EngineClient(ours)
    assert (f"the engine speaks pairlab protocol v{proto.PROTOCOL_VERSION + 3}, the client "
            f"speaks v{proto.PROTOCOL_VERSION}") in str(refused.value)
    ours.close()
    theirs.close()


def test_attach_gets_a_snapshot_then_live_events_and_every_command_a_reply(served):
    session, service = served()
    client = connect(service.path)
    assert client.state == session.state and client.mode == "review"
    assert client.snapshot.workspace == str(session.workspace.root)
    assert client.pending() == [] and client.experiments() == []
    seen = []
    paused = threading.Event()
    client.subscribe(lambda e: (seen.append(e), isinstance(e, StateChanged)
                                and e.state == "paused" and paused.set()))
    client.pause()                     # returns once the engine applied it and answered
    assert session.paused
    assert paused.wait(10) and client.paused
    with pytest.raises(CommandRefused, match=r"^there is no proposal #7"):
        client.accept(7)
    with pytest.raises(CommandRefused, match="mode must be one of"):
        client.set_mode("turbo")
    assert "0 experiments" in client.summary()
    client.close()


def test_a_read_only_client_watches_but_cannot_decide(served):
    session, service = served()
    watcher = connect(service.path, read_only=True)
    for command, name in ((lambda: watcher.pause(), "pause"),
                          (lambda: watcher.accept(1), "accept"),
                          (lambda: watcher.veto(1, "no"), "veto"),
                          (lambda: watcher.set_mode("auto"), "set mode"),
                          (lambda: watcher.stop(), "stop")):
        with pytest.raises(CommandRefused) as refused:
            command()
        assert str(refused.value) == (f"this client is attached read-only and cannot {name}; "
                                      "attach without --read-only to decide")
    assert not session.paused and not session.stopped and session.mode == "review"
    assert "experiments" in watcher.summary()          # asking is fine
    watcher.close()


def test_a_slow_client_never_slows_the_engine_and_is_resynced(served):
    """A client that stops reading: the engine's events keep flowing (its controls return),
    the client's backlog is dropped, and when it reads again it gets a fresh snapshot that
    matches the engine, then live events."""
    session, service = served(queue_lines=20)
    slow = RawPeer(service.path)
    slow.read()
    slow.send(proto.Hello(proto.PROTOCOL_VERSION, "client"))
    assert isinstance(slow.read(), proto.Snapshot)
    # From here the client reads nothing. The engine goes on until the service finds it
    # behind (its socket full, then its queue of 20 lines), which a client that does not
    # read must cause sooner or later; and for a backlog far beyond what a socket holds.
    rounds = 0

    def churn():
        nonlocal rounds
        while (service.resyncs == 0 or rounds < 2000) and rounds < 100_000:
            session.pause("churn")
            session.resume()
            rounds += 1
        session.pause("the last word")

    engine = threading.Thread(target=churn, daemon=True)
    engine.start()
    engine.join(120)                   # a hang guard: the slow client is not reading at all
    assert not engine.is_alive(), "the engine waited for a client that does not read"
    assert service.resyncs >= 1, f"never found behind in {rounds} rounds"

    slow.send(proto.Request(9, Summary()))
    messages = []
    while not isinstance(message := slow.read(), proto.Reply):
        messages.append(message)
    assert message.request_id == 9 and message.ok
    resyncs = [i for i, m in enumerate(messages) if isinstance(m, proto.Snapshot)]
    assert resyncs and all(messages[i].resync for i in resyncs)
    assert len(messages) < rounds                      # the backlog was dropped, not sent
    latest = messages[resyncs[-1]]
    final = [latest.view.state, *(m.event.state for m in messages[resyncs[-1] + 1:]
                             if isinstance(m.event, StateChanged))][-1]
    assert final == session.state == "paused"
    slow.close()


def test_the_connection_end_is_told_to_subscribers(served):
    session, service = served()
    client = connect(service.path)
    lost = []
    done = threading.Event()
    client.subscribe(lambda e: isinstance(e, EngineLost) and (lost.append(e), done.set()))
    service.close()
    assert done.wait(10)
    assert lost[0].stopped is False and "the engine is gone" in lost[0].message
    with pytest.raises(CommandRefused, match="not connected"):
        client.pause()


def test_one_engine_per_workspace(tmp_path):
    workspace = init(tmp_path / "ws", tag="test")
    first = EngineLock(workspace.pairlab_dir)
    first.acquire()
    with pytest.raises(ServiceError, match=rf"an engine already runs for this workspace "
                                           rf"\(pid {os.getpid()}\)"):
        EngineLock(workspace.pairlab_dir).acquire()
    first.release()
    again = EngineLock(workspace.pairlab_dir)
    again.acquire()
    again.release()


def test_no_engine_says_so(tmp_path):
    with pytest.raises(ServiceError, match="no engine is running"):
        connect(tmp_path / "engine.sock")


def test_a_workspace_deeper_than_a_socket_address_is_served(tmp_path):
    """sockaddr_un holds 108 bytes; a deeper .pairlab is reached through /proc/self/fd."""
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    workspace = init(deep / "ws", tag="test")
    session = Session(workspace, TunerAgent(), SessionSettings(), monitor=False)
    service = EngineService(session, socket_path(workspace.pairlab_dir))
    assert len(os.fsencode(service.path)) > 108
    service.start()
    try:
        client = connect(service.path)
        assert client.snapshot.workspace == str(workspace.root)
        client.close()
    finally:
        service.close()
        session.journal.close()
    assert not service.path.exists()
