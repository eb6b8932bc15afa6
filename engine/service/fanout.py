"""The engine's side of one attached client (engine/service/server.py): its bounded
queue of encoded lines, and the writer thread that drains it to the socket, a fresh
snapshot first whenever the client fell behind."""

from __future__ import annotations

import queue
import socket
import threading
from typing import TYPE_CHECKING

from engine.service import protocol as proto

if TYPE_CHECKING:
    from engine.service.server import EngineService


class AttachedClient:
    """One attached client: a bounded queue of encoded lines and the thread that sends them."""

    def __init__(self, service: EngineService, conn: socket.socket, read_only: bool):
        self.service = service
        self.conn = conn
        self.read_only = read_only
        # (is_reply, line): replies survive a resync, the client waits for them.
        self.queue: queue.Queue[tuple[bool, bytes] | None] = queue.Queue(
            maxsize=service.queue_lines)
        self.needs_snapshot = True            # the first thing it gets
        self.resynced = False
        self._finished = threading.Event()
        self._thread = threading.Thread(target=self._write_loop, daemon=True,
                                        name="pairlab-client-writer")

    def start(self) -> None:
        self._thread.start()

    def offer(self, line: bytes, must: bool = False) -> None:
        """Queue a line without waiting. A full queue means the client fell behind: drop its
        backlog and send a snapshot instead. Replies (`must`) wait for room: they come from
        this client's own reader, so only this client waits."""
        if self._finished.is_set():
            return
        if must:
            while not self._finished.is_set():
                try:
                    self.queue.put((True, line), timeout=1.0)
                    return
                except queue.Full:
                    continue
            return
        if self.needs_snapshot:
            return
        try:
            self.queue.put_nowait((False, line))
        except queue.Full:
            self.needs_snapshot = True
            self.resynced = True
            with self.service._lock:
                self.service.resyncs += 1

    def finish(self, grace_s: float = 0.0) -> None:
        """End this connection; with a grace, after the writer sent what is queued."""
        if self._finished.is_set():
            return
        try:
            self.queue.put(None, timeout=grace_s) if grace_s else self.queue.put_nowait(None)
        except queue.Full:
            pass
        if grace_s and self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(grace_s)
        self._finished.set()
        try:
            self.conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _write_loop(self) -> None:
        try:
            while not self._finished.is_set():
                if self.needs_snapshot:
                    self._drain()
                    # Cleared before the snapshot is built: an event after this point is
                    # queued (and may repeat what the snapshot shows), none is lost.
                    self.needs_snapshot = False
                    resync, self.resynced = self.resynced, False
                    self.conn.sendall(proto.encode(self.service.snapshot(resync=resync)))
                    continue
                try:
                    item = self.queue.get(timeout=1.0)
                except queue.Empty:
                    continue
                if item is None:
                    break
                is_reply, line = item
                if self.needs_snapshot and not is_reply:
                    continue                  # superseded by the snapshot about to be sent
                self.conn.sendall(line)
        except OSError:
            pass
        finally:
            self._finished.set()
            self.conn.close()

    def _drain(self) -> None:
        """Drop queued events; keep replies, which the client is waiting for."""
        kept = []
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                break
            if item is not None and item[0]:
                kept.append(item[1])
        for line in kept:
            self.conn.sendall(line)
