"""The journal: every proposal, decision, run and notice, in SQLite at `.pairlab/journal.db`.

`Journal` is one object made of parts, each a module: the SQLite side (schema, migrations,
transactions, redaction: engine/journal/db.py), proposals with their decisions and notes
(engine/journal/proposals.py), runs (engine/journal/runs.py), promotions
(engine/journal/promotions.py), and what is read out whole: totals, results.tsv, the agent's
history (engine/journal/views.py). Session state and notices live here.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from engine.journal.db import SCHEMA_VERSION, JournalDB, dumps, redact
from engine.journal.promotions import PromotionJournal
from engine.journal.proposals import ProposalJournal
from engine.journal.runs import FAILED_STATUSES, INTERRUPTED_MESSAGE, RunJournal
from engine.journal.views import TSV_HEADER, JournalViews, Totals

# the names the rest of pairlab imports from here
__all__ = ["FAILED_STATUSES", "INTERRUPTED_MESSAGE", "SCHEMA_VERSION", "TSV_HEADER", "Journal",
           "Totals", "journal_path", "redact"]


def journal_path(workspace: Path) -> Path:
    return Path(workspace) / ".pairlab" / "journal.db"


class Journal(ProposalJournal, RunJournal, PromotionJournal, JournalViews, JournalDB):
    """Durable record of a research session; safe to call from any engine thread."""

    # ---- session state and notices ---------------------------------------------------

    def set_state(self, key: str, value) -> None:
        """Remember a JSON value (best commit, noise floor, mode ...) across restarts."""
        self._write(self._state_upsert(key, value))

    @staticmethod
    def _state_upsert(key: str, value) -> tuple[str, tuple]:
        return ("INSERT INTO session_state (key, value) VALUES (?, ?)"
                " ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, dumps(value)))

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
