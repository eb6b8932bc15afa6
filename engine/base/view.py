"""The loop as a screen shows it, and the one function that brings it up to date.

`View` is immutable; `reduce(view, event)` returns the view after an event, sharing every
part the event did not touch (so a reader compares parts with `is`). The engine's service
keeps one for the snapshot a new client gets, the client's mirror keeps one for its Session
getters, and the app keeps one for its panels: three readers, one way to apply an event.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

from engine.base.events import (BestUpdated, DecisionMade, DraftFailed, DraftStarted, Event,
                                ExperimentSettled, LogLines, ModeChanged, NoiseFloor, Notice,
                                Preparing, ProposalReady, ProposalRebased, ProposalStale,
                                ReasoningDelta, RunAccepted, RunFinished, RunProgress, RunStarted,
                                SessionStopped, StateChanged, SteeringNote)
from engine.base.records import (DecisionKind, Experiment, Proposal, ProposalState, RunKind,
                                 RunStatus)

LOG_TAIL_LINES = 200           # of the followed run: what a client attaching mid-run sees
PROGRESS_SAMPLES = 5000        # of the followed run: its live loss curve so far

# States the loop leaves only when whatever held it is fixed: its error stays shown.
HELD_STATES = ("paused", "stopping", "stopped")


@dataclass(frozen=True)
class ReasoningChunk:
    kind: str                          # "thinking" | "text" | "tool"
    text: str


@dataclass(frozen=True)
class Draft:
    """The draft being written, with its reasoning so far."""

    draft_id: int
    agent: str
    base_commit: str
    reasoning: tuple[ReasoningChunk, ...] = ()


@dataclass(frozen=True)
class View:
    state: str = "starting"
    detail: str = ""
    mode: str = "review"
    paused: bool = False
    stopped: bool = False
    best: tuple[str, float] | None = None
    noise_floor: float | None = None
    total_cost: float = 0.0
    runs: tuple[RunStarted, ...] = ()          # training now, by slot
    progress: tuple[RunProgress, ...] = ()     # the followed run's samples so far
    log_tail: tuple[str, ...] = ()             # the followed run's last lines
    pending: tuple[Proposal, ...] = ()         # waiting for a human (held wins too), by id
    queued: tuple[Proposal, ...] = ()          # accepted, waiting for a trainer slot
    experiments: tuple[Experiment, ...] = ()   # finished runs, by experiment id
    draft: Draft | None = None
    error: str = ""                            # what paused or stopped the loop, whole
    preparing: Preparing | None = None         # the data's preparation, while it lasts
    open_notes: tuple[SteeringNote, ...] = ()  # steering notes no draft has taken yet

    @property
    def current_run(self) -> RunStarted | None:
        """The run the log panel follows by default: the lowest busy slot's."""
        return self.runs[0] if self.runs else None

    def slot_runs(self) -> dict[int, RunStarted]:
        return {run.slot: run for run in self.runs}

    def proposal(self, proposal_id: int) -> Proposal | None:
        return next((p for p in self.pending + self.queued if p.id == proposal_id), None)


def reduce(view: View, event: Event) -> View:
    """The view after `event`; the view itself for an event that changes nothing shown."""
    step = _STEPS.get(type(event))
    return step(view, event) if step is not None else view


def running_row(run: RunStarted) -> Experiment:
    """A run still training, as a row of the experiments table."""
    return Experiment(id=run.experiment_id, proposal_id=run.proposal_id, commit=run.commit,
                      status=RunStatus.INTERRUPTED, val_bpb=None, memory_gb=0.0,
                      description=run.description, decided_by="", run_id=run.run_id,
                      started_at=run.at, finished_at=None, log_path=run.log_path,
                      kind=run.kind, speculative=run.speculative)


# ---------------------------------------------------------------------- the loop's state


def _state(view: View, event: StateChanged) -> View:
    return replace(view, state=event.state, detail=event.detail,
                   paused=event.state == "paused",
                   error=view.error if event.state in HELD_STATES else "",
                   preparing=view.preparing if event.state == "preparing" else None)


def _preparing(view: View, event: Preparing) -> View:
    return replace(view, preparing=event)


def _mode(view: View, event: ModeChanged) -> View:
    return replace(view, mode=event.mode)


def _notice(view: View, event: Notice) -> View:
    if event.level != "error":
        return view
    return replace(view, error=f"{event.message} ({event.hint})" if event.hint else event.message)


def _best(view: View, event: BestUpdated) -> View:
    return replace(view, best=(event.commit, event.val_bpb))


def _noise_floor(view: View, event: NoiseFloor) -> View:
    return replace(view, noise_floor=event.spread)


def _stopped(view: View, event: SessionStopped) -> View:
    return replace(view, stopped=True, state="stopped", runs=())


# ---------------------------------------------------------------------- proposals


def _without(proposals: tuple[Proposal, ...], proposal_id: int) -> tuple[Proposal, ...]:
    return tuple(p for p in proposals if p.id != proposal_id)


def _proposal_ready(view: View, event: ProposalReady) -> View:
    proposal = event.proposal
    pending = view.pending
    if proposal.state in (ProposalState.PENDING, ProposalState.HELD):
        pending = tuple(sorted(_without(pending, proposal.id) + (proposal,), key=lambda p: p.id))
    draft = None if view.draft and view.draft.draft_id == proposal.id else view.draft
    notes = tuple(n for n in view.open_notes if n.text not in proposal.notes)
    return replace(view, pending=pending, total_cost=view.total_cost + proposal.usage.cost_usd,
                   draft=draft, open_notes=notes if notes != view.open_notes else view.open_notes)


def _rebased(view: View, event: ProposalRebased) -> View:
    def moved(proposals: tuple[Proposal, ...]) -> tuple[Proposal, ...]:
        return tuple(replace(p, base_commit=event.base_commit, diff=event.diff)
                     if p.id == event.proposal_id else p for p in proposals)
    return replace(view, pending=moved(view.pending), queued=moved(view.queued))


def _stale(view: View, event: ProposalStale) -> View:
    return replace(view, pending=_without(view.pending, event.proposal_id),
                   queued=_without(view.queued, event.proposal_id))


def _decided(view: View, event: DecisionMade) -> View:
    decision = event.decision
    decided = next((p for p in view.pending if p.id == decision.proposal_id), None)
    if decided is None:
        return view
    queued = view.queued
    # A held win already trained: accepting it keeps it, nothing is queued.
    if decided.state is not ProposalState.HELD and decision.kind is not DecisionKind.VETO:
        queued += (replace(decided, state=ProposalState.ACCEPTED),)
    return replace(view, pending=_without(view.pending, decided.id), queued=queued)


# ---------------------------------------------------------------------- runs


def _run_started(view: View, event: RunStarted) -> View:
    runs = tuple(sorted([r for r in view.runs if r.slot != event.slot] + [event],
                        key=lambda r: r.slot))
    queued = view.queued if event.proposal_id is None else _without(view.queued, event.proposal_id)
    view = replace(view, runs=runs, queued=queued)
    if runs[0] is event:                        # followed from now on: its own tail
        view = replace(view, log_tail=(), progress=())
    return view


def _run_accepted(view: View, event: RunAccepted) -> View:
    runs = tuple(replace(r, speculative=False, kind=RunKind.EXPERIMENT)
                 if r.run_id == event.run_id else r for r in view.runs)
    return replace(view, runs=runs, queued=_without(view.queued, event.proposal_id))


def _with_experiment(view: View, experiment: Experiment | None) -> tuple[Experiment, ...]:
    if experiment is None:
        return view.experiments
    others = [e for e in view.experiments if e.id != experiment.id]
    return tuple(sorted(others + [experiment], key=lambda e: e.id))


def _run_finished(view: View, event: RunFinished) -> View:
    followed = view.current_run is not None and view.current_run.run_id == event.result.run_id
    return replace(view, runs=tuple(r for r in view.runs if r.run_id != event.result.run_id),
                   experiments=_with_experiment(view, event.experiment),
                   progress=() if followed else view.progress)


def _settled(view: View, event: ExperimentSettled) -> View:
    return replace(view, experiments=_with_experiment(view, event.experiment))


def _log_lines(view: View, event: LogLines) -> View:
    if view.current_run is None or event.run_id != view.current_run.run_id:
        return view
    return replace(view, log_tail=(view.log_tail + tuple(event.lines))[-LOG_TAIL_LINES:])


def _progress(view: View, event: RunProgress) -> View:
    if view.current_run is None or event.run_id != view.current_run.run_id:
        return view
    return replace(view, progress=(view.progress + (event,))[-PROGRESS_SAMPLES:])


# ---------------------------------------------------------------------- drafts and notes


def _draft_started(view: View, event: DraftStarted) -> View:
    return replace(view, draft=Draft(event.draft_id, event.agent, event.base_commit))


def _reasoning(view: View, event: ReasoningDelta) -> View:
    draft = view.draft
    if draft is None or draft.draft_id != event.draft_id:
        return view
    chunks = draft.reasoning
    if chunks and chunks[-1].kind == event.kind:
        chunks = chunks[:-1] + (ReasoningChunk(event.kind, chunks[-1].text + event.text),)
    else:
        chunks += (ReasoningChunk(event.kind, event.text),)
    return replace(view, draft=replace(draft, reasoning=chunks))


def _draft_failed(view: View, event: DraftFailed) -> View:
    if view.draft is None or view.draft.draft_id != event.draft_id:
        return view
    return replace(view, draft=None)


def _note(view: View, event: SteeringNote) -> View:
    return replace(view, open_notes=view.open_notes + (event,))


_STEPS: dict[type[Event], Callable[[View, Event], View]] = {
    StateChanged: _state, Preparing: _preparing, ModeChanged: _mode, Notice: _notice,
    BestUpdated: _best, NoiseFloor: _noise_floor, SessionStopped: _stopped,
    ProposalReady: _proposal_ready, ProposalRebased: _rebased, ProposalStale: _stale,
    DecisionMade: _decided, RunStarted: _run_started, RunAccepted: _run_accepted,
    RunFinished: _run_finished, ExperimentSettled: _settled, LogLines: _log_lines,
    RunProgress: _progress, DraftStarted: _draft_started, ReasoningDelta: _reasoning,
    DraftFailed: _draft_failed, SteeringNote: _note,
}
