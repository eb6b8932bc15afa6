"""The journal's proposals, the decisions on them and the steering notes their drafts were
given. A mixin of Journal (engine/journal/book.py): it uses the journal's one connection and its
one-transaction writes (engine/journal/db.py).
"""

from __future__ import annotations

import json
import sqlite3
import time

from engine.base.records import Decision, DecisionKind, Proposal, ProposalState, Usage
from engine.journal.db import dumps, redact


class ProposalJournal:
    """Proposals, decisions and steering notes (a mixin of Journal)."""

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
        return row_proposal(rows[0]) if rows else None

    def proposals(self, states: tuple[ProposalState, ...] = ()) -> list[Proposal]:
        """All proposals in id order, or those in one of `states`."""
        if not states:
            return [row_proposal(r) for r in self._read("SELECT * FROM proposals ORDER BY id")]
        marks = ",".join("?" * len(states))
        rows = self._read(f"SELECT * FROM proposals WHERE state IN ({marks}) ORDER BY id",
                          tuple(ProposalState(s).value for s in states))
        return [row_proposal(r) for r in rows]

    def pending_proposals(self) -> list[Proposal]:
        """Proposals to restore after a restart: awaiting review, or decided and not yet trained.

        Includes the proposals whose run `interrupted_runs()` found cut off.
        """
        return self.proposals((ProposalState.PENDING, ProposalState.ACCEPTED))

    def _proposal_values(self, p: Proposal) -> tuple:
        return (redact(p.description), redact(p.hypothesis), redact(p.diff), dumps(p.files),
                redact(p.base_commit), redact(p.reasoning), p.usage.input_tokens,
                p.usage.output_tokens, p.usage.cache_read_tokens, p.usage.cache_write_tokens,
                p.usage.cost_usd, ProposalState(p.state).value)

    def _proposal_update(self, p: Proposal) -> tuple[str, tuple]:
        return ("UPDATE proposals SET description = ?, hypothesis = ?, diff = ?, files = ?,"
                " base_commit = ?, reasoning = ?, input_tokens = ?, output_tokens = ?,"
                " cache_read_tokens = ?, cache_write_tokens = ?, cost_usd = ?, state = ?"
                " WHERE id = ?", self._proposal_values(p) + (p.id,))

    def next_proposal_id(self) -> int:
        """The id the next add_proposal will get (one drafter at a time asks)."""
        return self._read("SELECT COALESCE(MAX(id), 0) + 1 FROM proposals")[0][0]

    def total_cost(self) -> float:
        return self._read("SELECT COALESCE(SUM(cost_usd), 0.0) FROM proposals")[0][0]

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

    # ---- steering notes -------------------------------------------------------------

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


def row_proposal(r: sqlite3.Row) -> Proposal:
    return Proposal(
        id=r["id"], description=r["description"], hypothesis=r["hypothesis"], diff=r["diff"],
        base_commit=r["base_commit"], agent=r["agent"], files=json.loads(r["files"]),
        reasoning=r["reasoning"],
        usage=Usage(input_tokens=r["input_tokens"], output_tokens=r["output_tokens"],
                    cache_read_tokens=r["cache_read_tokens"],
                    cache_write_tokens=r["cache_write_tokens"], cost_usd=r["cost_usd"]),
        state=ProposalState(r["state"]), created_at=r["created_at"])
