"""Confinement of the training process: what it may read and write, and no network.

The runner starts train.py through this module's launcher,

    python -P -m engine.confine POLICY_JSON -- COMMAND...

which, in the child before exec, enters a new network namespace (nothing but a loopback
that is down) and applies a Landlock ruleset (py-landlock): reads beneath the policy's read
paths, writes beneath its write paths, no TCP bind or connect, and no signals or abstract
sockets out of the confined domain. Landlock survives exec and is inherited by every
descendant, so a process that leaves the group stays confined.

Where the kernel offers no Landlock the run goes unconfined and is recorded as such
(`probe()` says why); nothing else changes.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000

# Read (and execute) everywhere the interpreter, its libraries and the GPU stack live.
SYSTEM_READ = ("/usr", "/lib", "/lib64", "/bin", "/sbin", "/etc", "/opt", "/proc", "/sys")
# Device nodes: read, write and ioctl (CUDA talks to /dev/nvidia* by ioctl).
DEVICE_PATHS = ("/dev",)


@dataclass(frozen=True)
class Policy:
    read: tuple[str, ...]            # folders and files, read (and execute) beneath
    write: tuple[str, ...]           # folders, read and write beneath

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "Policy":
        data = json.loads(text)
        return cls(read=tuple(data["read"]), write=tuple(data["write"]))


def probe() -> str | None:
    """None when Landlock can confine a run here, else why not (for the record)."""
    if not sys.platform.startswith("linux"):
        return f"Landlock is Linux-only (this is {sys.platform})"
    try:
        import py_landlock
    except ImportError:
        return "py-landlock is not installed"
    try:
        abi = py_landlock.get_abi_version()
    except py_landlock.LandlockError as error:
        return f"the kernel offers no Landlock ({error})"
    if abi < 4:
        return f"Landlock ABI {abi} cannot refuse network connections (4 or later needed)"
    return None


def launcher(policy: Policy, command: list[str]) -> list[str]:
    """argv that runs `command` confined by `policy`."""
    return [sys.executable, "-P", "-m", "engine.confine", policy.to_json(), "--", *command]


def python_paths() -> list[str]:
    """Where the engine's interpreter finds code: its prefixes and sys.path entries."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix}
    paths.update(p for p in sys.path if p and os.path.isdir(p))
    return sorted(paths)


def _unshare_network() -> None:
    """A private network namespace: no interface but a loopback that is down. As a user
    without CAP_SYS_ADMIN this needs a user namespace, which maps us onto ourselves."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) == 0:
        return
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWUSER | CLONE_NEWNET) failed")
    Path("/proc/self/setgroups").write_text("deny")
    Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
    Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")


def apply(policy: Policy) -> None:
    """Confine this process (and what it execs) to `policy`."""
    from py_landlock import AccessFs, Landlock
    read = AccessFs.READ_FILE | AccessFs.EXECUTE
    read_dir = read | AccessFs.READ_DIR
    write = (AccessFs.WRITE_FILE | AccessFs.TRUNCATE | AccessFs.MAKE_REG | AccessFs.MAKE_DIR
             | AccessFs.MAKE_SYM | AccessFs.REMOVE_FILE | AccessFs.REMOVE_DIR
             | AccessFs.MAKE_FIFO | AccessFs.MAKE_SOCK | AccessFs.REFER)
    ruleset = Landlock(strict=False)
    for path in (*SYSTEM_READ, *policy.read):
        if os.path.isdir(path):
            ruleset.add_path_rule(path, access=read_dir)
        elif os.path.exists(path):
            ruleset.add_path_rule(path, access=read)
    for path in DEVICE_PATHS:
        ruleset.add_path_rule(path, access=read_dir | AccessFs.WRITE_FILE | AccessFs.IOCTL_DEV)
    for path in policy.write:
        ruleset.add_path_rule(path, access=read_dir | write)
    _unshare_network()
    ruleset.apply()


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[1] != "--":
        raise SystemExit("usage: python -P -m engine.confine POLICY_JSON -- COMMAND...")
    policy, command = Policy.from_json(argv[0]), argv[2:]
    try:
        apply(policy)
    except Exception as error:
        print(f"\nFAIL: could not confine the training process: {error}", file=sys.stderr)
        raise SystemExit(2)
    try:
        os.execvp(command[0], command)
    except OSError as error:
        print(f"\nFAIL: could not start {' '.join(command)}: {error.strerror or error}",
              file=sys.stderr)
        raise SystemExit(127)


if __name__ == "__main__":
    main(sys.argv[1:])
