"""The confinement launcher on real processes: what a confined command can reach, and that
nothing it starts outlives it. Skipped where the kernel offers no Landlock."""

from __future__ import annotations

import json
import os
import signal
import site
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from engine.run import confine
from tests.conftest import processes_with

pytestmark = pytest.mark.skipif(confine.probe() is not None,
                                reason=f"no confinement here: {confine.probe()}")

REACH = textwrap.dedent('''
    import json, os, signal, socket, sys
    def attempt(action):
        try:
            action()
            return "allowed"
        except OSError as error:
            return type(error).__name__
    paths = json.loads(sys.argv[1])
    print(json.dumps({
        "read inside": attempt(lambda: open(paths["inside"]).read()),
        "read outside": attempt(lambda: open(paths["outside"]).read()),
        "write run folder": attempt(lambda: open(paths["run"] + "/made", "w").write("x")),
        "write readable folder": attempt(lambda: open(paths["inside"], "a").write("x")),
        "list outside": attempt(lambda: os.listdir(paths["outside_dir"])),
        "tcp": attempt(lambda: socket.create_connection(("127.0.0.1", 9), timeout=2)),
        "udp": attempt(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                                     .sendto(b"x", ("192.0.2.1", 53))),
        "signal the engine": attempt(lambda: os.kill(paths["engine"], signal.SIGCONT)),
    }))
''')


def confined(tmp_path, code: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
    run_dir = tmp_path / "run"
    run_dir.mkdir(exist_ok=True)
    policy = confine.Policy(read=(str(tmp_path / "readable"), *confine.python_paths()),
                            write=(str(run_dir),))
    return subprocess.run(confine.launcher(policy, [sys.executable, "-c", code, *args]),
                          capture_output=True, text=True, timeout=120, **kwargs)


def test_a_confined_command_reaches_only_what_its_policy_allows(tmp_path):
    (tmp_path / "readable").mkdir()
    (tmp_path / "readable" / "train.bin").write_text("train")
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "val.bin").write_text("val")
    paths = {"inside": str(tmp_path / "readable" / "train.bin"),
             "outside": str(tmp_path / "secret" / "val.bin"),
             "outside_dir": str(tmp_path / "secret"), "run": str(tmp_path / "run"),
             "engine": os.getpid()}
    proc = confined(tmp_path, REACH, json.dumps(paths))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {
        "read inside": "allowed", "read outside": "PermissionError",
        "write run folder": "allowed", "write readable folder": "PermissionError",
        "list outside": "PermissionError", "tcp": "PermissionError", "udp": "OSError",
        "signal the engine": "ProcessLookupError"}
    assert (tmp_path / "run" / "made").read_text() == "x"
    assert (tmp_path / "readable" / "train.bin").read_text() == "train"


def test_nothing_a_confined_command_starts_outlives_it(tmp_path, marker):
    # A daemon: double fork and a new session, out of the process group the runner kills.
    daemon = textwrap.dedent('''
        import os, sys, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                open(sys.argv[1] + "/daemon.pid", "w").write(str(os.getpid()))
                time.sleep(60)
                open(sys.argv[1] + "/survived", "w").write("x")
            os._exit(0)
        while not os.path.exists(sys.argv[1] + "/daemon.pid"):
            time.sleep(0.01)
        sys.exit(3)
    ''')
    proc = confined(tmp_path, daemon, str(tmp_path / "run"), marker)
    assert proc.returncode == 3, proc.stderr
    assert (tmp_path / "run" / "daemon.pid").exists()
    assert processes_with(marker) == []             # killed with the run's namespace
    assert not (tmp_path / "run" / "survived").exists()


# Forks and exits as fast as it can, for argv[1] seconds: a new pid at every hop, its parent
# gone before a reaper that scans for children gets to it.
HOPPER = textwrap.dedent('''
    import os, sys, time
    deadline = time.monotonic() + float(sys.argv[1])
    while time.monotonic() < deadline:
        if os.fork():
            os._exit(0)
''')


def test_a_fork_and_exit_chain_dies_with_the_command(tmp_path, marker):
    # Before, the launcher scanned /proc for its children while the chain hopped on: it
    # never caught it (12,491 hops in 8 s) and ran until the watchdog killed the run.
    start = (f"import subprocess, sys\n"
             f"subprocess.Popen([sys.executable, '-c', {HOPPER!r}, '120', {marker!r}])\n"
             f"while not {{p for p in __import__('os').listdir('/proc') if p.isdigit()}} - "
             f"{{'1', str(__import__('os').getpid())}}:\n    pass")
    proc = confined(tmp_path, start)
    assert proc.returncode == 0, proc.stderr
    assert processes_with(marker) == []


def test_a_confined_command_sees_no_process_but_its_own(tmp_path):
    # The engine's environment (and the app's, the shell's) is in its /proc entry: the run
    # gets a /proc of its own, in which it and its init are all there is.
    seen = textwrap.dedent('''
        import json, os, sys
        print(json.dumps({"pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
                          "me": os.getpid(), "parent": os.getppid(),
                          "engine": os.path.exists(f"/proc/{sys.argv[1]}/environ")}))
    ''')
    proc = confined(tmp_path, seen, str(os.getpid()))
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    assert seen["pids"] == [1, seen["me"]] and seen["parent"] == 1 and not seen["engine"]


def test_a_stacked_layer_refuses_its_right_and_keeps_the_rest(tmp_path):
    # How the launcher refuses what py-landlock does not know yet (ABI 9's connections to
    # UNIX sockets by path), tried here with a right every ABI has: truncating.
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "f").write_text("x")
    code = textwrap.dedent('''
        import json, os, sys
        from engine.run import confine
        from py_landlock import AccessFs
        root = sys.argv[1]
        confine.apply(confine.Policy(read=tuple(confine.python_paths()), write=(root,)))
        confine.stack_layer(AccessFs.TRUNCATE)
        outcome = {}
        for name, action in [("truncate", lambda: os.truncate(root + "/a/f", 0)),
                             ("write", lambda: open(root + "/a/g", "w").write("y")),
                             ("move across folders", lambda: os.rename(root + "/a/g", root + "/b/g"))]:
            try:
                action()
                outcome[name] = "allowed"
            except OSError as error:
                outcome[name] = type(error).__name__
        print(json.dumps(outcome))
    ''')
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"truncate": "PermissionError", "write": "allowed",
                                       "move across folders": "allowed"}


def landlock_abi() -> int:
    import py_landlock
    return py_landlock.get_abi_version()


@pytest.mark.skipif(landlock_abi() < confine.RESOLVE_UNIX_ABI,
                    reason=f"Landlock ABI {landlock_abi()}: UNIX sockets by path need ABI 9")
def test_a_confined_command_cannot_connect_to_a_socket_made_outside_it(tmp_path):
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "outside.sock"))
    listener.listen(1)
    code = ("import socket, sys\ns = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
            "try:\n    s.connect(sys.argv[1])\n    print('allowed')\n"
            "except OSError as error:\n    print(type(error).__name__)")
    proc = confined(tmp_path, code, str(tmp_path / "outside.sock"))
    listener.close()
    assert proc.stdout.strip() == "PermissionError", proc.stderr


def test_a_policy_names_the_folder_through_which_it_reaches_a_path(tmp_path):
    policy = confine.Policy(read=(str(tmp_path / "home"),), write=(str(tmp_path / "run"),))
    assert policy.reaching(tmp_path / "home" / ".cache" / "val.bin") == str(tmp_path / "home")
    assert policy.reaching(tmp_path / "run" / "x") == str(tmp_path / "run")
    assert policy.reaching("/usr/share/val.bin") == "/usr"
    assert policy.reaching(tmp_path / "data" / "val.bin") is None


def test_the_python_environment_is_readable_but_not_the_folder_python_started_in(tmp_path):
    # A script's folder is sys.path[0] and PYTHONPATH's folders follow: both were readable
    # to the training process when python_paths() was sys.path.
    (tmp_path / "lib").mkdir()
    script = tmp_path / "paths.py"
    script.write_text("import json\nfrom engine.run import confine\n"
                      "print(json.dumps(confine.python_paths()))\n")
    source_root = Path(confine.__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=60, env={
                              **os.environ,
                              "PYTHONPATH": os.pathsep.join([str(tmp_path / "lib"),
                                                             str(source_root)])})
    paths = json.loads(proc.stdout)
    assert sys.prefix in paths and all(p in paths for p in site.getsitepackages()
                                       if os.path.isdir(p))
    assert not any(Path(p) in (tmp_path, tmp_path / "lib") for p in paths), paths


def test_device_nodes_are_open_to_the_run_for_read_write_and_ioctl(tmp_path):
    # CUDA drives /dev/nvidia* by ioctl. /dev/null stands in for them here: its ioctl is
    # answered ENOTTY by the driver, where a refused right would be EACCES from Landlock.
    policy = confine.Policy(read=(), write=(str(tmp_path),))
    for node in ("/dev/nvidia0", "/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/dri/renderD128"):
        assert policy.reaching(node) == "/dev"
    code = textwrap.dedent('''
        import errno, fcntl, termios
        with open("/dev/null", "r+b", buffering=0) as node:
            node.write(b"x")
            try:
                fcntl.ioctl(node, termios.TIOCGWINSZ, bytes(8))
            except OSError as error:
                print(errno.errorcode[error.errno])
    ''')
    proc = confined(tmp_path, code)
    assert proc.returncode == 0 and proc.stdout.strip() == "ENOTTY", proc.stderr


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_the_launcher_ends_the_way_its_command_ended(tmp_path, signum):
    proc = confined(tmp_path, f"import os; os.kill(os.getpid(), {int(signum)})")
    assert proc.returncode == -signum


def test_a_command_that_cannot_start_is_named(tmp_path):
    policy = confine.Policy(read=tuple(confine.python_paths()), write=(str(tmp_path),))
    proc = subprocess.run(confine.launcher(policy, ["no-such-binary", "x"]),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 127
    assert proc.stderr.strip() == ("FAIL: could not start no-such-binary x: No such file or "
                                   "directory")
