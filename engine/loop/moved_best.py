"""Judging when several slots train at once (issue 11): the best can move while a run
trains. Runs on the coordinator thread only (a mixin of Coordinator).

Judging stays serial and sound. An experiment is judged against the best at its base (the
commit it was made on). A loss there is discarded as usual. A win there proves nothing about
the new best, so it is merged onto it with a 3-way merge (the same rebase a waiting proposal
gets) and trains again there, judged like any experiment before it is kept; its first run is
recorded as interrupted, with why. A conflict sends the proposal back to the agent. A win
still being confirmed when the best moves goes the same way.
"""

from __future__ import annotations

from engine.loop import judge
from engine.loop import workers
from engine.base.events import RunFinished
from engine.base.records import ProposalState, RunStatus


class MovedBestMixin:
    def runs_to_beat(self, commit: str) -> tuple[str, list[float]]:
        """The base a commit was made on, and the runs it is judged against there: the
        best's runs when the base is the best, else that base's own runs."""
        base = self.workspace.parent_of(commit)
        if self.is_best_base(base):
            return base, self.best_runs()
        return base, self.run_groups().get(base, [])

    def won_on_moved_base(self, done: workers.RunDone, state: dict, base: str,
                          verdict: judge.Judgment) -> None:
        result = done.result
        result.status = RunStatus.INTERRUPTED
        result.message = (f"better than its base {base[:7]} ({verdict.reason}), but the best "
                          f"moved to {self.best_commit()[:7]} meanwhile: merged onto it, it "
                          f"trains again there before it is kept")
        experiment = self.journal.finish_run(result, proposal_state=ProposalState.ACCEPTED,
                                             state=state, measure=verdict.measure)
        self.emit(RunFinished(experiment, result))
        self.notice("info", f"#{done.plan.proposal_id}: {result.message}")
        self.requeue_on_best(done.plan.proposal_id)

    def requeue_on_best(self, proposal_id: int) -> None:
        """Merge the proposal onto the best and queue it first; a conflict makes it stale,
        which tells the agent."""
        proposal = self.loop.proposals[proposal_id]
        proposal.state = ProposalState.ACCEPTED
        self.journal.set_proposal_state(proposal_id, ProposalState.ACCEPTED)
        if self.rebase(proposal, self.best_commit()):
            self.loop.queue.insert(0, proposal_id)

    def requeue_judgments_off_best(self) -> None:
        """The best moved: wins being confirmed on another base train again on the new one."""
        best = self.best_commit()
        for waiting in list(self.loop.judging.values()):
            if waiting.need == "human" or self.is_best_base(
                    self.workspace.parent_of(waiting.commit)):
                continue
            message = (f"was being confirmed on {self.workspace.parent_of(waiting.commit)[:7]} "
                       f"when the best moved to {best[:7]}: merged onto it, it trains again "
                       f"there before it is kept")
            experiment = self.journal.set_run_status(waiting.run_id, RunStatus.INTERRUPTED,
                                                     message)
            self.emit(RunFinished(experiment, self.recorded_result(
                waiting.run_id, RunStatus.INTERRUPTED, message)))
            self.loop.judging.pop(waiting.proposal_id)
            self.notice("info", f"#{waiting.proposal_id} {message}")
            self.requeue_on_best(waiting.proposal_id)
