"""The journal's SQLite side: the schema, its migrations, the one connection, one committed
transaction per write, and the redaction every text passes on its way in.

Every write is its own committed transaction (WAL, synchronous=FULL), so a `kill -9` of the
engine loses nothing that a method had returned from. One connection is shared by all
engine threads behind a lock; SQLite itself then never sees two writers from this process.
Text is passed through `redact` (engine/base/api_key.py) on the way in, so no API key ever
reaches the disk.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Callable, TypeVar

from engine.base.api_key import redact
from engine.journal.promotions import PROMOTION_SCHEMA

T = TypeVar("T")

SCHEMA_VERSION = 3                # 2: held wins settled in `settlements`; 3: reverts

SCHEMA = """
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
    confined INTEGER NOT NULL DEFAULT 1,       -- train.py ran under engine.run.confine
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
    margin REAL,                               -- the keep bound, NULL without a sigma
    drop_margin REAL                           -- the sequential rule's drop bound, else NULL
);
CREATE TABLE IF NOT EXISTS reverts (           -- a keep the best's re-runs showed was noise
    run_id TEXT PRIMARY KEY REFERENCES runs(id),   -- the kept experiment's run, now reverted
    by_run TEXT NOT NULL REFERENCES runs(id),  -- the re-run of the best that decided it
    back_to TEXT NOT NULL,                     -- the commit the research branch went back to
    n_best INTEGER NOT NULL,                   -- the recheck: its predecessor's runs (best)
    best_mean REAL NOT NULL,
    n_candidate INTEGER NOT NULL,              -- ...and the kept change's (candidate)
    candidate_mean REAL NOT NULL,
    sigma REAL,
    noise_dof INTEGER NOT NULL,
    improvement REAL NOT NULL,
    margin REAL,
    drop_margin REAL,
    reason TEXT NOT NULL,
    at REAL NOT NULL
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
CREATE TABLE IF NOT EXISTS settlements (      -- a human's word on a held win: not a decision,
    id INTEGER PRIMARY KEY,                    -- which each proposal gets once, before it trains
    run_id TEXT NOT NULL UNIQUE REFERENCES runs(id),   -- the held experiment's run
    proposal_id INTEGER NOT NULL REFERENCES proposals(id),
    outcome TEXT NOT NULL,                     -- keep | discard
    who TEXT NOT NULL,
    reason TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS notices (
    id INTEGER PRIMARY KEY,
    level TEXT NOT NULL,
    message TEXT NOT NULL,
    hint TEXT NOT NULL,
    at REAL NOT NULL
);
"""
# Schema 1 recorded a human's word on a held win as a second decision, at the moment it
# settled the run (the run's finished_at): moved to `settlements`.
SETTLEMENTS_FROM_DECISIONS = (
    "INSERT OR IGNORE INTO settlements (run_id, proposal_id, outcome, who, reason, at)"
    " SELECT r.id, d.proposal_id, r.status, d.who, d.reason, d.at FROM decisions d"
    " JOIN runs r ON r.proposal_id = d.proposal_id AND r.kind = 'experiment'"
    " AND r.status IN ('keep', 'discard') AND r.finished_at = d.at"
    " WHERE d.id > (SELECT MIN(e.id) FROM decisions e WHERE e.proposal_id = d.proposal_id)",
    "DELETE FROM decisions WHERE id > (SELECT MIN(e.id) FROM decisions e"
    " WHERE e.proposal_id = decisions.proposal_id) AND EXISTS (SELECT 1 FROM settlements s"
    " WHERE s.proposal_id = decisions.proposal_id AND s.at = decisions.at)",
)


def redact_json(value):
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact(str(k)): redact_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_json(v) for v in value]
    return value


def dumps(value) -> str:
    return json.dumps(redact_json(value), ensure_ascii=False)



class JournalDB:
    """The connection and the transaction discipline the journal's parts share."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self.writes = 0         # write transactions so far: a cached read holds until the next
        self._cached: dict[str, tuple[int, object]] = {}
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

    def __enter__(self):
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
            for statement in (SCHEMA + PROMOTION_SCHEMA).split(";"):
                if statement.strip():
                    self._db.execute(statement)
            columns = {r[1] for r in self._db.execute("PRAGMA table_info(runs)")}
            for column in ("confined", "metric_verified"):   # journals from before them
                if column not in columns:
                    self._db.execute(f"ALTER TABLE runs ADD COLUMN {column} INTEGER NOT NULL "
                                     "DEFAULT 1")
            measures = {r[1] for r in self._db.execute("PRAGMA table_info(measures)")}
            if "drop_margin" not in measures:                # journals before the sequential rule
                self._db.execute("ALTER TABLE measures ADD COLUMN drop_margin REAL")
            if version < 2:
                for statement in SETTLEMENTS_FROM_DECISIONS:
                    self._db.execute(statement)
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
                self.writes += 1           # a failed COMMIT may still have written some
                # a COMMIT that failed (e.g. disk full) has rolled back already; a second
                # ROLLBACK would raise and hide the real error
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            self.writes += 1
            return cursor

    def _read(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def _read_cached(self, key: str, read: Callable[[], T]) -> T:
        """read(), or what it returned after the last write (the loop asks many times a
        step; only this connection writes)."""
        with self._lock:
            hit = self._cached.get(key)
            if hit is None or hit[0] != self.writes:
                hit = self._cached[key] = (self.writes, read())
            return hit[1]

    def journal_mode(self) -> str:
        return self._read("PRAGMA journal_mode")[0][0]

