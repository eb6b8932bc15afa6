"""The worker's side of the Ray executor (engine/scale/ray_executor.py): the task that trains one
run on a Ray worker, and the channel its output goes back through.

The task unpacks the commit's files into a temp dir and runs the local Runner there, so the
run is confined and scored by the trusted evaluator as on one machine. Its output goes to a
LogChannel actor every FLUSH_INTERVAL_S; the answer to each hand-over carries a kill request
from the engine, if one came.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import shutil
import sys
import tarfile
import tempfile
import threading
from pathlib import Path

from engine.base.records import RunResult, RunStatus
from engine.run import evaluation
from engine.run.runner import Runner

FLUSH_INTERVAL_S = 0.1                    # the task hands its output over this often
DATA_FILES = (*evaluation.TRAINING_FILES, "val.bin")   # val.bin is for the worker's evaluator
RUN_DIR_PREFIX = "pairlab-ray-run-"       # + the worker's pid: a run's temp dir on the node
# The harness, the evaluator and the runner: a worker must run the engine's own copy.
# Every module of a run (engine/run/: the runner, its process group, output, results,
# watchdog, compile cache, confinement, evaluation) and of the executor.
FINGERPRINTED = ("nanochat/*.py", "engine/run/*.py", "engine/base/*.py",
                 "engine/scale/ray_executor.py", "engine/scale/ray_worker.py")


@functools.lru_cache(maxsize=1)
def harness_fingerprint() -> str:
    """A digest of the code that trains and scores a run, as installed here."""
    digest = hashlib.sha256()
    for pattern in FINGERPRINTED:
        for path in sorted(evaluation.SOURCE_ROOT.glob(pattern)):
            digest.update(str(path.relative_to(evaluation.SOURCE_ROOT)).encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


class LogChannel:
    """Between a run's task and the engine (a Ray actor: its calls run one at a time). The
    task puts its output, the engine takes it; a kill request is the answer to put."""

    def __init__(self):
        self.items: list = []
        self.kill: tuple[RunStatus, str] | None = None

    def put(self, items: list) -> tuple[RunStatus, str] | None:
        self.items.extend(items)
        return self.kill

    def take(self) -> list:
        items, self.items = self.items, []
        return items

    def request_kill(self, status: RunStatus, message: str) -> None:
        if self.kill is None:
            self.kill = (status, message)


class _Outbox:
    """The task's output, handed to the channel every FLUSH_INTERVAL_S by a thread; a kill
    request in the answer stops the runner."""

    def __init__(self, ray, channel):
        self.ray, self.channel = ray, channel
        self.lock = threading.Lock()
        self.items: list = []
        self.runner: Runner | None = None
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="pairlab-ray-outbox",
                                       daemon=True)

    def add(self, kind: str, payload) -> None:
        with self.lock:
            self.items.append((kind, payload))

    def start(self, runner: Runner) -> None:
        self.runner = runner
        self.thread.start()

    def close(self) -> None:
        self.stopped.set()
        self.thread.join()
        self.flush()

    def _loop(self) -> None:
        while not self.stopped.wait(FLUSH_INTERVAL_S):
            self.flush()

    def flush(self) -> None:
        with self.lock:
            items, self.items = self.items, []
        try:
            kill = self.ray.get(self.channel.put.remote(items))
        except self.ray.exceptions.RayError:   # the engine is gone: nobody wants the run
            kill = (RunStatus.KILLED, "the engine that started this run is gone")
        if kill is not None and self.runner is not None:
            self.runner.kill(kill[1], kill[0])


def train_on_worker(job: dict, tree: bytes, data: list, channel) -> tuple[RunResult, bytes | None]:
    """The Ray task: unpack the commit, train and evaluate it with the local Runner in a
    temp dir, streaming the output. Returns the result and the evaluator's result file."""
    import ray
    outbox = _Outbox(ray, channel)
    outbox.add("started", {"pid": os.getpid(), "node_ip": ray.util.get_node_ip_address()})
    if job["fingerprint"] != harness_fingerprint():
        outbox.flush()
        return RunResult(run_id=job["run_id"], status=RunStatus.CRASH, message=(
            f"the Ray worker on {ray.util.get_node_ip_address()} has another version of "
            f"pairlab's harness or evaluator than the engine: install the engine's version on "
            f"every node")), None
    remove_abandoned_runs()
    with tempfile.TemporaryDirectory(prefix=f"{RUN_DIR_PREFIX}{os.getpid()}-") as scratch:
        root = Path(scratch) / "workspace"
        with tarfile.open(fileobj=io.BytesIO(tree)) as archive:
            archive.extractall(root, filter="data")
        data_dir = job["data_dir"] or (_node_data(ray, data[0], job["checksum"]) if data
                                       else None)
        # the run's folders where the local runner keeps them, inside the (readable) root
        runner = Runner(root, job["run_id"], job["budget_s"],
                        command=_worker_command(job["command"], job["engine_python"]),
                        data_dir=data_dir, **job["options"])
        outbox.start(runner)
        try:
            result = runner.run(on_lines=lambda lines: outbox.add("lines", lines),
                                on_progress=lambda *update: outbox.add("progress", update),
                                on_live=lambda text: outbox.add("live", text))
        finally:
            outbox.close()
        raw = runner.result_path.read_bytes() if runner.result_path.is_file() else None
    return result, raw


def _worker_command(command: list[str] | None, engine_python: str) -> list[str] | None:
    """The run command with the engine's interpreter replaced by this worker's."""
    if command is None:
        return None
    return [sys.executable if arg == engine_python else arg for arg in command]


def remove_abandoned_runs() -> None:
    """The temp dirs of runs whose worker died (a kill -9 skips their clean-up)."""
    for folder in Path(tempfile.gettempdir()).glob(f"{RUN_DIR_PREFIX}*"):
        pid = folder.name[len(RUN_DIR_PREFIX):].split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True        # another user's process
    return True


def _node_data(ray, ref, checksum: str | None) -> Path:
    """The shipped dataset in this node's temp dir, written by the first task that needs it."""
    folder = Path(tempfile.gettempdir()) / "pairlab-ray-data" / (checksum or "unversioned")
    if all((folder / name).is_file() for name in DATA_FILES):
        return folder
    files = ray.get(ref)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=folder.parent))
    for name, content in files.items():
        (staging / name).write_bytes(content)
    try:
        os.rename(staging, folder)   # whole or not at all; another task may have won
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
