"""Speculative training (issue 10): in review mode a free trainer slot trains the oldest
proposal waiting for a human before anyone accepted it, so the accelerator never waits
for a decision. Runs on the coordinator thread only (a part the Coordinator hosts).

A speculative run is a slot filled with a pending proposal: it trains a side commit in the
slot's own worktree (engine/scale/slots.py), so the research branch and the workspace's checkout
do not move for it. Its journal run has kind RunKind.SPECULATIVE until a human decides:

- accept: the run becomes the proposal's experiment, with the time it already had; if it
  already finished, the judge decides at once, exactly as for any experiment;
- veto: killed at once, recorded as vetoed;
- edit: killed, and the edited version trains as an accepted experiment;
- a rebase (the best moved under it): killed, and it trains again on the new best.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Protocol

from engine.base.events import RunAccepted, RunFinished
from engine.base.records import Decision, DecisionKind, ProposalState, RunKind, RunStatus
from engine.loop import workers
from engine.loop.host import LoopHost
from engine.loop.loop_state import ActiveRun
from engine.loop.planner import RunPlan

# why a speculative run was cut short -> how its run is recorded
SUPERSEDED = {
    "vetoed": (RunStatus.VETOED, "vetoed while it trained ahead of its review"),
    "edited": (RunStatus.INTERRUPTED, "the human edited the proposal: it trains again with "
                                      "the edit"),
    "rebased": (RunStatus.INTERRUPTED, "the best moved under it: it trains again on the new "
                                       "best"),
    "stale": (RunStatus.INTERRUPTED, "the best moved and the proposal no longer applies"),
}
AHEAD_MESSAGE = "trained ahead of its review: judged once a human accepts it"
# a speculative run that ended like this is judged at once when accepted; any other ending
# (killed by the user) trains again
JUDGED_AHEAD = (RunStatus.SPECULATIVE, RunStatus.CRASH, RunStatus.TIMEOUT)


class Host(LoopHost, Protocol):
    def recorded_result(self, run_id: str, status: RunStatus, message: str | None): ...

    def on_experiment(self, done: workers.RunDone, state: dict, measured: bool) -> None: ...

    def reset_to_best(self) -> None: ...


class Speculation:
    """Runs trained ahead of their review: it owns the finished ones waiting for a human
    (proposal -> run); the runs in flight are the loop's, marked "speculative"."""

    def __init__(self, host: Host):
        self.host = host
        self.ahead: dict[int, str] = {}      # proposal -> its finished speculative run

    @property
    def speculating(self) -> bool:
        """Review mode with speculation on: free slots train pending proposals ahead."""
        return self.host.loop.mode == "review" and self.host.settings.speculate

    def speculative_run(self, proposal_id: int) -> ActiveRun | None:
        """The proposal's speculative run in flight, unless it is being killed: a run cut
        short (a rebase, a veto) never becomes the proposal's experiment."""
        return next((active for active in self.host.loop.runs.values()
                     if active.plan.kind == RunKind.SPECULATIVE and not active.superseded
                     and active.plan.proposal_id == proposal_id), None)

    def unspeculated(self) -> tuple[int, ...]:
        """Proposals waiting for review that no slot trains (or is still killing) or has
        trained, oldest first."""
        training = {active.plan.proposal_id for active in self.host.loop.runs.values()}
        return tuple(i for i in self.host.loop.review
                     if i not in self.ahead and i not in training)

    # ------------------------------------------------------------------ its run ended

    def trained_ahead(self, done: workers.RunDone) -> None:
        """A speculative run finished before any decision: kept for the human's."""
        result = done.result
        state = {}
        if result.status is RunStatus.MEASURED:
            result.status, result.message = RunStatus.SPECULATIVE, AHEAD_MESSAGE
            if self.host.journal.get_state("eval_tokens") is None:
                state["eval_tokens"] = result.metrics.get("eval_tokens")
        experiment = self.host.journal.finish_run(result, state=state)
        self.ahead[done.plan.proposal_id] = done.run_id
        self.host.emit(RunFinished(experiment, result))

    def superseded_run(self, done: workers.RunDone, why: str) -> None:
        result = done.result
        result.status, result.message = SUPERSEDED[why]
        experiment = self.host.journal.finish_run(result)
        self.host.emit(RunFinished(experiment, result))

    # ------------------------------------------------------------------ a human decided

    def decided_speculation(self, decision: Decision) -> None:
        """What a decision means for the proposal's speculative run, in flight or done."""
        loop, proposal_id = self.host.loop, decision.proposal_id
        active = self.speculative_run(proposal_id)
        run_id = self.ahead.pop(proposal_id, None)
        if decision.kind is DecisionKind.ACCEPT and active is not None:
            loop.queue.remove(proposal_id)
            active.plan = replace(active.plan, kind=RunKind.EXPERIMENT)
            active.started = replace(active.started, kind=RunKind.EXPERIMENT, speculative=False)
            loop.proposals[proposal_id].state = ProposalState.TRAINING
            self.host.journal.accept_speculative(active.started.run_id, ProposalState.TRAINING)
            self.host.emit(RunAccepted(active.started.run_id, proposal_id))
        elif decision.kind is DecisionKind.ACCEPT and run_id is not None:
            self.judge_ahead(proposal_id, run_id)
        elif active is not None:
            self.supersede(active, "vetoed" if decision.kind is DecisionKind.VETO else "edited")
        elif run_id is not None:
            self.drop_ahead(run_id, "vetoed" if decision.kind is DecisionKind.VETO
                            else "edited")

    def judge_ahead(self, proposal_id: int, run_id: str) -> None:
        """An accepted proposal whose speculative run already finished: judged at once."""
        row = self.host.journal.get_run(run_id)
        if row.status not in JUDGED_AHEAD:
            return                                 # it stays queued and trains again
        self.host.loop.queue.remove(proposal_id)
        self.host.journal.accept_speculative(run_id, ProposalState.TRAINING)
        self.host.emit(RunAccepted(run_id, proposal_id))
        measured = row.status is RunStatus.SPECULATIVE
        result = self.host.recorded_result(
            run_id, RunStatus.MEASURED if measured else row.status, "" if measured else None)
        plan = RunPlan(RunKind.EXPERIMENT, "", proposal_id, "")
        self.host.on_experiment(workers.RunDone(plan, run_id, row.id, row.commit, result), {},
                                measured)
        self.host.workspace.write_results_tsv(self.host.journal)
        self.host.reset_to_best()

    # ------------------------------------------------------------------ cut short

    def supersede(self, active: ActiveRun, why: str) -> None:
        """Kill a speculative run at once; on_run records it by `why`."""
        active.superseded = why
        active.runner.kill(SUPERSEDED[why][1])

    def drop_speculation(self, proposal_id: int, why: str) -> None:
        """The proposal moved (rebased) or went stale: its speculative run no longer counts."""
        active = self.speculative_run(proposal_id)
        if active is not None:
            self.supersede(active, why)
        run_id = self.ahead.pop(proposal_id, None)
        if run_id is not None:
            self.drop_ahead(run_id, why)

    def drop_ahead(self, run_id: str, why: str) -> None:
        """A finished speculative run that will not be judged: recorded by `why`."""
        status, message = SUPERSEDED[why]
        experiment = self.host.journal.set_run_status(run_id, status, message)
        self.host.emit(RunFinished(copy.deepcopy(experiment),
                              self.host.recorded_result(run_id, status, message)))
