"""The Ray executor: its pure parts directly, and the research loop against a real local
Ray cluster that this module starts (`ray start --head` on 127.0.0.1, 2 CPUs, stopped at the
end even on failure). Runs are the tiny CPU config of tests/conftest.py."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from engine.agents.tuner import TunerAgent
from engine.base.events import LogLines, Notice, RunFinished, RunStarted
from engine.base.git import run_git
from engine.base.records import RunStatus
from engine.journal import TSV_HEADER
from engine.scale import ray_executor, ray_worker
from engine.session import Session
from engine.workspace import Config, WorkspaceError
from pairlab import cli

SOURCE_ROOT = Path(__file__).resolve().parent.parent
RAY_TASK_TITLE = "ray::train_on_worker"     # a Ray worker's process title while it trains
PARENT_LINE = "trainer parent pid: "
CLUSTER_START_TIMEOUT_S = 180.0


# ---------------------------------------------------------------------- pure parts


def test_resources_parse_into_task_options():
    resources = ray_executor.parse_resources("num_cpus=1, num_gpus=0.5,accelerator_a100=1")
    assert resources == {"num_cpus": 1.0, "num_gpus": 0.5, "accelerator_a100": 1.0}
    assert ray_executor.task_options(resources) == {
        "num_cpus": 1.0, "num_gpus": 0.5, "resources": {"accelerator_a100": 1.0}}
    assert ray_executor.task_options({"num_gpus": 1.0}) == {"num_gpus": 1.0}


@pytest.mark.parametrize("text, message", [
    ("num_cpus", "'num_cpus' is not NAME=AMOUNT"),
    ("num_cpus=two", "the amount of num_cpus is not a number: 'two'"),
    ("num_gpus=-1", "the amount of num_gpus must be 0 or more"),
    (" , ", "--ray-resources is empty"),
])
def test_bad_resources_are_refused_with_what_is_wrong(text, message):
    with pytest.raises(ValueError, match=message):
        ray_executor.parse_resources(text)


def test_a_cluster_without_the_resource_is_named_before_anything_waits_on_it():
    cluster = {"CPU": 2.0, "memory": 1e9}
    problem = ray_executor.missing_resources({"num_gpus": 1.0}, cluster)
    assert problem == ("each run asks the Ray cluster for num_gpus=1, and the cluster has 0 "
                       "GPU in all (on CPU workers: --ray-resources num_cpus=1,num_gpus=0)")
    assert "has 0 tpu" in ray_executor.missing_resources({"tpu": 1.0}, cluster)
    assert ray_executor.missing_resources({"num_cpus": 2.0, "num_gpus": 0.0}, cluster) is None


def test_engine_imports_without_ray_and_the_cli_says_what_to_install(tmp_path):
    script = ("import sys; sys.modules['ray'] = None\n"   # as if Ray were not installed
              "import engine.session, engine.loop.outcomes, engine.scale.ray_executor\n"
              "from pairlab import cli\n"
              "sys.exit(cli.main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", script, "headless", "--executor", "ray",
                           "--workspace", str(tmp_path / "ws")],
                          capture_output=True, text=True, cwd=SOURCE_ROOT, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "--executor ray needs Ray, which is not installed: pip install 'pairlab[ray]'" \
        in proc.stderr


def test_ray_flags_without_the_ray_executor_are_refused():
    args = cli.build_parser().parse_args(["--ray-address", "10.0.0.5:6379"])
    with pytest.raises(cli.UserError, match="--ray-address goes with --executor ray"):
        cli.executor_settings(args, Config())


def test_the_workspace_config_can_choose_the_ray_executor(tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed: pip install 'pairlab[ray]'")
    path = tmp_path / "config.json"
    Config(executor="ray", ray_address="10.0.0.5:6379", ray_resources="num_cpus=1").save(path)
    settings = cli.executor_settings(cli.build_parser().parse_args([]), Config.load(path))
    assert settings == {"executor": "ray", "ray_address": "10.0.0.5:6379",
                        "ray_resources": {"num_cpus": 1.0}, "ray_data_dir": None}
    flags = cli.build_parser().parse_args(["--ray-resources", "num_gpus=2"])
    assert cli.executor_settings(flags, Config.load(path))["ray_resources"] == {"num_gpus": 2.0}
    with pytest.raises(WorkspaceError, match="executor is 'slurm'; it must be local or ray"):
        Config(executor="slurm")


# ---------------------------------------------------------------------- a real cluster


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


HEADS: dict[str, int] = {}    # the address of a cluster these tests started -> its head's pid


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """The address of a local Ray head with 2 CPUs, its workers importing this checkout
    (or of the cluster $PAIRLAB_TEST_RAY_ADDRESS names, whose workers must import it too)."""
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'pairlab[ray]'")
    if os.environ.get("PAIRLAB_TEST_RAY_ADDRESS"):
        yield os.environ["PAIRLAB_TEST_RAY_ADDRESS"]
        return
    port = _free_port()
    temp_dir = tmp_path_factory.mktemp("ray")
    ray_cli = Path(sys.executable).with_name("ray")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(SOURCE_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "RAY_USAGE_STATS_ENABLED": "0"}
    log = open(temp_dir / "ray-start.log", "wb")
    head = subprocess.Popen(
        [str(ray_cli), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
         "--port", str(port), "--num-cpus", "2", "--include-dashboard=false",
         "--disable-usage-stats", "--temp-dir", str(temp_dir)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"127.0.0.1:{port}"
    HEADS[address] = head.pid
    try:
        deadline = time.monotonic() + CLUSTER_START_TIMEOUT_S
        while True:
            assert head.poll() is None, (temp_dir / "ray-start.log").read_text()
            try:
                ray.init(address=address, log_to_driver=False)
                break
            except ConnectionError:
                assert time.monotonic() < deadline, "the Ray head did not come up"
                time.sleep(0.5)
        yield address
    finally:
        if ray.is_initialized():
            ray.shutdown()
        os.killpg(head.pid, signal.SIGTERM)     # the head and everything it started
        try:
            head.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(head.pid, signal.SIGKILL)   # a draining raylet does not wait for us
        except ProcessLookupError:
            pass
        head.wait()
        log.close()
        ray_worker.remove_abandoned_runs()    # those of the workers the tests killed


@pytest.fixture
def ray_workspace(tiny_workspace):
    """The tiny workspace, its train.py saying which process started it."""
    train = tiny_workspace.root / "train.py"
    text = train.read_text().replace(
        "from nanochat import harness  # noqa: E402",
        f"from nanochat import harness  # noqa: E402\nprint(f\"{PARENT_LINE}{{os.getppid()}}\", "
        f"flush=True)", 1)
    assert PARENT_LINE in text
    tiny_workspace.commit_change({"train.py": text}, "say which process trains",
                                 parent=tiny_workspace.head())
    return tiny_workspace


def ray_settings(tiny_settings, address, **overrides):
    return tiny_settings(executor="ray", ray_address=address, ray_resources={"num_cpus": 1.0},
                         **overrides)


def training_task_pids(address: str) -> list[int]:
    """Ray workers of the cluster at `address` busy with a training task, found by the
    task's name. With pytest-xdist another worker's module may run a cluster of its own on
    this machine: only processes under this cluster's head count."""
    head = HEADS.get(address)
    ours = {child.pid for child in psutil.Process(head).children(recursive=True)} \
        if head is not None else None
    pids = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if cmdline and cmdline[0].startswith(RAY_TASK_TITLE) and (
                ours is None or proc.info["pid"] in ours):
            pids.append(proc.info["pid"])
    return pids


def trainers_on_workers() -> list[int]:
    """train.py processes running in a Ray task's temp dir on this machine."""
    scratch = os.path.join(tempfile.gettempdir(), ray_worker.RUN_DIR_PREFIX)
    pids = []
    for proc in psutil.process_iter(["pid", "cmdline", "cwd"]):
        if (proc.info["cwd"] or "").startswith(scratch) and \
                any(arg.endswith("train.py") for arg in proc.info["cmdline"] or []):
            pids.append(proc.info["pid"])
    return pids


class RunWatcher:
    """Records every event and, when a run's train.py says it started, which Ray worker is
    busy with the training task then (with its descendants)."""

    def __init__(self, address: str, on_trainer_started=None):
        self.address = address
        self.events: list = []
        self.task_pids: dict[str, list[int]] = {}   # run id -> training workers then
        self.task_family: dict[str, set[int]] = {}  # run id -> those and their descendants
        self.trainers: dict[str, list[int]] = {}    # run id -> train.py in a task's temp dir
        self.on_trainer_started = on_trainer_started

    def __call__(self, event) -> None:
        self.events.append(event)
        if isinstance(event, LogLines) and event.run_id not in self.task_pids and \
                any(line.startswith(PARENT_LINE) for line in event.lines):
            self.task_pids[event.run_id] = pids = training_task_pids(self.address)
            self.task_family[event.run_id] = set(pids) | {
                child.pid for pid in pids for child in psutil.Process(pid).children(True)}
            self.trainers[event.run_id] = trainers_on_workers()
            if self.on_trainer_started is not None:
                self.on_trainer_started(event, pids)

    def of(self, kind) -> list:
        return [e for e in self.events if isinstance(e, kind)]

    def lines(self, run_id: str) -> list[str]:
        return [line for e in self.of(LogLines) if e.run_id == run_id for line in e.lines]


def test_runs_train_on_ray_workers_and_a_killed_worker_loses_nothing(
        ray_cluster, ray_workspace, tiny_settings):
    """One session (the runs are what costs): the baseline, an experiment whose worker is
    killed with SIGKILL mid-run, and that experiment trained again."""
    experiments: set[str] = set()
    killed: list[int] = []

    def kill_the_first_experiments_worker(event, task_pids):
        if event.run_id in experiments and not killed:
            (worker,) = task_pids
            os.kill(worker, signal.SIGKILL)
            killed.append(worker)

    def note_experiments(event):
        if isinstance(event, RunStarted) and event.proposal_id is not None:
            experiments.add(event.run_id)

    watcher = RunWatcher(ray_cluster, kill_the_first_experiments_worker)
    session = Session(ray_workspace, TunerAgent(),
                      ray_settings(tiny_settings, ray_cluster, max_experiments=1), monitor=False)
    session.subscribe(note_experiments)   # before the watcher: the run is known at its lines
    session.subscribe(watcher)
    session.start()
    assert session.wait(timeout=900)
    assert killed, "no experiment's worker was found training"

    finished = watcher.of(RunFinished)
    assert [(e.experiment.kind, e.result.status) for e in finished][:2] == [
        ("baseline", RunStatus.KEEP), ("experiment", RunStatus.INTERRUPTED)]
    assert len(finished) == 3 and finished[2].experiment.kind == "experiment"
    for event in finished:
        run_id = event.result.run_id
        # trained by a Ray worker, not by the engine: train.py descends from the worker that
        # was busy with the training task when its first line arrived, mid-run (its own
        # getppid() is its PID namespace's init when it runs confined: 1)
        (worker,) = watcher.task_pids[run_id]
        assert worker != os.getpid()
        assert set(watcher.trainers[run_id]) & watcher.task_family[run_id], run_id
        (parent,) = [int(line[len(PARENT_LINE):]) for line in watcher.lines(run_id)
                     if line.startswith(PARENT_LINE)]
        # the lines streamed in before the result, as they do locally, and are in its log
        first_lines = next(i for i, e in enumerate(watcher.events)
                           if isinstance(e, LogLines) and e.run_id == run_id)
        assert first_lines < watcher.events.index(event)
        assert f"{PARENT_LINE}{parent}" in Path(event.result.log_path).read_text()
    assert watcher.task_pids[finished[1].result.run_id] == killed
    # judged from the evaluator's metric on the worker, as locally
    for event in (finished[0], finished[2]):
        assert event.result.val_bpb is not None and event.result.metric_verified
    assert finished[2].result.status in (RunStatus.KEEP, RunStatus.DISCARD)

    runs = session.journal.run_rows()
    assert runs[1]["proposal_id"] == runs[2]["proposal_id"]     # the same proposal, again
    assert "the Ray worker running it was lost (WorkerCrashedError)" in runs[1]["message"]
    assert any(isinstance(e, Notice) and "was interrupted" in e.message for e in watcher.events)
    # nothing lost: one experiment counted, results.tsv and git agree with the journal
    assert session.journal.experiment_count() == 1
    rows = (ray_workspace.root / "results.tsv").read_text().splitlines()
    assert rows[0] + "\n" == TSV_HEADER and len(rows) == 3
    assert rows[2].split("\t")[3] == runs[2]["status"]
    assert ray_workspace.head() == session.best[0]
    assert run_git(ray_workspace.root, "status", "--porcelain", "--untracked-files=no") == b""
    assert trainers_on_workers() == []   # the killed run's train.py died with its worker
    # and its temp dir went with the next run on the node
    assert not list(Path(tempfile.gettempdir()).glob(f"{ray_worker.RUN_DIR_PREFIX}{killed[0]}-*"))


STAND_IN = '''\
import sys, time
for step in range(3):
    print(f"step {step:05d} ({step * 10:.1f}%) | loss: 5.0 | remaining: 60s", flush=True)
print("waiting to be killed", flush=True)
time.sleep(120)
'''


def stand_in_runner(workspace, address, run_id, **resources):
    """A RayRunner on a workspace whose train.py prints three progress lines and sleeps."""
    workspace.commit_change({"train.py": STAND_IN}, "stand-in", parent=workspace.head())
    target = ray_executor.RayTarget(address, resources or {"num_cpus": 1.0})
    return ray_executor.RayRunner(target, workspace.root, run_id, 60.0, device="cpu",
                                  term_grace_s=2.0)


def test_a_killed_ray_run_stops_on_its_worker_and_says_why(ray_cluster, tiny_workspace):
    runner = stand_in_runner(tiny_workspace, ray_cluster, "kill-1")
    progress = []

    def on_lines(lines):
        if "waiting to be killed" in lines:
            runner.kill("killed by the user", RunStatus.KILLED)

    result = runner.run(on_lines=on_lines, on_progress=lambda *p: progress.append(p))
    assert result.status is RunStatus.KILLED and result.message == "killed by the user"
    assert [p[0] for p in progress] == [0, 1, 2]        # progress parsed on the worker
    assert "waiting to be killed" in Path(result.log_path).read_text()
    assert runner.worker_pid not in (None, os.getpid())
    assert trainers_on_workers() == []


def test_a_request_the_cluster_cannot_meet_fails_at_once(ray_cluster, tiny_workspace):
    runner = stand_in_runner(tiny_workspace, ray_cluster, "gpu-1", num_gpus=1.0)
    result = runner.run()
    assert result.status is RunStatus.CRASH
    assert result.message.startswith("each run asks the Ray cluster for num_gpus=1, and the "
                                     "cluster has 0 GPU in all")


def test_a_worker_with_another_harness_refuses_to_train(ray_cluster, tiny_workspace):
    runner = stand_in_runner(tiny_workspace, ray_cluster, "version-1")
    runner.job["fingerprint"] = "the engine's harness differs"
    result = runner.run()
    assert result.status is RunStatus.CRASH
    assert "has another version of pairlab's harness or evaluator than the engine" \
        in result.message
    assert "waiting to be killed" not in Path(result.log_path).read_text()


def test_a_run_that_loses_its_worker_every_time_becomes_a_crash(ray_cluster, tiny_workspace,
                                                               tiny_settings):
    tiny_workspace.commit_change({"train.py": STAND_IN}, "stand-in", parent=tiny_workspace.head())
    killed: list[tuple[str, int]] = []    # (run id, its worker's pid)

    def kill_every_worker(event):
        if isinstance(event, LogLines) and event.run_id not in {run for run, _ in killed}:
            (worker,) = training_task_pids(ray_cluster)
            os.kill(worker, signal.SIGKILL)
            killed.append((event.run_id, worker))

    session = Session(tiny_workspace, TunerAgent(),
                      ray_settings(tiny_settings, ray_cluster, max_experiments=1), monitor=False)
    notices = []
    session.subscribe(lambda e: notices.append(e) if isinstance(e, Notice) else None)
    session.subscribe(kill_every_worker)
    session.start()
    try:
        # auto mode with no app attached: it gives up by stopping, as a failure
        assert session.wait(timeout=300), "the loop did not give up on the baseline"
    finally:
        session.stop()
    assert session.failed
    runs = session.journal.run_rows()
    assert [(r["kind"], r["status"]) for r in runs] == [("baseline", "interrupted")] * 3 + [
        ("baseline", "crash")]
    assert len(killed) == 4
    assert runs[3]["message"].endswith("(4 times in a row: not again)")
    assert any(n.level == "error" and "the baseline did not train" in n.message
               for n in notices)
