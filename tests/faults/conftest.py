"""Shared helpers of the fault-injection suite: real subprocesses, real git, real SQLite.

A fault test drives a real Session (or a real `python -m pairlab headless` process) into one
fault and then checks the four promises of issue 5:

  (a) the loop goes on, or pauses with a specific message where going on would be wrong;
  (b) the journal has every row it had, plus the new outcome (`assert_nothing_lost`);
  (c) git matches the journal (`assert_git_matches_journal`);
  (d) what the user sees says what happened and what to do (`FaultOutcome.notices`, the
      RunFinished message, or the headless output).

Import the helpers with `from tests.faults.conftest import ...`. The fixture
`baselined_workspace` is a copy of a workspace whose baseline already trained once per test
session, so a fault test pays only for the run it breaks.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from engine.base.events import Event, Notice, RunFinished, RunStarted
from engine.journal import Journal
from engine.service.server import EngineService, socket_path
from engine.session import Session, SessionSettings
from engine.workspace import Workspace
from tests.conftest import PRECISIONS, TINY_ENV, tiny_train_py

# Fixed steps and small timeouts: every fault here resolves in a few seconds. No
# speculative training: each fault test counts the runs it causes (tests/test_speculation.py).
FAULT_SETTINGS = dict(mode="review", budget_s=5.0, max_steps=4, noise_repeats=0,
                      device="cpu", extra_env=dict(TINY_ENV), hard_timeout_s=60.0,
                      speculate=False, first_start_check=False)
WAIT_S = 90.0


def wait_for(predicate: Callable[[], object], timeout: float = WAIT_S,
             what: str = "condition") -> object:
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


def fault_settings(dataset_dir: Path, **overrides) -> SessionSettings:
    values = dict(FAULT_SETTINGS, data_dir=dataset_dir, extra_env=dict(TINY_ENV))
    values.update(overrides)
    return SessionSettings(**values)


# ---------------------------------------------------------------------- workspaces

def precision_settings(dataset_dir: Path, precision: str, **overrides) -> SessionSettings:
    """fault_settings on one precision path of train.py (PAIRLAB_PRECISION)."""
    return fault_settings(dataset_dir, extra_env={**TINY_ENV, "PAIRLAB_PRECISION": precision},
                          **overrides)


def baselined(root: Path, settings: SessionSettings) -> Path:
    """A tiny workspace at root whose baseline has trained under settings (auto mode, no
    experiment) and been kept: journal, results.tsv."""
    from engine import workspace as ws_module
    from engine.agents.tuner import TunerAgent
    ws = ws_module.init(root, tag="faults")
    train = ws.root / "train.py"
    ws.commit_change({"train.py": tiny_train_py(train.read_text())}, "tiny config for tests",
                     parent=ws.head())
    session = Session(ws, TunerAgent(), settings, monitor=False)
    session.start()
    assert session.wait(timeout=WAIT_S), "the template's baseline did not finish"
    assert session.best, "the template's baseline did not produce a metric"
    session.journal.close()
    return ws.root


def copy_of(template: Path, tmp_path: Path) -> Workspace:
    """A private copy of a template workspace: git, journal and results.tsv included."""
    root = tmp_path / "ws"
    shutil.copytree(template, root, symlinks=True)
    return Workspace.open(root)


@pytest.fixture(scope="session")
def baselined_template(tmp_path_factory, dataset_dir) -> Path:
    return baselined(tmp_path_factory.mktemp("template") / "ws",
                     fault_settings(dataset_dir, mode="auto", max_experiments=0))


@pytest.fixture
def baselined_workspace(baselined_template, tmp_path) -> Workspace:
    """A private copy of the baselined template."""
    return copy_of(baselined_template, tmp_path)


@pytest.fixture(scope="session", params=PRECISIONS, ids=lambda p: f"PAIRLAB_PRECISION={p}")
def precision(request) -> str:
    """tests/conftest.py's `precision`, once per session: the templates trained on each path
    are shared by the tests that use them."""
    return request.param


@pytest.fixture(scope="session")
def precision_template(tmp_path_factory, dataset_dir, precision) -> Path:
    return baselined(tmp_path_factory.mktemp(f"template-{precision}") / "ws",
                     precision_settings(dataset_dir, precision, mode="auto", max_experiments=0))


@pytest.fixture
def precision_workspace(precision_template, tmp_path) -> Workspace:
    """baselined_workspace on the `precision` path: its baseline trained with it."""
    return copy_of(precision_template, tmp_path)


# ---------------------------------------------------------------------- the journal

def journal_snapshot(workspace: Workspace | Path) -> dict[str, list[dict]]:
    """Every row of every journal table, read through a separate connection."""
    root = workspace.root if isinstance(workspace, Workspace) else Path(workspace)
    path = root / ".pairlab" / "journal.db"
    if not path.exists():
        return {}
    db = sqlite3.connect(path, timeout=10)
    db.row_factory = sqlite3.Row
    try:
        tables = [r[0] for r in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {t: [dict(r) for r in db.execute(f"SELECT * FROM {t} ORDER BY rowid")]
                for t in tables}
    finally:
        db.close()


def run_rows(snapshot: dict[str, list[dict]]) -> list[dict]:
    return sorted(snapshot.get("runs", []), key=lambda r: r["experiment"])


def assert_nothing_lost(before: dict[str, list[dict]], after: dict[str, list[dict]],
                        new_runs: int = 1) -> list[dict]:
    """Every row `before` had is still there (finished runs, decisions and notices unchanged;
    proposals by id, since their state moves on), and exactly `new_runs` runs were added.
    Returns the added runs, oldest first."""
    def by_id(rows, key="id"):
        return {r[key]: r for r in rows}
    for table in ("runs", "decisions", "notices"):
        old, new = by_id(before.get(table, [])), by_id(after.get(table, []))
        for key, row in old.items():
            assert key in new, f"{table} row {key} was lost"
            if table == "runs" and row["status"] == "running":
                continue              # a run in flight may since have been marked interrupted
            assert new[key] == row, f"{table} row {key} changed:\n{row}\n->\n{new[key]}"
    old_proposals = {r["id"] for r in before.get("proposals", [])}
    assert old_proposals <= {r["id"] for r in after.get("proposals", [])}, "a proposal was lost"
    old_runs = {r["id"] for r in before.get("runs", [])}
    added = [r for r in run_rows(after) if r["id"] not in old_runs]
    assert len(added) == new_runs, f"expected {new_runs} new run(s), got {added}"
    return added


def assert_git_matches_journal(workspace: Workspace | Path) -> str:
    """The research branch is checked out and stands on the journal's best commit, the
    target files are clean, and results.tsv is exactly what the journal says. Returns head."""
    root = workspace.root if isinstance(workspace, Workspace) else Path(workspace)
    ws = Workspace.open(root)
    journal = Journal(ws.pairlab_dir / "journal.db")
    try:
        best = journal.best()
        expected_tsv = journal.results_tsv()
    finally:
        journal.close()
    branch = subprocess.run(["git", "symbolic-ref", "--short", "HEAD"], cwd=root,
                            capture_output=True, text=True).stdout.strip()
    assert branch == ws.branch, f"on {branch!r}, not the research branch {ws.branch}"
    head = ws.head()
    assert best is not None and head == best.commit, \
        f"branch head {head[:7]} is not the journal's best {best and best.commit[:7]}"
    assert ws.dirty_targets() == [], f"target files differ from the head: {ws.dirty_targets()}"
    for target in ws.config.targets:
        assert (root / target).read_text() == ws.file_at(head, target)
    assert ws.results_tsv_path.read_text() == expected_tsv, "results.tsv disagrees with the journal"
    return head


def results_rows(workspace: Workspace) -> list[list[str]]:
    """results.tsv without its header, split into columns."""
    lines = workspace.results_tsv_path.read_text().splitlines()
    return [line.split("\t") for line in lines[1:]]


def stash_list(workspace: Workspace) -> list[str]:
    out = subprocess.run(["git", "stash", "list", "--format=%H %gs"], cwd=workspace.root,
                         capture_output=True, text=True, check=True).stdout
    return out.splitlines()


# ---------------------------------------------------------------------- driving a Session

@dataclass
class FaultOutcome:
    """What one fault left behind."""

    session: Session
    events: list[Event]
    before: dict[str, list[dict]]
    after: dict[str, list[dict]]
    proposal_id: int
    head: str = ""
    extra: dict = field(default_factory=dict)     # whatever a `during` hook returned

    @property
    def finished(self) -> RunFinished:
        """The RunFinished of the faulty proposal."""
        return next(e for e in self.events if isinstance(e, RunFinished)
                    and e.experiment.proposal_id == self.proposal_id)

    @property
    def notices(self) -> list[Notice]:
        return [e for e in self.events if isinstance(e, Notice)]

    def notice_text(self) -> str:
        return "\n".join(f"{n.level}: {n.message} ({n.hint})" for n in self.notices)

    @property
    def next_proposals(self) -> list[int]:
        """Proposals after the faulty one, drafted or restored, waiting once it was judged:
        the loop went on."""
        return self.extra.get("next proposals", [])


def edit_first_proposal(session: Session, transform: Callable[[str], str]) -> int:
    """Wait for the first proposal under review and replace its train.py with
    transform(agent's text); the human's edit is what trains. Returns the proposal id."""
    proposal = wait_for(lambda: (session.pending() or [None])[0], what="a proposal")
    text = session.proposal_text(proposal.id, "train.py")
    session.edit(proposal.id, {"train.py": transform(text)})
    return proposal.id


def run_fault(workspace: Workspace, settings: SessionSettings,
              transform: Callable[[str], str] | None = None, *,
              during: Callable[[Session, RunStarted], object] | None = None,
              agent=None, expect: str = "next proposal", proposal_id: int | None = None,
              check_git: bool = True, timeout: float = WAIT_S,
              serve: bool = False) -> FaultOutcome:
    """Drive one experiment into a fault and stop once the loop has shown what it does next.

    transform: the train.py the first proposal trains (review mode + edit); None accepts
        the agent's proposal as it is.
    during: called on the test thread once the faulty run has started (e.g. to edit files
        or kill things); its return value lands in FaultOutcome.extra["during"].
    expect: "next proposal" (the loop went on: a new proposal was drafted after the outcome),
        "paused" (the loop paused with a message) or "stopped" (the loop stopped itself).
    proposal_id: a proposal the journal already has queued (accepted before a restart):
        nothing is drafted or decided, the test waits for that proposal's outcome.
    check_git: False where git cannot match yet (a stop on a full disk, fixed by a restart).
    serve: the session also serves its socket in .pairlab/, as the engine process does.
    """
    from engine.agents.tuner import TunerAgent
    before = journal_snapshot(workspace)
    session = Session(workspace, agent or TunerAgent(), settings, monitor=False)
    events: list[Event] = []
    session.subscribe(events.append)
    service = EngineService(session, socket_path(workspace.pairlab_dir)) if serve else None
    if service is not None:
        service.start()
    session.start()
    extra = {}
    try:
        if proposal_id is not None:
            pass
        elif transform is None:
            proposal_id = wait_for(lambda: (session.pending() or [None])[0],
                                   what="a proposal").id
            session.accept(proposal_id)
        else:
            proposal_id = edit_first_proposal(session, transform)
        if during is not None:
            started = wait_for(lambda: next((e for e in events if isinstance(e, RunStarted)
                                             and e.proposal_id == proposal_id), None),
                               timeout=timeout, what="the run to start")
            extra["during"] = during(session, started)
        if expect != "stopped":
            wait_for(lambda: any(isinstance(e, RunFinished) and e.experiment.proposal_id ==
                                 proposal_id for e in events), timeout=timeout,
                     what=f"the outcome of proposal {proposal_id}")
        if expect == "stopped":
            wait_for(lambda: session.stopped and session.wait(timeout=0.1), timeout=timeout,
                     what="the loop to stop itself")
        elif expect == "next proposal":
            extra["next proposals"] = wait_for(
                lambda: [p.id for p in session.pending() if p.id > proposal_id],
                timeout=timeout, what="the next proposal")
            assert not session.paused, f"the loop paused: {session.state}"
        elif expect == "paused":
            wait_for(lambda: session.paused, timeout=timeout, what="the loop to pause")
        else:
            raise ValueError(f"expect must be 'next proposal', 'paused' or 'stopped', "
                             f"not {expect!r}")
    finally:
        session.stop()
        if service is not None:
            service.close()
    outcome = FaultOutcome(session, events, before, journal_snapshot(workspace), proposal_id,
                           extra=extra)
    session.journal.close()
    if check_git:
        outcome.head = assert_git_matches_journal(workspace)
    return outcome


def prepend(text: str, code: str) -> str:
    """train.py with `code` first: it runs before torch is even imported (fast faults)."""
    return f"{code}\n{text}"


# ---------------------------------------------------------------------- headless processes

def headless(workspace: Workspace | Path, dataset_dir: Path, *args: str,
             env: dict[str, str] | None = None, preexec_fn=None,
             max_steps: int = 4) -> subprocess.Popen:
    """`python -m pairlab headless` on the workspace with the tiny config, stdout/stderr piped."""
    root = workspace.root if isinstance(workspace, Workspace) else Path(workspace)
    full_env = dict(os.environ, **TINY_ENV, PAIRLAB_DATA_DIR=str(dataset_dir),
                    PAIRLAB_MAX_STEPS=str(max_steps))
    full_env.pop("ANTHROPIC_API_KEY", None)
    full_env.update(env or {})
    return subprocess.Popen(
        [sys.executable, "-m", "pairlab", "headless", "--workspace", str(root),
         "--agent", "tuner", "--budget", "5", "--noise-repeats", "0", *args],
        env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=preexec_fn, cwd=Path(__file__).resolve().parents[2])
