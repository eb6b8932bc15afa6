"""Who may attach to the engine's socket: the owner's processes, and none of its runs.

The socket is the owner's only (engine/service/server.py), but a training run runs as the owner
too, and below Landlock ABI 9 neither Landlock nor the run's network namespace keeps a
process from connecting to a UNIX socket by its path. So a connection's peer is also known
by its pid (SO_PEERCRED, as this engine's PID namespace sees it) and refused when it
descends from this engine (a run, confined or not, and whatever the run started: orphans of
a confined run stay under its init), when it lives in another PID namespace (a confined run
of another engine does), or when it cannot be told which.
"""

from __future__ import annotations

import os
import socket
import struct
from pathlib import Path

PROC = Path("/proc")
MAX_ANCESTORS = 4096          # more than any chain of parents; a loop in /proc ends here


def peer_credentials(conn: socket.socket) -> tuple[int, int]:
    """(pid, uid) of the process that connected."""
    pid, uid, _gid = struct.unpack("3i", conn.getsockopt(
        socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return pid, uid


def refusal(pid: int, uid: int, *, owner_uid: int | None = None,
            engine_pid: int | None = None, proc: Path = PROC) -> str | None:
    """Why the peer (pid, uid) may not attach to the engine; None when it may. owner_uid and
    engine_pid default to this process's."""
    owner_uid = os.getuid() if owner_uid is None else owner_uid
    engine_pid = os.getpid() if engine_pid is None else engine_pid
    if uid != owner_uid:
        return (f"connection refused: this engine belongs to uid {owner_uid}, and uid {uid} "
                "may not attach to it")
    if pid == engine_pid:
        return None
    unknown = (f"connection refused: the peer's process (pid {pid}) could not be told apart "
               "from the engine's runs")
    if pid <= 0:
        return unknown
    try:
        if _descends_from(proc, pid, engine_pid):
            return (f"connection refused: the peer is a process of one of this engine's runs "
                    f"(pid {pid}): a run may not drive the engine")
        if os.readlink(proc / str(pid) / "ns" / "pid") != os.readlink(proc / "self" / "ns" / "pid"):
            return (f"connection refused: the peer (pid {pid}) lives in another PID namespace, "
                    "as a confined training run does: a run may not drive an engine")
    except (OSError, ValueError, IndexError):
        return unknown
    return None


def _descends_from(proc: Path, pid: int, ancestor: int) -> bool:
    for _ in range(MAX_ANCESTORS):
        pid = _parent(proc, pid)
        if pid == ancestor:
            return True
        if pid <= 1:
            return False
    raise ValueError(f"no end to the parents of pid {pid}")


def _parent(proc: Path, pid: int) -> int:
    """Field 4 of /proc/<pid>/stat (after the command name, which may hold spaces)."""
    return int((proc / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
