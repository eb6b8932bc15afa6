"""Judging when several slots train at once (issue 11): the best can move while a run
trains. Runs on the coordinator thread only (a part the Coordinator hosts).

Judging stays serial and sound. An experiment is judged against the best at its base (the
commit it was made on). A loss there is discarded as usual. A win there proves nothing about
the new best, so it is merged onto it with a 3-way merge (the same rebase a waiting proposal
gets) and trains again there, judged like any experiment before it is kept; its first run is
recorded as interrupted, with why. A conflict sends the proposal back to the agent. A win
still being confirmed when the best moves goes the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from engine.base.events import RunFinished
from engine.base.records import ProposalState, RunStatus
from engine.loop import judge, workers
from engine.loop.evidence import Evidence
from engine.loop.host import LoopHost
from engine.loop.planner import Need

if TYPE_CHECKING:
    from engine.loop.drafting import Drafting
    from engine.loop.program_edits import ProgramEdits


class Host(LoopHost, Protocol):
    program: ProgramEdits
    drafting: Drafting
    evidence: Evidence

    def recorded_result(self, run_id: str, status: RunStatus, message: str | None): ...


class MovedBest:
    """Judging against a best that moved while a run trained (several slots). It holds no
    state of its own: what it decides goes into the loop's queue and the journal."""

    def __init__(self, host: Host):
        self.host = host

    def runs_to_beat(self, commit: str) -> tuple[str, list[float]]:
        """The base a commit was made on, and the runs it is judged against there: the
        best's runs when the base is the best, else that base's own runs."""
        base = self.host.workspace.parent_of(commit)
        if self.host.program.is_best_base(base):
            return base, self.host.evidence.best_runs()
        return base, self.host.evidence.run_groups().get(base, [])

    def won_on_moved_base(self, done: workers.RunDone, state: dict, base: str,
                          verdict: judge.Judgment) -> None:
        result = done.result
        result.status = RunStatus.INTERRUPTED
        best = self.host.program.best_commit()
        result.message = (f"better than its base {base[:7]} ({verdict.reason}), but the best "
                          f"moved to {best[:7]} meanwhile: merged onto it, it trains again "
                          f"there before it is kept")
        experiment = self.host.journal.finish_run(result, proposal_state=ProposalState.ACCEPTED,
                                             state=state, measure=verdict.measure)
        self.host.emit(RunFinished(experiment, result))
        self.host.notice("info", f"#{done.plan.proposal_id}: {result.message}")
        self.requeue_on_best(done.plan.proposal_id)

    def requeue_on_best(self, proposal_id: int) -> None:
        """Merge the proposal onto the best and queue it first; a conflict makes it stale,
        which tells the agent."""
        proposal = self.host.loop.proposals[proposal_id]
        proposal.state = ProposalState.ACCEPTED
        self.host.journal.set_proposal_state(proposal_id, ProposalState.ACCEPTED)
        if self.host.drafting.rebase(proposal, self.host.program.best_commit()):
            self.host.loop.queue.insert(0, proposal_id)

    def requeue_judgments_off_best(self) -> None:
        """The best moved: wins being confirmed on another base train again on the new one."""
        best = self.host.program.best_commit()
        for waiting in list(self.host.loop.judging.values()):
            if waiting.need == Need.HUMAN or self.host.program.is_best_base(
                    self.host.workspace.parent_of(waiting.commit)):
                continue
            base = self.host.workspace.parent_of(waiting.commit)
            message = (f"was being confirmed on {base[:7]} "
                       f"when the best moved to {best[:7]}: merged onto it, it trains again "
                       f"there before it is kept")
            experiment = self.host.journal.set_run_status(waiting.run_id, RunStatus.INTERRUPTED,
                                                     message)
            self.host.emit(RunFinished(experiment, self.host.recorded_result(
                waiting.run_id, RunStatus.INTERRUPTED, message)))
            self.host.loop.judging.pop(waiting.proposal_id)
            self.host.notice("info", f"#{waiting.proposal_id} {message}")
            self.requeue_on_best(waiting.proposal_id)
