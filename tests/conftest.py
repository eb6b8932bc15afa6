import os
import signal
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from engine.run import doctor
from nanochat import prepare

# ---------------------------------------------------------------------- nothing left behind

# Every process a test starts inherits this variable, daemons included (a tmux server, a
# Ray head, a detached engine): after the test, whatever still carries the test's tag is
# stopped, passed or failed; after the session, whatever carries the session's. The one
# exception is the engine's pre-imported evaluator (engine/run/evaluator_processes.py): it
# holds no run's settings, the tag included, and ends with the process that started it; the
# evaluations it forks take the run's environment, tag and all.
OWNER = "PAIRLAB_TEST_OWNER"
SESSION_TAG = f"pairlab-tests-{os.getpid()}-{uuid.uuid4().hex[:8]}"
os.environ[OWNER] = SESSION_TAG
left_behind: list[str] = []


def stop_tagged(tag: str, since: float = 0.0) -> list[str]:
    """SIGKILL every process started since `since` whose environment carries `tag` (or a
    tag under it); returns what each was."""
    me = os.getpid()
    found = []
    for proc in psutil.process_iter(["pid", "create_time", "name"]):
        if proc.pid == me or (proc.info["create_time"] or 0) < since - 1:
            continue
        try:
            owner = proc.environ().get(OWNER, "")
        except (psutil.Error, OSError):
            continue
        if owner == tag or owner.startswith(tag + "/"):
            found.append(proc)
    stopped = []
    for proc in found:
        try:
            stopped.append(f"{proc.pid} {' '.join(proc.cmdline())[:120]}")
            proc.send_signal(signal.SIGKILL)
        except (psutil.Error, OSError):
            continue
    for proc in found:
        try:
            proc.wait(timeout=5)       # reaps our own children; others just end
        except (psutil.Error, OSError):
            pass
    return stopped


@pytest.fixture(autouse=True)
def stops_what_it_started(request):
    tag = f"{SESSION_TAG}/{uuid.uuid4().hex[:8]}"
    os.environ[OWNER] = tag
    started = time.time()
    try:
        yield
    finally:
        os.environ[OWNER] = SESSION_TAG     # a module's fixture started later is the session's
        left_behind.extend(f"{request.node.nodeid}: {what}" for what in stop_tagged(tag, started))


# A test that asks for any of these trains the template for real (or starts a Ray cluster):
# an end-to-end test, which `make test-fast` leaves out. Others are marked where they are.
E2E_FIXTURES = {"tiny_workspace", "baselined_template", "fixed_step_runs", "ray_cluster",
                "precision"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if E2E_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)


def pytest_unconfigure(config):
    stopped = stop_tagged(SESSION_TAG)
    if left_behind or stopped:
        print(f"\npairlab tests: stopped {len(left_behind) + len(stopped)} processes the tests "
              f"left running:", *left_behind, *stopped, sep="\n  ", file=sys.stderr)


@pytest.fixture(scope="session")
def dataset_dir(tmp_path_factory) -> Path:
    """A prepared dataset dir (contracts §1) from the embedded default English corpus: vocab
    512, 1 MB of training text, the full fixed validation split (~230k tokens). About 2 s.

    The pinned archives are fetched once per machine into the real download cache
    ($PAIRLAB_CACHE or ~/.cache/pairlab/downloads); the dataset itself lives in a tmp dir."""
    return prepare.prepare_dataset(
        "default", cache_dir=prepare.resolve_cache_dir(), vocab_size=512, max_bytes=1_000_000,
        out_dir=tmp_path_factory.mktemp("data") / "default")


# ---------------------------------------------------------------------- tiny research loops

# The engine's tests train doctor's tiny config (a step in milliseconds) in fp32 on the CPU
# on every machine: their subject is the loop, and fixed numbers keep its decisions the same
# everywhere. Tests of training, hand-off and evaluation run both precisions (`precision`).
TINY_ENV = {**doctor.TINY_ENV, "PAIRLAB_PRECISION": "fp32", "PAIRLAB_DEVICE": "cpu"}
PRECISIONS = ("bf16", "fp32")


def tiny_train_py(source: str) -> str:
    """train.py with doctor's tiny constants in place of the template's values."""
    tiny = doctor.tiny_source(source, "cpu")
    assert tiny != source, "none of doctor.TINY_CONSTANTS is a constant of this train.py"
    return tiny


@pytest.fixture(params=PRECISIONS)
def precision(request) -> str:
    """Each training, hand-off and evaluation test once per path, whatever the CPU (bf16
    is emulated where the CPU lacks it: slow, but a tiny model keeps it to seconds)."""
    return request.param


@pytest.fixture
def tiny_workspace(tmp_path):
    """A real workspace (git repo, research branch) whose train.py is the tiny config."""
    from engine import workspace as ws_module
    ws = ws_module.init(tmp_path / "ws", tag="test")
    train = ws.root / "train.py"
    train.write_text(tiny_train_py(train.read_text()))
    ws.commit_change({"train.py": train.read_text()}, "tiny config for tests",
                     parent=ws.head())
    return ws


@pytest.fixture
def tiny_settings(dataset_dir):
    """SessionSettings for fast, deterministic runs: fixed steps, no noise repeats."""
    from engine.session import SessionSettings

    def make(**overrides):
        values = dict(mode="auto", budget_s=5.0, max_steps=6, noise_repeats=0, device="cpu",
                      data_dir=dataset_dir, extra_env=dict(TINY_ENV), hard_timeout_s=120.0,
                      first_start_check=False)   # tests/test_doctor.py runs it
        values.update(overrides)
        return SessionSettings(**values)
    return make


# ---------------------------------------------------------------------- hostile helpers

def processes_with(marker: str) -> list[int]:
    """Pids whose command line holds marker."""
    pids = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and marker.encode() in open(f"/proc/{entry}/cmdline", "rb").read():
                pids.append(int(entry))
        except OSError:
            continue
    return pids


@pytest.fixture
def marker():
    """A token for the command line of a process a test starts to outlive its run; whatever
    carries it is killed afterwards, so a failing test leaves nothing behind."""
    token = f"pairlab-test-{uuid.uuid4().hex}"
    yield token
    deadline = time.monotonic() + 120
    while (pids := processes_with(token)) and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
