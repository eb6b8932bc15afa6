"""The training process's group: started to die with the engine, watched, signalled."""

from __future__ import annotations

import os
import signal
import subprocess
import sys


def die_with_engine() -> None:
    """In the child, before exec: on Linux, SIGKILL it if the engine dies (kill -9 included).

    Without this a silent run would go on training for an engine that no longer exists,
    holding the accelerator while the restarted engine trains the same proposal again.
    """
    if sys.platform.startswith("linux"):
        import ctypes
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def has_exited(proc: subprocess.Popen) -> bool:
    """True once the leader has exited, without reaping it (see Runner._reap_group)."""
    if hasattr(os, "waitid"):
        try:
            return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return True
    return proc.poll() is not None


def signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass   # the group is already gone
