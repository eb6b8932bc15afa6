"""Runs whose worker was lost (a Ray node died): recorded as interrupted and trained again,
up to a limit. Runs on the coordinator thread only (a mixin of Coordinator)."""

from __future__ import annotations

from engine.loop import workers
from engine.base.events import RunFinished
from engine.loop.planner import RunPlan
from engine.base.records import ProposalState, RunStatus

MAX_LOST_RUNS = 3                    # a run that loses its worker every time becomes a crash


class LostRunsMixin:
    def requeue_lost(self, done: workers.RunDone) -> None:
        """The executor lost the run's worker (a Ray node died): recorded as interrupted,
        and it trains again, an experiment first in the queue; the planner schedules any
        other kind again from what is missing."""
        plan, result = done.plan, done.result
        experiment = plan.kind == "experiment"
        finished = self.journal.finish_run(
            result, proposal_state=ProposalState.ACCEPTED if experiment else None)
        if experiment:
            self.loop.proposals[plan.proposal_id].state = ProposalState.ACCEPTED
            self.loop.queue.insert(0, plan.proposal_id)
        self.emit(RunFinished(finished, result))
        self.notice("warning", f"run {done.run_id} ({plan.label or f'#{plan.proposal_id}'}) was interrupted: "
                    f"{result.message}", "nothing recorded was lost")
        self.reset_to_best()

    def lost_runs(self, plan: RunPlan) -> int:
        """Runs of this plan's kind (and proposal) interrupted in a row, the last ones."""
        count = 0
        for r in self.journal.run_rows():
            if r["kind"] == plan.kind and r["proposal_id"] == plan.proposal_id:
                count = count + 1 if r["status"] == RunStatus.INTERRUPTED.value else 0
        return count
