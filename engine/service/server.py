"""The engine as a service: a Unix socket in `.pairlab/` that clients attach to.

One thread accepts connections; each client gets a reader thread (its commands, run one at
a time, each answered) and a writer thread that drains the client's bounded queue
(engine/service/fanout.py). The engine only ever puts an already-encoded line on each queue
without waiting: a client that falls behind is marked, its queue is dropped and it gets a
fresh snapshot instead, so a slow client never slows the engine.

The socket is the owner's only (mode 0600 in a private directory), and every connection's
peer credentials are checked (engine/service/peers.py): another uid, or a process of one of
the engine's training runs, is told why and disconnected.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import sys
import threading
import traceback
from dataclasses import replace
from pathlib import Path

from engine.service import protocol as proto
from engine.service import peers as service_peers
from engine.base.events import Event
from engine.base.view import View, reduce
from engine.service.address import (LOCK_NAME, LOG_NAME, SOCKET_NAME, ServiceError,  # noqa: F401
                                    reachable, socket_path)
from engine.service.fanout import AttachedClient
from engine.workspace.patch import PatchRefused

# Lines a client may be behind before it is resynced with a snapshot instead.
CLIENT_QUEUE_LINES = 2000


class EngineLock:
    """One engine per workspace: an flock on `.pairlab/engine.lock`, released when the
    process dies (also by kill -9), so a stale lock never blocks a restart."""

    def __init__(self, pairlab_dir: Path):
        self.path = Path(pairlab_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise ServiceError(f"an engine already runs for this workspace (pid {holder}); "
                                   "attach to it with `pairlab attach`, or end it with "
                                   "`pairlab stop`") from exc
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class EngineService:
    """Serves `session` on `path` until close(). The caller holds the EngineLock."""

    def __init__(self, session, path: Path, queue_lines: int = CLIENT_QUEUE_LINES):
        self.session = session
        self.path = Path(path)
        self.queue_lines = queue_lines
        self._lock = threading.Lock()
        self._clients: set[AttachedClient] = set()
        self._listener: socket.socket | None = None
        self._closed = threading.Event()
        self._idle = threading.Condition(self._lock)  # notified when a command finishes
        self._busy = 0                                # commands being run
        self._view = View()                   # reduced from every event, for the snapshot
        self.resyncs = 0                      # times a client fell behind (each gets a snapshot)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.path.parent.chmod(0o700)
        self.path.unlink(missing_ok=True)     # left by a killed engine; the lock says it is dead
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            with reachable(self.path) as address:
                listener.bind(address)
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        listener.listen(16)
        self._listener = listener
        self.session.subscribe(self._on_event)
        threading.Thread(target=self._accept_loop, name="pairlab-service", daemon=True).start()

    def close(self, grace_s: float = 5.0) -> None:
        """Stop serving. Commands in progress (a stop) get their reply, and each client gets
        what was queued for it (the SessionStopped) before its connection ends."""
        if self._closed.is_set():
            return
        self._closed.set()
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
        self.path.unlink(missing_ok=True)
        with self._lock:
            self._idle.wait_for(lambda: self._busy == 0, timeout=grace_s)
            clients = list(self._clients)
        for client in clients:
            client.finish(grace_s)

    def _count_deciding(self) -> None:
        with self._lock:
            deciding = sum(not client.read_only for client in self._clients)
        self.session.clients_attached(deciding)

    def client_count(self) -> int:
        with self._lock:
            return len(self._clients)

    # ------------------------------------------------------------------ events

    def _on_event(self, event: Event) -> None:
        """On engine threads: remember what the snapshot needs, queue one line per client."""
        with self._lock:
            self._view = reduce(self._view, event)
            clients = list(self._clients)
        if not clients:
            return
        line = proto.encode(proto.EventMessage(event))
        for client in clients:
            client.offer(line)

    def snapshot(self, resync: bool = False) -> proto.Snapshot:
        """The owner's view of the loop, with what only the event stream carries (the followed
        run's log tail and progress, the draft so far, the error that holds the loop)."""
        owner = self.session.view()
        with self._lock:
            heard = self._view
        followed = owner.current_run
        same_run = (followed is not None and heard.current_run is not None
                    and heard.current_run.run_id == followed.run_id)
        view = replace(owner, error=heard.error, draft=heard.draft,
                       preparing=heard.preparing if owner.state == "preparing" else None,
                       log_tail=heard.log_tail if same_run else (),
                       progress=heard.progress if same_run else ())
        workspace = self.session.workspace
        return proto.Snapshot(view, workspace=str(workspace.root),
                              targets=list(workspace.config.targets), resync=resync)

    # ------------------------------------------------------------------ connections

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return                        # closed
            threading.Thread(target=self._serve, args=(conn,), daemon=True,
                             name="pairlab-client").start()

    def _serve(self, conn: socket.socket) -> None:
        """Handshake, then this client's commands until it leaves."""
        client = None
        try:
            refused = service_peers.refusal(*service_peers.peer_credentials(conn))
            if refused is not None:
                _send_and_close(conn, proto.Refused(refused))
                return
            conn.sendall(proto.encode(proto.Hello(proto.PROTOCOL_VERSION, "engine",
                                                  workspace=str(self.session.workspace.root))))
            reader = conn.makefile("rb")
            hello = _read_message(reader)
            if not isinstance(hello, proto.Hello):
                _send_and_close(conn, proto.Refused("the first message must be a hello"))
                return
            if hello.version != proto.PROTOCOL_VERSION:
                _send_and_close(conn, proto.Refused(proto.version_mismatch(
                    proto.PROTOCOL_VERSION, hello.version, we="engine", they="client")))
                return
            client = AttachedClient(self, conn, hello.read_only)
            with self._lock:
                if self._closed.is_set():
                    return
                self._clients.add(client)
            self._count_deciding()
            client.start()
            while True:
                try:
                    message = _read_message(reader)
                except proto.ProtocolError as exc:
                    client.offer(proto.encode(proto.Reply(0, False, error=str(exc),
                                                          refusal="refused")), must=True)
                    continue
                if message is None:
                    return
                with self._lock:
                    self._busy += 1
                try:
                    reply = self._run_command(message, client.read_only)
                    client.offer(proto.encode(reply), must=True)
                finally:
                    with self._lock:
                        self._busy -= 1
                        self._idle.notify_all()
        except (OSError, proto.ProtocolError):
            return
        finally:
            if client is not None:
                with self._lock:
                    self._clients.discard(client)
                self._count_deciding()
                client.finish()
            else:
                conn.close()

    def _run_command(self, request, read_only: bool) -> proto.Reply:
        if not isinstance(request, proto.Request):
            return proto.Reply(0, False, error=f"expected a command, got a {request.kind}",
                               refusal="refused")
        rid, command = request.request_id, request.command
        if read_only and command.decides:
            return proto.Reply(rid, False, refusal="refused", error=(
                f"this client is attached read-only and cannot {command.words()}; attach "
                "without --read-only to decide"))
        try:
            value = self.session.send(command)
        except PatchRefused as exc:
            return proto.Reply(rid, False, error=exc.message, refusal="patch", rule=exc.rule)
        except KeyError as exc:
            return proto.Reply(rid, False, error=str(exc.args[0] if exc.args else exc),
                               refusal="refused")
        except ValueError as exc:
            return proto.Reply(rid, False, error=str(exc), refusal="refused")
        except Exception as exc:
            print(f"pairlab: command {type(command).__name__} failed:\n"
                  f"{traceback.format_exc()}", file=sys.stderr, flush=True)
            return proto.Reply(rid, False, error=f"{type(exc).__name__}: {exc}",
                               refusal="internal")
        return proto.Reply(rid, True, value=proto.to_plain(value))


def _read_message(reader):
    line = reader.readline()
    if not line:
        return None
    return proto.decode(line)


def _send_and_close(conn: socket.socket, message) -> None:
    try:
        conn.sendall(proto.encode(message))
    except OSError:
        pass
    conn.close()
