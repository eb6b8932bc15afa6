"""Runs whose worker was lost (a Ray node died): recorded as interrupted and trained again,
up to a limit. Runs on the coordinator thread only (a part the Coordinator hosts)."""

from __future__ import annotations

from typing import Protocol

from engine.base.events import RunFinished
from engine.base.records import ProposalState, RunKind, RunStatus
from engine.loop import workers
from engine.loop.host import LoopHost
from engine.loop.planner import RunPlan

MAX_LOST_RUNS = 3                    # a run that loses its worker every time becomes a crash


class Host(LoopHost, Protocol):
    def reset_to_best(self) -> None: ...


class LostRuns:
    """Runs whose worker was lost: it holds no state of its own, the journal counts the
    losses in a row."""

    def __init__(self, host: Host):
        self.host = host

    def requeue_lost(self, done: workers.RunDone) -> None:
        """The executor lost the run's worker (a Ray node died): recorded as interrupted,
        and it trains again, an experiment first in the queue; the planner schedules any
        other kind again from what is missing."""
        plan, result = done.plan, done.result
        experiment = plan.kind == RunKind.EXPERIMENT
        finished = self.host.journal.finish_run(
            result, proposal_state=ProposalState.ACCEPTED if experiment else None)
        if experiment:
            self.host.loop.proposals[plan.proposal_id].state = ProposalState.ACCEPTED
            self.host.loop.queue.insert(0, plan.proposal_id)
        self.host.emit(RunFinished(finished, result))
        label = plan.label or f"#{plan.proposal_id}"
        self.host.notice("warning", f"run {done.run_id} ({label}) was interrupted: "
                         f"{result.message}", "nothing recorded was lost")
        self.host.reset_to_best()

    def lost_runs(self, plan: RunPlan) -> int:
        """Runs of this plan's kind (and proposal) interrupted in a row, the last ones."""
        count = 0
        for r in self.host.journal.run_rows():
            if r["kind"] == plan.kind and r["proposal_id"] == plan.proposal_id:
                count = count + 1 if r["status"] == RunStatus.INTERRUPTED.value else 0
        return count
