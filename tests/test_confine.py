"""The confinement launcher on real processes: what a confined command can reach, and that
nothing it starts outlives it. Skipped where the kernel offers no Landlock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from engine.run import confine

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
        "signal the engine": "PermissionError"}
    assert (tmp_path / "run" / "made").read_text() == "x"
    assert (tmp_path / "readable" / "train.bin").read_text() == "train"


def test_nothing_a_confined_command_starts_outlives_it(tmp_path):
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
    proc = confined(tmp_path, daemon, str(tmp_path / "run"))
    assert proc.returncode == 3, proc.stderr
    pid = int((tmp_path / "run" / "daemon.pid").read_text())
    assert not os.path.exists(f"/proc/{pid}")       # killed and reaped by the launcher
    assert not (tmp_path / "run" / "survived").exists()


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
