"""The journal: every proposal, decision, run, promotion and notice, in SQLite (WAL) at
`.pairlab/journal.db`. `Journal` (book) is made of parts: db (schema, migrations,
transactions, redaction), proposals, runs, promotions, views (what is read out whole).
Imports engine.base only."""

from engine.journal.book import (FAILED_STATUSES, INTERRUPTED_MESSAGE, SCHEMA_VERSION,  # noqa: F401
                                 TSV_HEADER, Journal, Totals, journal_path, redact)
