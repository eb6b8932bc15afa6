"""Where a workspace's engine listens, and how a client reaches the socket."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

SOCKET_NAME = "engine.sock"
LOCK_NAME = "engine.lock"
LOG_NAME = "engine.log"
# AF_UNIX paths longer than this (108 bytes with the NUL on Linux) are reached via /proc.
MAX_SOCKET_PATH = 100


class ServiceError(Exception):
    """The service cannot start or be reached; the message says why and what to do."""


def socket_path(pairlab_dir: Path) -> Path:
    return Path(pairlab_dir) / SOCKET_NAME


@contextmanager
def reachable(path: Path):
    """A path to `path` that fits in a sockaddr_un: itself, or via /proc/self/fd when long."""
    if len(os.fsencode(path)) <= MAX_SOCKET_PATH:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)
