"""The journal: every proposal, decision, run and notice, in SQLite at `.pairlab/journal.db`.

Every write is its own committed transaction (WAL, synchronous=FULL), so a `kill -9` of the
engine loses nothing that a method had returned from. One connection is shared by all
engine threads behind a lock; SQLite itself then never sees two writers from this process.
Text is passed through `redact` on the way in, so no API key ever reaches the disk.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from engine.agents.base import HistoryItem
from engine.journal_promotions import PROMOTION_SCHEMA, PromotionJournal
from engine.records import (
    Decision,
    DecisionKind,
    Experiment,
    KeepMeasure,
    Proposal,
    PromotionRung,
    ProposalState,
    RunResult,
    RunStatus,
    UNVERIFIED_LABEL,
    Usage,
)

SCHEMA_VERSION = 1

# speculative: a proposal's run before a human accepted it; it becomes an experiment then.
# promotion: a kept change (or its parent) trained at a larger depth (the ladder)
RUN_KINDS = ("baseline", "experiment", "noise", "rerun", "speculative", "promotion")
RUNNING = "running"
# autoresearch's results.tsv knows only keep, discard and crash
TSV_STATUS = {
    RunStatus.KEEP: "keep",
    RunStatus.DISCARD: "discard",
    RunStatus.CRASH: "crash",
    RunStatus.TIMEOUT: "crash",
    RunStatus.INTERRUPTED: "crash",
    RunStatus.KILLED: "crash",
}
TSV_HEADER = "commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"
FAILED_STATUSES = (RunStatus.CRASH, RunStatus.TIMEOUT, RunStatus.INTERRUPTED, RunStatus.KILLED)
INTERRUPTED_MESSAGE = "The engine stopped while this run was training; it will be run again."

_ANTHROPIC_KEY = re.compile(r"sk-ant-[A-Za-z0-9_\-]+")
# shorter values would redact ordinary words if someone set a placeholder key
_MIN_ENV_KEY_LENGTH = 8

_SCHEMA = """
CREATE TABLE IF NOT EXISTS proposals (
    id INTEGER PRIMARY KEY,
    created_at REAL NOT NULL,
    agent TEXT NOT NULL,
    description TEXT NOT NULL,
    hypothesis TEXT NOT NULL,
    diff TEXT NOT NULL,
    files TEXT NOT NULL,                       -- JSON {relative path: full new text}
    base_commit TEXT NOT NULL,
    reasoning TEXT NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cache_read_tokens INTEGER NOT NULL,
    cache_write_tokens INTEGER NOT NULL,
    cost_usd REAL NOT NULL,
    state TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY,
    proposal_id INTEGER NOT NULL REFERENCES proposals(id),
    kind TEXT NOT NULL,                        -- accept | edit | veto
    who TEXT NOT NULL,                         -- human | auto
    reason TEXT NOT NULL,
    edited_diff TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_by_proposal ON decisions(proposal_id);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    experiment INTEGER NOT NULL UNIQUE,
    proposal_id INTEGER REFERENCES proposals(id),   -- NULL for baseline and noise repeats
    commit_sha TEXT NOT NULL,
    kind TEXT NOT NULL,                        -- a RUN_KINDS value
    description TEXT NOT NULL,
    status TEXT NOT NULL,                      -- running, then a RunStatus value
    val_bpb REAL,
    memory_gb REAL NOT NULL DEFAULT 0,
    training_seconds REAL NOT NULL DEFAULT 0,
    total_seconds REAL NOT NULL DEFAULT 0,
    num_steps INTEGER NOT NULL DEFAULT 0,
    total_tokens INTEGER NOT NULL DEFAULT 0,
    num_params INTEGER NOT NULL DEFAULT 0,
    device TEXT NOT NULL DEFAULT '',
    message TEXT NOT NULL DEFAULT '',
    log_path TEXT NOT NULL,
    metrics TEXT NOT NULL DEFAULT '{}',        -- JSON: the whole validated result file
    started_at REAL NOT NULL,
    finished_at REAL,
    confined INTEGER NOT NULL DEFAULT 1,       -- train.py ran under engine.confine
    metric_verified INTEGER NOT NULL DEFAULT 1 -- 0: val_bpb is train.py's own summary line
);
CREATE TABLE IF NOT EXISTS measures (          -- what the judge's last decision on a run rested on
    run_id TEXT PRIMARY KEY REFERENCES runs(id),
    n_best INTEGER NOT NULL,
    best_mean REAL NOT NULL,
    n_candidate INTEGER NOT NULL,
    candidate_mean REAL NOT NULL,
    sigma REAL,                                -- NULL while no commit has been run twice
    noise_dof INTEGER NOT NULL,
    improvement REAL NOT NULL,
    margin REAL                                -- NULL without a sigma
);
CREATE TABLE IF NOT EXISTS session_state (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL                        -- JSON
);
CREATE TABLE IF NOT EXISTS notes (             -- the human's steering notes for the agent
    id INTEGER PRIMARY KEY,
    text TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS note_links (        -- which drafts a note went into
    note_id INTEGER NOT NULL REFERENCES notes(id),
    proposal_id INTEGER NOT NULL REFERENCES proposals(id)
);
CREATE TABLE IF NOT EXISTS notices (
    id INTEGER PRIMARY KEY,
    level TEXT NOT NULL,
    message TEXT NOT NULL,
    hint TEXT NOT NULL,
    at REAL NOT NULL
);
"""


def redact(text: str) -> str:
    """Replace anything that looks like an Anthropic key, and the configured key, with [redacted]."""
    if not text:
        return text
    key = os.environ.get("ANTHROPIC_API_KEY", "").strip()
    if len(key) >= _MIN_ENV_KEY_LENGTH:
        text = text.replace(key, "[redacted]")
    return _ANTHROPIC_KEY.sub("[redacted]", text)


def _redact_json(value):
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact(str(k)): _redact_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redact_json(v) for v in value]
    return value


def _dumps(value) -> str:
    return json.dumps(_redact_json(value), ensure_ascii=False)


def journal_path(workspace: Path) -> Path:
    return Path(workspace) / ".pairlab" / "journal.db"


@dataclass
class Totals:
    """Counts and sums over the whole journal, for the status line and the report."""

    runs: int = 0                    # finished runs of every kind
    experiments: int = 0             # kept + discarded + crashed + vetoed + held + judging
    kept: int = 0                    # experiments kept (the baseline is not one)
    discarded: int = 0
    crashed: int = 0                 # crash, timeout, killed (an interrupted run trains again)
    vetoed: int = 0                  # proposals vetoed before they trained
    held: int = 0                    # unusually large wins waiting for a human
    judging: int = 0                 # trained, waiting for a noise floor or a re-run
    noise_repeats: int = 0           # baseline repeats that measure the noise floor
    confirmations: int = 0           # re-runs that confirm a win
    speculative: int = 0             # runs trained before a decision and never accepted
    promotion_runs: int = 0          # runs of kept changes at a larger depth (the ladder)
    proposals: int = 0
    human_edits: int = 0             # edit decisions
    usage: Usage = field(default_factory=Usage)
    training_seconds: float = 0.0    # summed over finished runs
    run_seconds: float = 0.0         # summed total_seconds over finished runs
    first_started_at: float | None = None
    last_finished_at: float | None = None


class Journal(PromotionJournal):
    """Durable record of a research session; safe to call from any engine thread."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        # autocommit mode: each statement commits unless we open a transaction ourselves
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                   timeout=10.0)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._create_schema()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _create_schema(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"{self.path} was written by a newer pairlab (journal schema {version}, this "
                f"version reads {SCHEMA_VERSION}); upgrade pairlab to open it")
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for statement in (_SCHEMA + PROMOTION_SCHEMA).split(";"):
                if statement.strip():
                    self._db.execute(statement)
            columns = {r[1] for r in self._db.execute("PRAGMA table_info(runs)")}
            for column in ("confined", "metric_verified"):   # journals from before them
                if column not in columns:
                    self._db.execute(f"ALTER TABLE runs ADD COLUMN {column} INTEGER NOT NULL "
                                     "DEFAULT 1")
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def _write(self, *statements: tuple[str, tuple]) -> sqlite3.Cursor:
        """Run statements in one committed transaction; returns the last cursor."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cursor = None
                for sql, params in statements:
                    cursor = self._db.execute(sql, params)
                self._db.execute("COMMIT")
            except BaseException:
                # a COMMIT that failed (e.g. disk full) has rolled back already; a second
                # ROLLBACK would raise and hide the real error
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            return cursor

    def _read(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def journal_mode(self) -> str:
        return self._read("PRAGMA journal_mode")[0][0]

    # ---- proposals -----------------------------------------------------------------

    def add_proposal(self, proposal: Proposal, note_ids: tuple[int, ...] = ()) -> int:
        """Store a new proposal, linked to the steering notes its draft was given; the
        journal assigns the id when `proposal.id` is 0."""
        created_at = proposal.created_at or time.time()
        values = self._proposal_values(proposal)
        with self._lock:
            proposal_id = proposal.id or self.next_proposal_id()
            self._write((
                "INSERT INTO proposals (id, created_at, agent, description, hypothesis, diff,"
                " files, base_commit, reasoning, input_tokens, output_tokens, cache_read_tokens,"
                " cache_write_tokens, cost_usd, state)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (proposal_id, created_at, redact(proposal.agent)) + values),
                *[("INSERT INTO note_links (note_id, proposal_id) VALUES (?, ?)",
                   (note_id, proposal_id)) for note_id in note_ids])
        proposal.id = proposal_id
        proposal.created_at = created_at
        return proposal.id

    def update_proposal(self, proposal: Proposal) -> None:
        """Save a proposal's changed text, base, usage or state (after a rebase or an edit)."""
        self._write(self._proposal_update(proposal))

    def set_proposal_state(self, proposal_id: int, state: ProposalState) -> None:
        self._write(("UPDATE proposals SET state = ? WHERE id = ?",
                     (ProposalState(state).value, proposal_id)))

    def get_proposal(self, proposal_id: int) -> Proposal | None:
        rows = self._read("SELECT * FROM proposals WHERE id = ?", (proposal_id,))
        return _proposal(rows[0]) if rows else None

    def proposals(self, states: tuple[ProposalState, ...] = ()) -> list[Proposal]:
        """All proposals in id order, or those in one of `states`."""
        if not states:
            return [_proposal(r) for r in self._read("SELECT * FROM proposals ORDER BY id")]
        marks = ",".join("?" * len(states))
        rows = self._read(f"SELECT * FROM proposals WHERE state IN ({marks}) ORDER BY id",
                          tuple(ProposalState(s).value for s in states))
        return [_proposal(r) for r in rows]

    def pending_proposals(self) -> list[Proposal]:
        """Proposals to restore after a restart: awaiting review, or decided and not yet trained.

        Includes the proposals whose run `interrupted_runs()` found cut off.
        """
        return self.proposals((ProposalState.PENDING, ProposalState.ACCEPTED))

    def _proposal_values(self, p: Proposal) -> tuple:
        return (redact(p.description), redact(p.hypothesis), redact(p.diff), _dumps(p.files),
                redact(p.base_commit), redact(p.reasoning), p.usage.input_tokens,
                p.usage.output_tokens, p.usage.cache_read_tokens, p.usage.cache_write_tokens,
                p.usage.cost_usd, ProposalState(p.state).value)

    def _proposal_update(self, p: Proposal) -> tuple[str, tuple]:
        return ("UPDATE proposals SET description = ?, hypothesis = ?, diff = ?, files = ?,"
                " base_commit = ?, reasoning = ?, input_tokens = ?, output_tokens = ?,"
                " cache_read_tokens = ?, cache_write_tokens = ?, cost_usd = ?, state = ?"
                " WHERE id = ?", self._proposal_values(p) + (p.id,))

    # ---- decisions -----------------------------------------------------------------

    def record_decision(self, decision: Decision, proposal: Proposal | None = None) -> None:
        """Record a decision and move its proposal to accepted or vetoed, in one transaction.

        Pass `proposal` (the version as decided, e.g. with the human's edits) to save it too.
        """
        kind = DecisionKind(decision.kind)
        decision.at = decision.at or time.time()
        state = ProposalState.VETOED if kind is DecisionKind.VETO else ProposalState.ACCEPTED
        statements = []
        if proposal is not None:
            proposal.state = state
            statements.append(self._proposal_update(proposal))
        statements.append(("UPDATE proposals SET state = ? WHERE id = ?",
                           (state.value, decision.proposal_id)))
        statements.append(self._decision_insert(decision))
        self._write(*statements)

    def _decision_insert(self, decision: Decision) -> tuple[str, tuple]:
        return ("INSERT INTO decisions (proposal_id, kind, who, reason, edited_diff, at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (decision.proposal_id, DecisionKind(decision.kind).value, redact(decision.who),
                 redact(decision.reason), redact(decision.edited_diff), decision.at))

    def decisions(self, proposal_id: int | None = None) -> list[Decision]:
        if proposal_id is None:
            rows = self._read("SELECT * FROM decisions ORDER BY id")
        else:
            rows = self._read("SELECT * FROM decisions WHERE proposal_id = ? ORDER BY id",
                              (proposal_id,))
        return [Decision(proposal_id=r["proposal_id"], kind=DecisionKind(r["kind"]), who=r["who"],
                         reason=r["reason"], edited_diff=r["edited_diff"], at=r["at"])
                for r in rows]

    # ---- runs ----------------------------------------------------------------------

    def start_run(self, run_id: str, commit: str, kind: str, *, proposal_id: int | None = None,
                  description: str = "", log_path: str = "", experiment: int | None = None,
                  started_at: float | None = None) -> int:
        """Record a run as 'running' (its proposal goes to training); returns its experiment number.

        Experiment numbers count every run from 1 unless `experiment` is given. An empty
        description is taken from the proposal, or is the run kind.
        """
        if kind not in RUN_KINDS:
            raise ValueError(f"run kind must be one of {', '.join(RUN_KINDS)}, not {kind!r}")
        with self._lock:
            if experiment is None:
                experiment = self._read("SELECT COALESCE(MAX(experiment), 0) + 1 FROM runs")[0][0]
            if not description and proposal_id is not None:
                proposal = self.get_proposal(proposal_id)
                description = proposal.description if proposal else ""
            statements = [(
                "INSERT INTO runs (id, experiment, proposal_id, commit_sha, kind, description,"
                " status, log_path, started_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, experiment, proposal_id, commit, kind, redact(description or kind),
                 RUNNING, redact(log_path), time.time() if started_at is None else started_at))]
            if proposal_id is not None and kind != "speculative":   # that one waits for review
                statements.append(("UPDATE proposals SET state = ? WHERE id = ?",
                                   (ProposalState.TRAINING.value, proposal_id)))
            self._write(*statements)
        return experiment

    def accept_speculative(self, run_id: str, proposal_state: ProposalState) -> Experiment:
        """A human accepted the proposal a speculative run trains (or trained): from now on
        the run is its experiment, with the time it already had."""
        self._write(("UPDATE runs SET kind = 'experiment' WHERE id = ? AND kind = 'speculative'",
                     (run_id,)),
                    ("UPDATE proposals SET state = ? WHERE id ="
                     " (SELECT proposal_id FROM runs WHERE id = ?)",
                     (ProposalState(proposal_state).value, run_id)))
        return self.get_run(run_id)

    def set_run_status(self, run_id: str, status: RunStatus, message: str) -> Experiment:
        """A finished speculative run's fate once a human decided against it (or the best
        moved under it): vetoed, or interrupted to train again."""
        self._write(("UPDATE runs SET status = ?, message = ? WHERE id = ?",
                     (RunStatus(status).value, redact(message), run_id)))
        return self.get_run(run_id)

    def finish_run(self, result: RunResult, finished_at: float | None = None, *,
                   proposal_state: ProposalState | None = None,
                   settles: RunResult | None = None, state: dict | None = None,
                   measure: KeepMeasure | None = None,
                   measured_run: str | None = None) -> Experiment:
        """Store a run's outcome and return its experiments row, in one transaction with
        what follows from it: its proposal's new state (default: done, for an experiment),
        the final outcome of the experiment it confirmed (`settles`: status, val_bpb,
        message and metrics of that experiment's run), the judge's figures for the
        experiment judged (`measure`: of `measured_run`, default `settles`, else this run), and
        session state values."""
        status = RunStatus(result.status)
        now = time.time() if finished_at is None else finished_at
        with self._lock:
            rows = self._read("SELECT kind, proposal_id FROM runs WHERE id = ?",
                              (result.run_id,))
            if not rows:
                raise KeyError(f"no run {result.run_id!r} in the journal; start_run it first")
            kind, proposal_id = rows[0]["kind"], rows[0]["proposal_id"]
            if proposal_state is None and kind == "experiment":
                proposal_state = ProposalState.DONE
            statements = [self._run_update(result, now)]
            if settles is not None:
                statements.append(self._run_update(settles, now))
            if measure is not None:
                statements.append(self._measure_upsert(
                    measured_run or (settles or result).run_id, measure))
            if proposal_state is not None and proposal_id is not None:
                statements.append(("UPDATE proposals SET state = ? WHERE id = ?",
                                   (ProposalState(proposal_state).value, proposal_id)))
            statements += [self._state_upsert(k, v) for k, v in (state or {}).items()]
            self._write(*statements)
            return self.get_run(result.run_id)

    def record_measure(self, run_id: str, measure: KeepMeasure) -> None:
        """The judge's figures for an experiment still being confirmed (no run finished)."""
        self._write(self._measure_upsert(run_id, measure))

    @staticmethod
    def _measure_upsert(run_id: str, m: KeepMeasure) -> tuple[str, tuple]:
        return ("INSERT OR REPLACE INTO measures (run_id, n_best, best_mean, n_candidate,"
                " candidate_mean, sigma, noise_dof, improvement, margin)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, m.n_best, m.best_mean, m.n_candidate, m.candidate_mean, m.sigma,
                 m.noise_dof, m.improvement, m.margin))

    def settle_held(self, run_id: str, status: RunStatus, decision: Decision) -> Experiment:
        """A human's decision on a held win: its run becomes keep or discard, its proposal
        done, and the decision is recorded, in one transaction."""
        decision.at = decision.at or time.time()
        with self._lock:
            self._write(
                ("UPDATE runs SET status = ?, finished_at = ? WHERE id = ? AND status = ?",
                 (RunStatus(status).value, decision.at, run_id, RunStatus.HELD.value)),
                ("UPDATE proposals SET state = ? WHERE id = ?",
                 (ProposalState.DONE.value, decision.proposal_id)),
                self._decision_insert(decision))
            return self.get_run(run_id)

    def _run_update(self, result: RunResult, finished_at: float) -> tuple[str, tuple]:
        return ("UPDATE runs SET status = ?, val_bpb = ?, memory_gb = ?, training_seconds = ?,"
                " total_seconds = ?, num_steps = ?, total_tokens = ?, num_params = ?,"
                " device = ?, message = ?, log_path = COALESCE(NULLIF(?, ''), log_path),"
                " metrics = ?, finished_at = ?, confined = ?, metric_verified = ? WHERE id = ?",
                (RunStatus(result.status).value, result.val_bpb, result.memory_gb,
                 result.training_seconds, result.total_seconds, result.num_steps,
                 result.total_tokens, result.num_params, redact(result.device),
                 redact(result.message), redact(result.log_path), _dumps(result.metrics),
                 finished_at, int(result.confined), int(result.metric_verified),
                 result.run_id))

    def interrupted_runs(self) -> list[Experiment]:
        """Mark runs left 'running' by a crashed engine as interrupted and return them.

        Call once at startup. Their experiments' proposals go back to accepted, so
        `pending_proposals()` re-queues them; the planner schedules the baseline, noise
        repeats and confirmations again from what the journal lacks.
        """
        with self._lock:
            rows = self._read("SELECT id FROM runs WHERE status = ? ORDER BY experiment",
                              (RUNNING,))
            if not rows:
                return []
            self._write(
                ("UPDATE proposals SET state = ? WHERE id IN"
                 " (SELECT proposal_id FROM runs WHERE status = ? AND kind = 'experiment')",
                 (ProposalState.ACCEPTED.value, RUNNING)),
                ("UPDATE runs SET status = ?, message = ?, finished_at = ? WHERE status = ?",
                 (RunStatus.INTERRUPTED.value, INTERRUPTED_MESSAGE, time.time(), RUNNING)))
            return [self.get_run(r["id"]) for r in rows]

    def get_run(self, run_id: str) -> Experiment | None:
        """One run as an experiments row; a run still training has status "running"."""
        rows = self._read(_EXPERIMENT_SELECT + " WHERE r.id = ?", (run_id,))
        return _experiment(rows[0]) if rows else None

    def experiments(self) -> list[Experiment]:
        """Finished runs of every kind, in experiment order, for the experiments table."""
        rows = self._read(_EXPERIMENT_SELECT + " WHERE r.status != ? ORDER BY r.experiment",
                          (RUNNING,))
        return [_experiment(r) for r in rows]

    def run_rows(self) -> list[dict]:
        """Finished runs as plain dicts with every column (kind, metrics, seconds ...)."""
        rows = self._read("SELECT * FROM runs WHERE status != ? ORDER BY experiment", (RUNNING,))
        return [dict(r, metrics=json.loads(r["metrics"])) for r in rows]

    def best(self) -> Experiment | None:
        """The last run kept (a held win is kept when a human accepts it, after later
        experiments): the commit the research branch stands on."""
        rows = self._read(_EXPERIMENT_SELECT + " WHERE r.status = ? AND r.val_bpb IS NOT NULL"
                          " AND r.kind IN ('baseline', 'experiment')"
                          " ORDER BY r.finished_at DESC, r.experiment DESC LIMIT 1",
                          (RunStatus.KEEP.value,))
        return _experiment(rows[0]) if rows else None

    def run_count(self) -> int:
        """Runs of every kind and state, to name the next one."""
        return self._read("SELECT COUNT(*) FROM runs")[0][0]

    def experiment_count(self) -> int:
        """Experiments that reached an outcome, for --max-experiments (interrupted ones train again)."""
        return self._read("SELECT COUNT(*) FROM runs WHERE kind = 'experiment'"
                          " AND status NOT IN (?, ?)",
                          (RUNNING, RunStatus.INTERRUPTED.value))[0][0]

    def next_proposal_id(self) -> int:
        """The id the next add_proposal will get (one drafter at a time asks)."""
        return self._read("SELECT COALESCE(MAX(id), 0) + 1 FROM proposals")[0][0]

    def total_cost(self) -> float:
        return self._read("SELECT COALESCE(SUM(cost_usd), 0.0) FROM proposals")[0][0]

    # ---- what the agent is told ------------------------------------------------------

    def history(self, limit: int = 20) -> list[HistoryItem]:
        """The latest `limit` outcomes, oldest first: trained proposals, the baseline and vetoes.

        Each run carries its delta to the best before it, who decided, and the human's edit.
        """
        items: list[tuple[float, HistoryItem]] = []
        best_before: float | None = None
        rows = self._read(
            _EXPERIMENT_SELECT + " WHERE r.status != ? AND r.kind NOT IN ('noise', 'promotion')"
            " ORDER BY r.experiment", (RUNNING,))
        for r in rows:
            val_bpb = r["val_bpb"]
            delta = (val_bpb - best_before
                     if val_bpb is not None and best_before is not None else None)
            items.append((r["finished_at"] or r["started_at"], HistoryItem(
                description=r["description"], hypothesis=r["hypothesis"] or "",
                status=r["status"], val_bpb=val_bpb, delta=delta,
                decided_by=r["decided_by"] or r["kind"],
                human_edit_diff=r["human_edit_diff"] or "", diff=r["diff"] or "",
                message=r["message"])))
            if r["status"] == RunStatus.KEEP.value and val_bpb is not None:
                best_before = val_bpb
        vetoes = self._read(
            "SELECT p.description, p.hypothesis, p.diff, d.who, d.reason, d.at"
            " FROM decisions d JOIN proposals p ON p.id = d.proposal_id WHERE d.kind = ?",
            (DecisionKind.VETO.value,))
        for v in vetoes:
            items.append((v["at"], HistoryItem(
                description=v["description"], hypothesis=v["hypothesis"], status="vetoed",
                decided_by=v["who"], veto_reason=v["reason"], diff=v["diff"])))
        items.sort(key=lambda item: item[0])
        return [item for _, item in items[-limit:]] if limit > 0 else []

    # ---- session state and notices ---------------------------------------------------

    def set_state(self, key: str, value) -> None:
        """Remember a JSON value (best commit, noise floor, mode ...) across restarts."""
        self._write(self._state_upsert(key, value))

    @staticmethod
    def _state_upsert(key: str, value) -> tuple[str, tuple]:
        return ("INSERT INTO session_state (key, value) VALUES (?, ?)"
                " ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, _dumps(value)))

    def add_note(self, text: str, at: float | None = None) -> int:
        """A steering note from the human, for the agent's next draft; returns its id."""
        cursor = self._write(("INSERT INTO notes (text, at) VALUES (?, ?)",
                              (redact(text), time.time() if at is None else at)))
        return cursor.lastrowid

    def open_notes(self) -> list[tuple[int, str]]:
        """Notes no draft has taken yet, oldest first, as (id, text)."""
        rows = self._read("SELECT id, text FROM notes WHERE id NOT IN"
                          " (SELECT note_id FROM note_links) ORDER BY id")
        return [(r["id"], r["text"]) for r in rows]

    def notes_for(self, proposal_id: int) -> list[str]:
        """The steering notes a proposal's draft was given."""
        rows = self._read("SELECT n.text FROM notes n JOIN note_links l ON l.note_id = n.id"
                          " WHERE l.proposal_id = ? ORDER BY n.id", (proposal_id,))
        return [r["text"] for r in rows]

    def notes(self) -> list[tuple[str, list[int]]]:
        """Every steering note, oldest first, with the proposals whose drafts it went into."""
        rows = self._read("SELECT n.id, n.text, l.proposal_id FROM notes n LEFT JOIN note_links l"
                          " ON l.note_id = n.id ORDER BY n.id, l.proposal_id")
        notes: dict[int, tuple[str, list[int]]] = {}
        for r in rows:
            text, proposals = notes.setdefault(r["id"], (r["text"], []))
            if r["proposal_id"] is not None:
                proposals.append(r["proposal_id"])
        return list(notes.values())

    def get_state(self, key: str, default=None):
        rows = self._read("SELECT value FROM session_state WHERE key = ?", (key,))
        return json.loads(rows[0]["value"]) if rows else default

    def state(self) -> dict:
        return {r["key"]: json.loads(r["value"])
                for r in self._read("SELECT key, value FROM session_state ORDER BY key")}

    def add_notice(self, level: str, message: str, hint: str = "",
                   at: float | None = None) -> None:
        self._write(("INSERT INTO notices (level, message, hint, at) VALUES (?, ?, ?, ?)",
                     (level, redact(message), redact(hint), time.time() if at is None else at)))

    def notices(self, limit: int = 100) -> list[dict]:
        """The latest `limit` notices, oldest first, as dicts of level, message, hint, at."""
        rows = self._read("SELECT level, message, hint, at FROM notices ORDER BY id DESC LIMIT ?",
                          (limit,))
        return [dict(r) for r in reversed(rows)]

    # ---- totals and results.tsv ------------------------------------------------------

    def totals(self) -> Totals:
        finished = self.run_rows()
        totals = Totals(runs=len(finished))
        outcome = {RunStatus.KEEP: "kept", RunStatus.DISCARD: "discarded",
                   RunStatus.HELD: "held", RunStatus.CONFIRMING: "judging",
                   RunStatus.CRASH: "crashed", RunStatus.TIMEOUT: "crashed",
                   RunStatus.KILLED: "crashed"}
        for r in finished:
            status = RunStatus(r["status"])
            if r["kind"] == "noise":
                totals.noise_repeats += 1
            elif r["kind"] == "rerun":
                totals.confirmations += 1
            elif r["kind"] == "speculative":
                totals.speculative += 1
            elif r["kind"] == "promotion":
                totals.promotion_runs += 1
            elif r["kind"] == "experiment" and status in outcome:
                setattr(totals, outcome[status], getattr(totals, outcome[status]) + 1)
            totals.training_seconds += r["training_seconds"]
            totals.run_seconds += r["total_seconds"]
        if finished:
            totals.first_started_at = min(r["started_at"] for r in finished)
            totals.last_finished_at = max(r["finished_at"] for r in finished)
        usage = self._read(
            "SELECT COUNT(*), COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0),"
            " COALESCE(SUM(cache_read_tokens), 0), COALESCE(SUM(cache_write_tokens), 0),"
            " COALESCE(SUM(cost_usd), 0.0) FROM proposals")[0]
        totals.proposals = usage[0]
        totals.usage = Usage(input_tokens=usage[1], output_tokens=usage[2],
                             cache_read_tokens=usage[3], cache_write_tokens=usage[4],
                             cost_usd=usage[5])
        # a held win that a human vetoed trained: it counts as discarded, not vetoed
        totals.vetoed = self._read(
            "SELECT COUNT(DISTINCT d.proposal_id) FROM decisions d WHERE d.kind = ? AND NOT"
            " EXISTS (SELECT 1 FROM runs r WHERE r.proposal_id = d.proposal_id"
            " AND r.kind = 'experiment')", (DecisionKind.VETO.value,))[0][0]
        totals.experiments = (totals.kept + totals.discarded + totals.crashed + totals.vetoed
                              + totals.held + totals.judging)
        totals.human_edits = self._read("SELECT COUNT(*) FROM decisions WHERE kind = ?",
                                        (DecisionKind.EDIT.value,))[0][0]
        return totals

    def summary_line(self) -> str:
        """'3 experiments: 1 kept, 1 discarded, 0 crashed, 1 vetoed; 2 noise repeats, 1
        confirmation re-runs': the measurements counted apart, when there are any."""
        t = self.totals()
        held = f", {t.held} held" if t.held else ""
        judging = f", {t.judging} being confirmed" if t.judging else ""
        line = (f"{t.experiments} experiments: {t.kept} kept, {t.discarded} discarded, "
                f"{t.crashed} crashed, {t.vetoed} vetoed{held}{judging}")
        if t.noise_repeats or t.confirmations:
            line += (f"; {t.noise_repeats} noise repeats, {t.confirmations} confirmation "
                     f"re-runs")
        if t.speculative:
            line += f"; {t.speculative} speculative runs not accepted"
        if t.promotion_runs:
            line += f"; {t.promotion_runs} promotion runs"
        return line

    def results_tsv(self) -> str:
        """autoresearch's results.tsv: the baseline and every experiment, in order.

        Noise repeats and confirmation re-runs are measurements, not experiments, a run the
        engine's own stop interrupted trains again, and a win being confirmed or held for a
        human has no outcome yet: they stay in the journal and out of the file
        autoresearch's tools read.
        """
        lines = [TSV_HEADER]
        kinds = {r["id"]: r["kind"] for r in self._read("SELECT id, kind FROM runs")}
        for e in self.experiments():
            if kinds[e.run_id] not in ("baseline", "experiment") or e.status not in TSV_STATUS \
                    or e.status is RunStatus.INTERRUPTED:
                continue                  # interrupted, or undecided (confirming, held)
            status = TSV_STATUS[e.status]
            crashed = status == "crash" or e.val_bpb is None
            val_bpb = 0.0 if crashed else e.val_bpb
            memory_gb = 0.0 if crashed else e.memory_gb
            description = re.sub(r"[\t\r\n]+", " ", e.description).strip()
            if e.val_bpb is not None and not e.metric_verified:
                description = f"{description} [{UNVERIFIED_LABEL}]"
            lines.append(f"{e.commit[:7]}\t{val_bpb:.6f}\t{memory_gb:.1f}\t{status}\t"
                         f"{description}\n")
        return "".join(lines)

    def write_results_tsv(self, path: Path) -> Path:
        """Rewrite results.tsv from the journal atomically, so it always matches it."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(self.results_tsv(), encoding="utf-8")
        os.replace(tmp, path)
        return path


_EXPERIMENT_SELECT = """
SELECT r.*, p.hypothesis AS hypothesis, p.diff AS diff,
    (SELECT d.who FROM decisions d WHERE d.proposal_id = r.proposal_id AND d.kind != 'veto'
        ORDER BY d.id DESC LIMIT 1) AS decided_by,
    (SELECT d.edited_diff FROM decisions d WHERE d.proposal_id = r.proposal_id AND d.kind = 'edit'
        ORDER BY d.id DESC LIMIT 1) AS human_edit_diff,
    m.n_best AS m_n_best, m.best_mean AS m_best_mean, m.n_candidate AS m_n_candidate,
    m.candidate_mean AS m_candidate_mean, m.sigma AS m_sigma, m.noise_dof AS m_noise_dof,
    m.improvement AS m_improvement, m.margin AS m_margin,
    (SELECT json_group_array(json_array(q.depth, q.held)) FROM
        (SELECT depth, held FROM promotions WHERE run_id = r.id ORDER BY depth) q) AS rungs
FROM runs r LEFT JOIN proposals p ON p.id = r.proposal_id
    LEFT JOIN measures m ON m.run_id = r.id"""


def _experiment(r: sqlite3.Row) -> Experiment:
    # a baseline or noise repeat has no decision: its kind says who started it
    return Experiment(
        id=r["experiment"], proposal_id=r["proposal_id"], commit=r["commit_sha"],
        status=RunStatus(r["status"]) if r["status"] != RUNNING else RUNNING,
        val_bpb=r["val_bpb"], memory_gb=r["memory_gb"], description=r["description"],
        decided_by=r["decided_by"] or r["kind"], run_id=r["id"], started_at=r["started_at"],
        finished_at=r["finished_at"], log_path=r["log_path"], kind=r["kind"],
        speculative=r["kind"] == "speculative",
        confined=bool(r["confined"]),
        metric_verified=bool(r["metric_verified"]),
        promotions=[PromotionRung(depth, None if held is None else bool(held))
                    for depth, held in json.loads(r["rungs"])],
        measure=None if r["m_n_best"] is None else
        KeepMeasure(n_best=r["m_n_best"], best_mean=r["m_best_mean"],
                    n_candidate=r["m_n_candidate"], candidate_mean=r["m_candidate_mean"],
                    sigma=r["m_sigma"], noise_dof=r["m_noise_dof"],
                    improvement=r["m_improvement"], margin=r["m_margin"]))


def _proposal(r: sqlite3.Row) -> Proposal:
    return Proposal(
        id=r["id"], description=r["description"], hypothesis=r["hypothesis"], diff=r["diff"],
        base_commit=r["base_commit"], agent=r["agent"], files=json.loads(r["files"]),
        reasoning=r["reasoning"],
        usage=Usage(input_tokens=r["input_tokens"], output_tokens=r["output_tokens"],
                    cache_read_tokens=r["cache_read_tokens"],
                    cache_write_tokens=r["cache_write_tokens"], cost_usd=r["cost_usd"]),
        state=ProposalState(r["state"]), created_at=r["created_at"])
