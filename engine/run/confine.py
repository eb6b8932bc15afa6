"""Confinement of the training process: what it may read and write, which processes it can
see, and no network.

The runner starts train.py through this module's launcher,

    python -P -m engine.run.confine POLICY_JSON -- COMMAND...

which enters new network, mount and PID namespaces (with a user namespace where it is not
privileged) and forks the run's init, PID 1 of the new PID namespace. The init mounts a
/proc of its own, so the run sees its own processes and no other (no ancestor's
environment or command line: the engine's, the app's, the shell's); applies a Landlock
ruleset (py-landlock): reads beneath the policy's read paths, writes beneath its write
paths, no TCP bind or connect, no signals or abstract sockets out of the confined domain,
and where the kernel has Landlock ABI 9 no connection to a UNIX socket made outside it;
then runs the command as its child, reaping whatever the run orphans. The network
namespace has nothing but a loopback that is down.

When the command exits the init exits, and the kernel kills every process left in the
namespace before the launcher sees the init end: a process that forks and exits over and
over included, since a dying namespace gets no new process. So nothing of the run is alive
when the launcher exits, and only then does the engine copy the handed-over model.

Where the kernel offers no Landlock, or not these namespaces, the run goes unconfined and
is recorded as such (`probe()` says why); nothing else changes.
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
import signal
import site
import struct
import subprocess
import sys
import sysconfig
from dataclasses import asdict, dataclass
from pathlib import Path

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x2, 0x4, 0x8
MS_REC, MS_PRIVATE = 0x4000, 0x40000
PR_SET_PDEATHSIG = 1
# LANDLOCK_ACCESS_FS_RESOLVE_UNIX (Landlock ABI 9, Linux 7.1): connecting to a UNIX socket
# by its path. py-landlock 0.1.1 knows the rights up to ABI 7.
ACCESS_FS_RESOLVE_UNIX = 1 << 16
RESOLVE_UNIX_ABI = 9

# Read (and execute) everywhere the interpreter, its libraries and the GPU stack live; /proc
# is the run's own (see above).
SYSTEM_READ = ("/usr", "/lib", "/lib64", "/bin", "/sbin", "/etc", "/opt", "/proc", "/sys")
# Device nodes: read, write and ioctl (CUDA talks to /dev/nvidia* by ioctl).
DEVICE_PATHS = ("/dev",)
STATUS = struct.Struct("i")   # the command's wait status, from the init to the launcher

_libc = ctypes.CDLL(None, use_errno=True)


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

    def reaching(self, path: str | Path) -> str | None:
        """The folder (the policy's, or the system's) beneath which the confined process may
        read `path`; None when it may not."""
        target = Path(path).resolve()
        for folder in (*SYSTEM_READ, *DEVICE_PATHS, *self.read, *self.write):
            if target.is_relative_to(Path(folder).resolve()):
                return folder
        return None


@functools.lru_cache(maxsize=None)
def probe() -> str | None:
    """None when a run can be confined here, else why not (for the record). The namespaces
    are tried once, in a child process: the kernel decides, and a container may refuse them
    (a /proc of one's own, in particular) where the same kernel elsewhere allows them."""
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
    tried = subprocess.run([sys.executable, "-P", "-m", "engine.run.confine", "--probe"],
                           capture_output=True, text=True, timeout=60)
    if tried.returncode != 0:
        why = (tried.stderr.strip().splitlines() or [f"exit {tried.returncode}"])[-1]
        return f"the kernel refuses a run its own namespaces and /proc ({why})"
    return None


def launcher(policy: Policy, command: list[str]) -> list[str]:
    """argv that runs `command` confined by `policy`."""
    return [sys.executable, "-P", "-m", "engine.run.confine", policy.to_json(), "--", *command]


def python_paths() -> list[str]:
    """Where the Python environment keeps its code: its prefixes and install folders (the
    standard library, site-packages, the user's site-packages). Not sys.path as such: that
    holds the folder the engine was started in, and whatever PYTHONPATH names."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             *sysconfig.get_paths().values(), *site.getsitepackages()}
    if site.ENABLE_USER_SITE:
        paths.add(site.getusersitepackages())
    return sorted(p for p in paths if os.path.isdir(p))


def _check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")


def _enter_namespaces() -> None:
    """New network, mount and PID namespaces (the PID one is for the children to come). As a
    user without CAP_SYS_ADMIN this needs a user namespace, which maps us onto ourselves."""
    flags = CLONE_NEWNET | CLONE_NEWNS | CLONE_NEWPID
    if _libc.unshare(flags) == 0:
        return
    uid, gid = os.getuid(), os.getgid()
    _check(_libc.unshare(CLONE_NEWUSER | flags),
           "unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWNS | CLONE_NEWPID)")
    Path("/proc/self/setgroups").write_text("deny")
    Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
    Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")


def _mount_own_proc() -> None:
    """In the init: this PID namespace's /proc over the host's. Mounts are made private
    first, so nothing mounted here shows outside the run's mount namespace."""
    _check(_libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "making mounts private")
    _check(_libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None),
           "mounting the run's own /proc")


def apply(policy: Policy) -> None:
    """Confine this process (and what it execs) to `policy`. py-landlock handles every right
    and scope it knows, so signals and abstract sockets are scoped to the domain (ABI 6)."""
    from py_landlock import AccessFs, Landlock, get_abi_version
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
    ruleset.apply()
    if get_abi_version() >= RESOLVE_UNIX_ABI:
        stack_layer(ACCESS_FS_RESOLVE_UNIX)


def stack_layer(refused: int) -> None:
    """One more Landlock layer that refuses the `refused` rights everywhere and changes
    nothing else: a right py-landlock does not know yet (ABI 9's connections to UNIX sockets
    by path: the engine's socket, and any daemon's). Every layer also restricts REFER
    (linking and renaming across folders) unless it grants it, so it grants REFER everywhere:
    the first layer's rules still decide it."""
    from py_landlock import (AccessFs, PathBeneathAttr, RulesetAttr, add_rule, create_ruleset,
                             restrict_self)
    ruleset_fd = create_ruleset(RulesetAttr(handled_access_fs=refused | AccessFs.REFER))
    try:
        root = os.open("/", os.O_PATH | os.O_CLOEXEC)
        try:
            add_rule(ruleset_fd, PathBeneathAttr(allowed_access=AccessFs.REFER, parent_fd=root))
        finally:
            os.close(root)
        restrict_self(ruleset_fd, None)
    finally:
        os.close(ruleset_fd)


def _forward(signums, pid: int) -> None:
    """The runner stops the run with SIGTERM (or a Ctrl-C): pass it on to pid."""
    def forward(signum, _frame):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass      # it has just ended
    for signum in signums:
        signal.signal(signum, forward)


def _init(policy: Policy, command: list[str], status_fd: int):
    """PID 1 of the run's namespace: its own /proc, Landlock, then the command as its child.
    Reaps every process the run orphans; once the command exits, writes its wait status to
    status_fd and exits, and the kernel kills the rest of the namespace."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)   # the launcher killed: the run goes too
    try:
        _mount_own_proc()
        apply(policy)
    except Exception as error:
        print(f"\nFAIL: could not confine the training process: {error}", file=sys.stderr,
              flush=True)
        os._exit(2)
    child = os.fork()
    if child == 0:
        os.close(status_fd)    # the status is the init's to report, not the run's
        try:
            os.execvp(command[0], command)
        except OSError as error:
            print(f"\nFAIL: could not start {' '.join(command)}: {error.strerror or error}",
                  file=sys.stderr, flush=True)
        os._exit(127)
    _forward((signal.SIGTERM, signal.SIGINT), child)
    while True:
        pid, status = os.waitpid(-1, 0)
        if pid == child:
            os.write(status_fd, STATUS.pack(status))
            os._exit(0)


def _launch(policy: Policy, command: list[str]) -> int:
    """Run command confined, in namespaces of its own; returns its wait status once every
    process of the run is gone."""
    _enter_namespaces()
    status_read, status_write = os.pipe()
    init = os.fork()
    if init == 0:
        os.close(status_read)
        _init(policy, command, status_write)
    os.close(status_write)
    _forward((signal.SIGTERM, signal.SIGINT), init)
    _, init_status = os.waitpid(init, 0)
    reported = os.read(status_read, STATUS.size)
    return STATUS.unpack(reported)[0] if len(reported) == STATUS.size else init_status


def _probe_namespaces() -> None:
    """What the launcher does before Landlock, in an init that exits at once."""
    try:
        _enter_namespaces()
        init = os.fork()
        if init == 0:
            try:
                _mount_own_proc()
            except OSError as error:
                print(error, file=sys.stderr, flush=True)
                os._exit(1)
            os._exit(0)
        _, status = os.waitpid(init, 0)
    except OSError as error:
        raise SystemExit(str(error)) from error
    raise SystemExit(os.waitstatus_to_exitcode(status))


def main(argv: list[str]) -> None:
    if argv == ["--probe"]:
        _probe_namespaces()
    if len(argv) < 3 or argv[1] != "--":
        raise SystemExit("usage: python -P -m engine.run.confine POLICY_JSON -- COMMAND...")
    policy, command = Policy.from_json(argv[0]), argv[2:]
    try:
        status = _launch(policy, command)
    except OSError as error:
        print(f"\nFAIL: could not confine the training process: {error}", file=sys.stderr)
        raise SystemExit(2)
    if os.WIFSIGNALED(status):   # end the way the command ended, for the runner's messages
        signum = os.WTERMSIG(status)
        if signum != signal.SIGKILL:       # SIGKILL has no handler to reset
            signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    raise SystemExit(os.waitstatus_to_exitcode(status))


if __name__ == "__main__":
    main(sys.argv[1:])
