"""Confinement of the training process: what it may read and write, and no network.

The runner starts train.py through this module's launcher,

    python -P -m engine.run.confine POLICY_JSON -- COMMAND...

which enters a new network namespace (nothing but a loopback that is down), applies a
Landlock ruleset (py-landlock): reads beneath the policy's read paths, writes beneath its
write paths, no TCP bind or connect, no signals or abstract sockets out of the confined
domain; then runs the command as its child. Landlock is inherited by every descendant, so
a process that leaves the group stays confined; and the launcher is their child subreaper:
when the command exits, whatever it left running is killed before the launcher exits, so
nothing of the run is alive when the engine starts the evaluator.

Where the kernel offers no Landlock the run goes unconfined and is recorded as such
(`probe()` says why); nothing else changes.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36

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
    return [sys.executable, "-P", "-m", "engine.run.confine", policy.to_json(), "--", *command]


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


def _reap_descendants() -> None:
    """Kill and reap every process still parented to us: as a child subreaper we inherit
    the orphans, daemons that left the process group included."""
    me = os.getpid()
    while True:
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == me:   # field 4: the parent's pid
                try:
                    os.kill(int(entry), signal.SIGKILL)
                except OSError:
                    pass
        try:
            if os.waitpid(-1, 0)[0] == 0:
                continue
        except ChildProcessError:
            return


def _run(command: list[str]) -> int:
    """Run command as our child and wait for it; then nothing it started may outlive it.
    Returns its wait status."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1)
    child = os.fork()
    if child == 0:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        try:
            os.execvp(command[0], command)
        except OSError as error:
            print(f"\nFAIL: could not start {' '.join(command)}: {error.strerror or error}",
                  file=sys.stderr, flush=True)
        os._exit(127)
    for signum in (signal.SIGTERM, signal.SIGINT):   # the runner stops the run: pass it on
        signal.signal(signum, lambda sig, _: os.kill(child, sig))
    _, status = os.waitpid(child, 0)
    _reap_descendants()
    return status


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[1] != "--":
        raise SystemExit("usage: python -P -m engine.run.confine POLICY_JSON -- COMMAND...")
    policy, command = Policy.from_json(argv[0]), argv[2:]
    try:
        apply(policy)
    except Exception as error:
        print(f"\nFAIL: could not confine the training process: {error}", file=sys.stderr)
        raise SystemExit(2)
    status = _run(command)
    if os.WIFSIGNALED(status):   # end the way the child ended, for the runner's messages
        signum = os.WTERMSIG(status)
        if signum != signal.SIGKILL:       # SIGKILL has no handler to reset
            signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    raise SystemExit(os.waitstatus_to_exitcode(status))


if __name__ == "__main__":
    main(sys.argv[1:])
