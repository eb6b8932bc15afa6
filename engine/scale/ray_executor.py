"""Training runs as Ray tasks on an existing cluster (`--executor ray`).

`RayRunner` has the local `Runner`'s interface, so the coordinator does not care which one
it holds. At launch it takes the checked-out commit's files (a `git archive` of HEAD, on the
coordinator's thread, so git cannot move under it) and sends them as content: nothing goes
through a shared file system. The task (`train_on_worker`, engine/scale/ray_worker.py) unpacks
them into a temp dir on the worker and runs the local `Runner` there, so train.py is
confined as it is locally and the trusted evaluator on the worker scores the handed-over
model: the metric is computed exactly as on one machine.

Streaming: the task hands its log lines, progress updates and live line to a small actor
(`LogChannel`) every FLUSH_INTERVAL_S; the engine side takes them every POLL_INTERVAL_S and
calls the same callbacks the local runner calls, and writes the run's log on the engine's
machine. A kill goes the other way, as the answer to the task's next hand-over.

Data: the prepared dataset is put into the object store once per engine process (per
checksum) and written once per node into that node's temp dir. With `data_dir` set on the
target the workers read a path the cluster shares instead, and nothing is shipped.

A lost worker, node or actor (Ray's WorkerCrashedError, NodeDiedError, RayActorError, ...)
comes back as an INTERRUPTED result: the coordinator re-queues the run. Ray's own retries are
off, so the re-run is the coordinator's and shows in the journal.

Every node needs pairlab installed, the same version as the engine: a task whose worker has
a different harness or evaluator refuses to train (a different evaluator is a different
metric). Ray itself is optional: it is imported only when a run starts on a cluster.
"""

from __future__ import annotations

import functools
import math
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from engine.base.git import run_git
from engine.base.records import RunResult, RunStatus
from engine.run.judging import TAIL_LINES
from engine.run.runner import Runner, run_paths
from engine.scale.ray_worker import DATA_FILES, LogChannel, harness_fingerprint, train_on_worker
from engine.workspace import WorkspaceError

INSTALL_HINT = "pip install 'pairlab[ray]'"
DEFAULT_RESOURCES = {"num_gpus": 1.0}     # one accelerator per run, as a local slot has
POLL_INTERVAL_S = 0.1                     # the engine takes the task's output this often
KILL_WAIT_S = 15.0                        # a killed task that has not stopped is cancelled
MAX_TREE_BYTES = 64 << 20                 # the commit's files, sent with every run
# What --ray-resources names directly; any other name is a custom resource of the cluster.
RESOURCE_OPTIONS = {"num_cpus": "CPU", "num_gpus": "GPU", "memory": "memory"}


class RayUnavailable(Exception):
    """Ray is not installed: the message says what to install."""


def import_ray():
    try:
        import ray
    except ImportError as exc:
        raise RayUnavailable(f"--executor ray needs Ray, which is not installed: "
                             f"{INSTALL_HINT}") from exc
    return ray


# ---------------------------------------------------------------------- settings


@dataclass(frozen=True)
class RayTarget:
    """Where and how runs go: the cluster, each task's resources, the data's path there."""

    address: str | None = None                 # None: the cluster this machine is part of
    resources: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_RESOURCES))
    data_dir: str | None = None                # a path every worker reads; None: ship the data


def parse_resources(text: str) -> dict[str, float]:
    """'num_cpus=1,num_gpus=0' (and custom resources, 'accelerator_type_a100=1') as a dict;
    ValueError saying what is wrong."""
    resources: dict[str, float] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, sep, value = (s.strip() for s in item.partition("="))
        if not sep or not name:
            raise ValueError(f"--ray-resources: {item!r} is not NAME=AMOUNT (e.g. num_cpus=1)")
        try:
            amount = float(value)
        except ValueError:
            raise ValueError(f"--ray-resources: the amount of {name} is not a number: "
                             f"{value!r}") from None
        if not math.isfinite(amount) or amount < 0:
            raise ValueError(f"--ray-resources: the amount of {name} must be 0 or more, "
                             f"not {value}")
        resources[name] = amount
    if not resources:
        raise ValueError("--ray-resources is empty: give e.g. num_cpus=1 or num_gpus=1")
    return resources


def task_options(resources: dict[str, float]) -> dict:
    """Ray's .options() for a task that needs these resources."""
    options = {name: amount for name, amount in resources.items() if name in RESOURCE_OPTIONS}
    custom = {name: amount for name, amount in resources.items() if name not in RESOURCE_OPTIONS}
    return {**options, "resources": custom} if custom else options


def missing_resources(wanted: dict[str, float], cluster: dict[str, float]) -> str | None:
    """Why no node of the cluster can ever run the task (its totals lack a resource), in
    words; None when the cluster has enough."""
    for name, amount in wanted.items():
        key = RESOURCE_OPTIONS.get(name, name)
        have = cluster.get(key, 0.0)
        if amount > have:
            hint = (" (on CPU workers: --ray-resources num_cpus=1,num_gpus=0)"
                    if key == "GPU" else "")
            return (f"each run asks the Ray cluster for {name}={amount:g}, and the cluster "
                    f"has {have:g} {key} in all{hint}")
    return None


def runner_class(settings):
    """What builds this session's runs: the local Runner, or RayRunner on its cluster."""
    if settings.executor == "local":
        return Runner
    import_ray()
    target = RayTarget(settings.ray_address, dict(settings.ray_resources or DEFAULT_RESOURCES),
                       str(settings.ray_data_dir) if settings.ray_data_dir else None)
    return functools.partial(RayRunner, target)


# ---------------------------------------------------------------------- the engine's side


class _Cluster:
    """The engine process's connection (ray.init is once per process) and what it shipped."""

    def __init__(self):
        self.lock = threading.Lock()
        self.data: dict[tuple[str, str | None], object] = {}   # (dir, checksum) -> ObjectRef
        self.remote = None                                     # (channel actor, task)

    def connect(self, address: str | None):
        ray = import_ray()
        with self.lock:
            if not ray.is_initialized():
                self.data.clear()
                self.remote = None
                # An existing cluster only ("auto": the one this machine belongs to): a
                # cluster started on the fly would train on the engine's own machine.
                try:
                    ray.init(address=address or "auto", log_to_driver=False)
                except Exception as exc:   # Ray says ConnectionError, or RuntimeError, or ...
                    raise ConnectionError(str(exc).strip().splitlines()[-1]) from exc
            if self.remote is None:
                self.remote = (ray.remote(num_cpus=0)(LogChannel),
                               ray.remote(max_retries=0)(train_on_worker))
        return ray

    def data_ref(self, ray, data_dir: Path, checksum: str | None):
        key = (str(data_dir), checksum)
        with self.lock:
            if key not in self.data:
                files = {name: (Path(data_dir) / name).read_bytes() for name in DATA_FILES
                         if (Path(data_dir) / name).is_file()}
                self.data[key] = ray.put(files)
            return self.data[key]


_CLUSTER = _Cluster()


def _lost_errors(ray) -> tuple[type, ...]:
    e = ray.exceptions
    return (e.WorkerCrashedError, e.NodeDiedError, e.LocalRayletDiedError, e.RayActorError,
            e.ObjectLostError)


class RayRunner:
    """One training run as a Ray task. `run()` blocks (the session calls it in a thread);
    `kill()` may be called from any other thread. `pid` is None: the trainer runs on
    another machine; `worker_pid` and `node_ip` say where, once the task has started."""

    def __init__(self, target: RayTarget, workspace_root: str | Path, run_id: str,
                 budget_s: float, *, command: list[str] | None = None,
                 data_dir: str | Path | None = None, log_path: str | Path | None = None,
                 result_path: str | Path | None = None, term_grace_s: float = 5.0,
                 **options):
        """options: the local Runner's other keyword arguments (env, device, grace_s,
        hard_timeout_s, metric_source, expected_checksum, ...), applied on the worker."""
        self.target = target
        self.workspace_root = Path(workspace_root)
        self.run_id = run_id
        self.budget_s = float(budget_s)
        self.data_dir = Path(data_dir) if data_dir else None
        self.log_path, self.result_path = run_paths(self.workspace_root, run_id, log_path,
                                                    result_path)
        self.term_grace_s = term_grace_s
        self.job = {"run_id": run_id, "budget_s": self.budget_s, "command": command,
                    "engine_python": sys.executable, "data_dir": target.data_dir,
                    "checksum": options.get("expected_checksum"),
                    "fingerprint": harness_fingerprint(),
                    "options": {**options, "term_grace_s": term_grace_s}}
        self.tree_error = ""
        try:   # now, on the coordinator's thread: the commit this run was launched for
            self.tree = run_git(self.workspace_root, "archive", "--format=tar", "HEAD")
        except WorkspaceError as exc:
            self.tree, self.tree_error = None, str(exc)
        self.worker_pid: int | None = None
        self.node_ip: str | None = None
        self._kill_request: tuple[RunStatus, str] | None = None
        self._tail: deque[str] = deque(maxlen=TAIL_LINES)

    @property
    def pid(self) -> None:
        return None

    def kill(self, message: str = "killed by the user",
             status: RunStatus = RunStatus.KILLED) -> None:
        """Stop the run from any thread; `run()` then returns `status` with `message`."""
        if self._kill_request is None:
            self._kill_request = (status, message)

    def run(self, on_lines=None, on_progress=None, on_start=None, on_live=None) -> RunResult:
        """Train once on the cluster, as Runner.run does locally. on_start is not called:
        the trainer's pid is another machine's."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.result_path.parent.mkdir(parents=True, exist_ok=True)
        self.result_path.unlink(missing_ok=True)   # a stale result must never count
        with open(self.log_path, "w", encoding="utf-8") as log_file:
            deliver = functools.partial(self._deliver, log_file, on_lines, on_progress, on_live)
            try:
                return self._run_on_cluster(deliver)
            except RayUnavailable as exc:
                return self._failed(RunStatus.CRASH, str(exc))
            except ConnectionError as exc:
                where = self.target.address or "auto (this machine's cluster)"
                return self._failed(RunStatus.CRASH, f"could not connect to the Ray cluster "
                                    f"at {where}: {exc}")

    def _run_on_cluster(self, deliver) -> RunResult:
        if self.tree is None:
            return self._failed(RunStatus.CRASH, f"could not read the commit's files: "
                                f"{self.tree_error}")
        if len(self.tree) > MAX_TREE_BYTES:
            return self._failed(RunStatus.CRASH, f"the commit's files are {len(self.tree):,} "
                                f"bytes, more than the {MAX_TREE_BYTES:,} sent with a Ray run")
        ray = _CLUSTER.connect(self.target.address)
        problem = missing_resources(self.target.resources, ray.cluster_resources())
        if problem:
            return self._failed(RunStatus.CRASH, problem)
        data = ([] if self.target.data_dir or self.data_dir is None
                else [_CLUSTER.data_ref(ray, self.data_dir, self.job["checksum"])])
        channel_class, task = _CLUSTER.remote
        channel = channel_class.remote()
        # data in a list: Ray does not fetch it for the task; a node that has it skips it
        ref = task.options(**task_options(self.target.resources)).remote(
            self.job, self.tree, data, channel)
        try:
            return self._follow(ray, ref, channel, deliver)
        except ray.exceptions.RayError as exc:
            deliver(_drain(ray, channel))
            if self._kill_request is not None:
                return self._failed(*self._kill_request)
            if isinstance(exc, _lost_errors(ray)):
                return self._failed(RunStatus.INTERRUPTED, f"the Ray worker running it was "
                                    f"lost ({type(exc).__name__}); it trains again")
            if isinstance(exc, ray.exceptions.OutOfMemoryError):
                return self._failed(RunStatus.CRASH, "out of memory: Ray's memory monitor "
                                    "killed the worker")
            cause = getattr(exc, "cause", None) or exc
            return self._failed(RunStatus.CRASH, f"the Ray task failed: "
                                f"{type(cause).__name__}: {str(cause).strip().splitlines()[-1]}")

    def _follow(self, ray, ref, channel, deliver) -> RunResult:
        """Deliver the task's output until it returns; forward a kill."""
        kill_sent_at = None
        while True:
            done, _ = ray.wait([ref], timeout=POLL_INTERVAL_S)
            if self._kill_request is not None and kill_sent_at is None:
                channel.request_kill.remote(*self._kill_request)
                kill_sent_at = time.monotonic()
            deliver(ray.get(channel.take.remote()))
            if done:
                break
            if kill_sent_at is not None and (
                    self.worker_pid is None   # not started: nothing to stop gracefully
                    or time.monotonic() - kill_sent_at > self.term_grace_s + KILL_WAIT_S):
                ray.cancel(ref, force=True)
                return self._failed(*self._kill_request)
        result, raw = ray.get(ref)
        deliver(ray.get(channel.take.remote()))   # what the task handed over before it returned
        if raw is not None:
            self.result_path.write_bytes(raw)      # the record, as the local runner keeps it
        result.log_path = str(self.log_path)
        return result

    def _deliver(self, log_file, on_lines, on_progress, on_live, items) -> None:
        for kind, payload in items:
            if kind == "started":
                self.worker_pid, self.node_ip = payload["pid"], payload["node_ip"]
                payload = [f"pairlab: training on Ray node {payload['node_ip']} "
                           f"(worker pid {payload['pid']})"]
                kind = "lines"
            if kind == "lines":
                log_file.write("".join(line + "\n" for line in payload))
                log_file.flush()
                self._tail.extend(payload)
                if on_lines is not None:
                    on_lines(payload)
            elif kind == "progress" and on_progress is not None:
                on_progress(*payload)
            elif kind == "live" and on_live is not None:
                on_live(payload)

    def _failed(self, status: RunStatus, message: str) -> RunResult:
        return RunResult(run_id=self.run_id, status=status, message=message,
                         log_tail="\n".join(self._tail), log_path=str(self.log_path))


def _drain(ray, channel) -> list:
    """What a lost task handed over before it was lost (nothing if the channel went too)."""
    try:
        return ray.get(channel.take.remote(), timeout=5)
    except ray.exceptions.RayError:
        return []
