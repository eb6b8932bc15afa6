"""The coordinator's side of drafting: start the agent on the best, take its draft in as a
proposal, survive its failures, and move open proposals onto a new best. Runs on the
coordinator thread only (a part the Coordinator hosts).
"""

from __future__ import annotations

import copy
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from engine.agents import make_agent
from engine.agents.base import Agent, DraftContext, HistoryItem
from engine.base.events import (DraftFailed, DraftStarted, ProposalReady, ProposalRebased,
                                ProposalStale)
from engine.base.records import Decision, DecisionKind, Proposal, ProposalState
from engine.loop import workers
from engine.loop.host import LoopHost
from engine.loop.loop_state import ActiveDraft
from engine.workspace import patch

if TYPE_CHECKING:
    from engine.loop.program_edits import ProgramEdits
    from engine.loop.speculation import Speculation

# Unattended: this many agent failures in a row and auto mode falls back to the tuner.
AGENT_FAILURES_BEFORE_FALLBACK = 3
MAX_AGENT_BACKOFF_S = 300.0


class Host(LoopHost, Protocol):
    program: ProgramEdits
    speculation: Speculation

    def post(self, message: object) -> None: ...

    def pause(self, reason: str) -> None: ...

    def decide(self, proposal_id: int, decision: Decision) -> None: ...


class Drafting:
    """The agent's side of the loop: it owns the agent, the draft in flight, the feedback
    the agent gets with its next draft and the failures that back it off."""

    def __init__(self, host: Host, agent: Agent):
        self.host = host
        self.agent = agent
        self.active: ActiveDraft | None = None
        self.feedback: list[str] = []        # told to the agent with its next draft
        self.failures = 0                    # agent failures in a row
        self.allowed_at = 0.0                # a failed agent drafts again from then (backoff)

    def start_draft(self) -> None:
        base_commit = self.host.program.best_commit()
        base_files = self.base_files(base_commit)
        draft_id = self.host.journal.next_proposal_id()
        notes = self.host.journal.open_notes()
        feedback, self.feedback = self.feedback, []
        steering = [f"A steering note from the human: {text}" for _, text in notes]
        best = self.host.snapshot.best
        ctx = DraftContext(
            workspace=self.host.workspace.root, targets=list(self.host.workspace.config.targets),
            files=base_files, base_commit=base_commit, program=self.host.workspace.program(),
            harness_source=_harness_source(), history=self.host.journal.history(limit=200),
            best_val_bpb=best[1] if best else None,
            noise_floor=self.host.journal.get_state("noise_floor"),
            validate=patch.validator(self.host.workspace, base_commit),
            feedback="\n\n".join(feedback + steering), in_flight=self.in_flight())
        cancel = threading.Event()
        self.active = ActiveDraft(draft_id, cancel, feedback)
        self.host.emit(DraftStarted(draft_id, self.agent.name, base_commit))
        agent, note_ids = self.agent, tuple(i for i, _ in notes)
        workers.start(workers.Worker.DRAFTER, self.host.post, lambda: workers.draft(
            agent, ctx, draft_id, cancel, self.host.workspace, self.host.emit, note_ids))

    def on_draft(self, done: workers.DraftDone) -> None:
        loop = self.host.loop
        active, self.active = self.active, None
        if done.cancelled or loop.stopping or done.draft is None and done.error is None:
            if active:
                self.feedback = active.feedback + self.feedback
            return
        if done.error is not None:
            self.feedback = active.feedback + self.feedback
            self.host.emit(DraftFailed(done.draft_id, done.error.message))
            self.agent_failed(done.error)
            return
        self.failures = 0
        if done.refused:
            self.feedback = active.feedback + self.feedback
            self.host.emit(DraftFailed(done.draft_id, done.refused))
            self.host.notice("warning", f"the agent's patch was refused: {done.refused}")
            return
        draft = done.draft
        new_files = {**done.base_files, **draft.files}
        proposal = Proposal(
            id=done.draft_id, description=draft.description, hypothesis=draft.hypothesis,
            diff=done.diff, base_commit=done.base_commit, agent=done.agent,
            files={p: t for p, t in new_files.items() if t != done.base_files.get(p)},
            reasoning=draft.reasoning, usage=draft.usage, created_at=time.time())
        self.host.journal.add_proposal(proposal, done.note_ids)
        if done.note_ids:
            proposal.notes = self.host.journal.notes_for(proposal.id)
        loop.proposals[proposal.id] = proposal
        loop.review.append(proposal.id)
        best_commit = self.host.program.best_commit()
        if best_commit != proposal.base_commit and not self.rebase(proposal, best_commit):
            return
        self.host.emit(ProposalReady(copy.deepcopy(proposal)))
        # a client may have decided it already, from a subscriber of ProposalReady
        if loop.mode == "auto" and proposal.id in loop.review:
            self.host.decide(proposal.id, Decision(proposal.id, DecisionKind.ACCEPT, "auto"))

    def agent_failed(self, error) -> None:
        """Review mode pauses for the human; auto mode retries, then falls back to the tuner."""
        loop = self.host.loop
        if loop.mode != "auto":
            self.host.notice("error", error.message, error.hint or "press p to resume when fixed")
            self.host.pause(f"agent error: {error.message}")
            return
        self.failures += 1
        if self.failures >= AGENT_FAILURES_BEFORE_FALLBACK and self.agent.name != "tuner":
            failed = self.agent.name
            self.agent = make_agent("tuner", device=self.host.settings.device or "cpu")
            self.failures = 0
            self.allowed_at = 0.0
            self.host.notice(
                "warning", f"the {failed} agent failed {AGENT_FAILURES_BEFORE_FALLBACK} "
                f"times in a row (last: {error.message}); pairlab switched to the "
                        f"offline tuner so the loop goes on",
                        "restart pairlab to use that agent again once it is fixed")
            return
        backoff = min(MAX_AGENT_BACKOFF_S,
                      self.host.settings.agent_backoff_s * 2 ** (self.failures - 1))
        self.allowed_at = time.time() + backoff
        self.host.notice("warning", f"{error.message} (agent failure {self.failures} in a "
                    f"row); retrying in {backoff:g}s", error.hint)

    def in_flight(self) -> list[HistoryItem]:
        """Proposals waiting, queued, training or being judged: not to be proposed again."""
        loop = self.host.loop
        return [HistoryItem(description=p.description, hypothesis=p.hypothesis,
                            status=p.state.value, diff=p.diff)
                for p in loop.proposals.values()]

    # ------------------------------------------------------------------ rebasing

    def base_files(self, commit: str) -> dict[str, str]:
        return self.host.workspace.files_at(commit)

    def rebase_open_proposals(self, new_best: str) -> None:
        for proposal_id in self.host.loop.review + self.host.loop.queue:
            proposal = self.host.loop.proposals[proposal_id]
            if proposal.base_commit != new_best:
                self.rebase(proposal, new_best)

    def rebase(self, proposal: Proposal, new_base: str) -> bool:
        """Move a proposal onto the new best (3-way); if it no longer applies, it is stale."""
        new_base_files = self.base_files(new_base)
        rebased = patch.rebase(proposal.files, self.base_files(proposal.base_commit),
                               new_base_files)
        if rebased is not None:
            try:
                diff = patch.validate_change(self.host.workspace, new_base, new_base_files,
                                             {**new_base_files, **rebased})
            except patch.PatchRefused:
                rebased = None
        loop = self.host.loop
        self.host.speculation.drop_speculation(
            proposal.id, "stale" if rebased is None else "rebased")
        if rebased is None:
            for waiting in (loop.review, loop.queue):
                if proposal.id in waiting:
                    waiting.remove(proposal.id)
            loop.proposals.pop(proposal.id, None)
            proposal.state = ProposalState.STALE
            self.host.journal.set_proposal_state(proposal.id, proposal.state)
            self.feedback.append(f"Your proposal {proposal.id} ({proposal.description}) no "
                                 "longer applies: the best train.py changed under it. Draft "
                                 "again against the current train.py.")
            self.host.emit(ProposalStale(proposal.id, "no longer applies to the new best "
                                                 "(conflict); sent back for a redraft"))
            return False
        proposal.files, proposal.diff, proposal.base_commit = rebased, diff, new_base
        self.host.journal.update_proposal(proposal)
        self.host.emit(ProposalRebased(proposal.id, new_base, proposal.diff))
        return True


def _harness_source() -> str:
    from nanochat import harness
    return Path(harness.__file__).read_text()
