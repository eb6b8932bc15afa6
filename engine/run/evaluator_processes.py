"""The evaluator's processes: a fresh interpreter per evaluation, or a fork of a pre-imported
one (nanochat/evaluator_server.py), which saves each run the ~3 s of CPU that importing
torch and its export deserializer takes.

Either way the evaluation is a process of its own, leading its own group (the runner kills
it by group), started only after the training group is gone, that imports nothing from the
workspace. The server holds no run settings: each request carries the run's environment,
and the child takes it before it imports the harness. Only what shapes the interpreter
itself (PYTHONPATH, allocator and thread settings: server_key) picks the server, so one
engine keeps one server per such set, started with the first run that needs it while that
run trains, and ended with the engine.

PAIRLAB_EVALUATOR=process starts a fresh interpreter every time (the only way where the OS
has no pidfd, e.g. macOS); the tests run both.
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

EVALUATOR = [sys.executable, "-S", "-P", "-m", "nanochat.evaluate"]
SERVER = [sys.executable, "-S", "-P", "-m", "nanochat.evaluator_server"]
STOP_WAIT_S = 5.0
# Read by Python, the dynamic linker, the allocator, OpenMP, BLAS and torch as they load.
SHAPES_THE_INTERPRETER = ("PYTHON", "LD_", "MALLOC_", "OMP_", "GOMP_", "KMP_", "MKL_",
                          "OPENBLAS_", "TORCH", "PYTORCH_", "CUDA_", "NVIDIA_", "HIP_", "ROCM_",
                          "HSA_", "NCCL_", "TMPDIR", "LANG", "LC_")


def use_server() -> bool:
    choice = os.environ.get("PAIRLAB_EVALUATOR", "").strip().lower()
    if choice in ("process", "server"):
        return choice == "server"
    return hasattr(os, "pidfd_open") and sys.platform.startswith("linux")


def server_key(env: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """What a server is started with: the variables the interpreter and the native libraries
    it loads with torch read as they start. Everything else, the run's settings (PAIRLAB_*)
    first, each child takes from its request before it reads it."""
    return tuple(sorted((k, v) for k, v in env.items()
                        if k.startswith(SHAPES_THE_INTERPRETER) or k in ("PATH", "HOME")))


class ForkedEvaluation:
    """An evaluation the server forked: its pid (its process group's too) and, once it has
    ended, its returncode, as subprocess.Popen has them."""

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: int | None = None
        self._ended = threading.Event()

    def ended(self, returncode: int) -> None:
        self.returncode = returncode
        self._ended.set()

    def wait(self, timeout: float | None = None) -> int | None:
        self._ended.wait(timeout)
        return self.returncode


class OneShotEvaluation:
    """An evaluation in a fresh interpreter: subprocess.Popen, with the same wait()."""

    def __init__(self, request: dict):
        with open(request["output"], "wb") as output:
            self._proc = subprocess.Popen(
                [*EVALUATOR, "--model", request["model"], "--result", request["result"]],
                cwd=request["cwd"], env=request["env"], stdin=subprocess.DEVNULL,
                stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self._proc.pid

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None


class EvaluatorServer:
    """One nanochat.evaluator_server process and the thread that reads its replies."""

    def __init__(self, env: dict[str, str]):
        self._errors = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(SERVER, env=env, cwd=tempfile.gettempdir(),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._errors, start_new_session=True)
        self._lock = threading.Lock()            # one request at a time: replies in order
        self._started: queue.Queue[ForkedEvaluation | None] = queue.Queue()
        self._running: dict[int, ForkedEvaluation] = {}
        threading.Thread(target=self._read, name="pairlab-evaluator-server",
                         daemon=True).start()

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def start(self, request: dict, timeout_s: float) -> ForkedEvaluation | None:
        """Fork one evaluation; None if the server is gone (or never answered)."""
        with self._lock:
            try:
                self.proc.stdin.write(json.dumps(request).encode() + b"\n")
                self.proc.stdin.flush()
            except (OSError, ValueError):
                return None
            try:
                return self._started.get(timeout=timeout_s)
            except queue.Empty:
                self.stop()
                return None

    def _read(self) -> None:
        for line in self.proc.stdout:
            message = json.loads(line)
            if "started" in message:
                evaluation = self._running[message["started"]] = ForkedEvaluation(
                    message["started"])
                self._started.put(evaluation)
            else:
                self._running.pop(message["exited"]).ended(message["returncode"])
        self._started.put(None)                 # gone: its children died with it
        for evaluation in self._running.values():
            evaluation.ended(-signal.SIGKILL)

    def failure(self) -> str:
        """The last of what the server printed, for the message of a run it could not score."""
        self._errors.seek(0)
        lines = self._errors.read().decode("utf-8", errors="replace").strip().splitlines()
        return lines[-1] if lines else f"it exited with {self.proc.poll()}"

    def stop(self) -> None:
        """Close its pipe (it ends, and its evaluations with it), then make sure."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


_servers: dict[tuple, EvaluatorServer] = {}
_servers_lock = threading.Lock()


def server_for(env: dict[str, str]) -> EvaluatorServer:
    """The running server for env's interpreter settings, started if there is none."""
    key = server_key(env)
    with _servers_lock:
        server = _servers.get(key)
        if server is None or not server.alive:
            if not _servers:
                atexit.register(stop_servers)
            server = _servers[key] = EvaluatorServer(dict(key))
        return server


def prepare(env: dict[str, str]) -> None:
    """Start the server env's evaluation will use, so its imports overlap the training."""
    if use_server():
        server_for(env)


def start(model: Path, result: Path, output: Path, cwd: Path, env: dict[str, str],
          timeout_s: float) -> ForkedEvaluation | OneShotEvaluation:
    """Start one evaluation of the model in model/, writing result and output; OSError if it
    could not start."""
    request = {"model": str(model), "result": str(result), "output": str(output),
               "cwd": str(cwd), "env": env}
    if not use_server():
        return OneShotEvaluation(request)
    for _ in range(2):       # a server that died since its last evaluation is started again
        server = server_for(env)
        evaluation = server.start(request, timeout_s)
        if evaluation is not None:
            return evaluation
    raise OSError(f"the evaluator server stopped: {server.failure()}")


def stop_servers() -> None:
    """End every server (at the engine's exit; the pipe's end would do it too)."""
    with _servers_lock:
        servers = list(_servers.values())
        _servers.clear()
    for server in servers:
        server.stop()
