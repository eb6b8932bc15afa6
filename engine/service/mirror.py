"""The engine client's mirror of the engine's screen state: the snapshot it got on
attach (or a resync), brought up to date by each event, and the Session facade's
getters that read it without asking the engine. A mixin of EngineClient
(engine/service/client.py), which guards it with its lock.
"""

from __future__ import annotations

from dataclasses import replace

from engine.base.events import (BestUpdated, DecisionMade, Event, ExperimentSettled, ModeChanged,
                           NoiseFloor, ProposalReady, ProposalRebased, ProposalStale, RunAccepted,
                           RunFinished, RunStarted, SessionStopped, StateChanged)
from engine.base.records import DecisionKind, Experiment, Proposal, ProposalState
from engine.service import protocol as proto


class MirrorMixin:
    """What the client knows of the engine's state, and the getters that read it."""

    def _load(self, snapshot: proto.Snapshot) -> None:
        with self._lock:
            self._snapshot = snapshot
            self._state, self._mode, self._paused = snapshot.state, snapshot.mode, snapshot.paused
            self._best, self._noise_floor = snapshot.best, snapshot.noise_floor
            self._total_cost, self._current_run = snapshot.total_cost, snapshot.current_run
            self._pending = {p.id: p for p in snapshot.pending}
            self._queued = {p.id: p for p in snapshot.queued}
            self._experiments = {e.id: e for e in snapshot.experiments}
            self._workspace, self._targets = snapshot.workspace, snapshot.targets
            self._stop_seen = self._stop_seen or snapshot.stopped

    def _apply(self, event: Event) -> None:
        """Bring the mirror up to date, as the engine's own state moved."""
        with self._lock:
            if isinstance(event, StateChanged):
                self._state, self._paused = event.state, event.state == "paused"
            elif isinstance(event, ModeChanged):
                self._mode = event.mode
            elif isinstance(event, ProposalReady):
                if event.proposal.state in (ProposalState.PENDING, ProposalState.HELD):
                    self._pending[event.proposal.id] = event.proposal
                self._total_cost += event.proposal.usage.cost_usd
            elif isinstance(event, ProposalRebased):
                for book in (self._pending, self._queued):
                    if event.proposal_id in book:
                        book[event.proposal_id] = replace(
                            book[event.proposal_id], base_commit=event.base_commit,
                            diff=event.diff)
            elif isinstance(event, ProposalStale):
                self._pending.pop(event.proposal_id, None)
                self._queued.pop(event.proposal_id, None)
            elif isinstance(event, DecisionMade):
                proposal = self._pending.pop(event.decision.proposal_id, None)
                if proposal is not None and proposal.state is not ProposalState.HELD \
                        and event.decision.kind is not DecisionKind.VETO:
                    self._queued[proposal.id] = replace(proposal, state=ProposalState.ACCEPTED)
            elif isinstance(event, RunStarted):
                self._current_run = event
                if event.proposal_id is not None:
                    self._queued.pop(event.proposal_id, None)
            elif isinstance(event, RunAccepted):        # trains on: no longer queued
                self._queued.pop(event.proposal_id, None)
                if self._current_run and self._current_run.run_id == event.run_id:
                    self._current_run = replace(self._current_run, speculative=False)
            elif isinstance(event, RunFinished):
                if self._current_run and self._current_run.run_id == event.result.run_id:
                    self._current_run = None
                if event.experiment is not None:
                    self._experiments[event.experiment.id] = event.experiment
            elif isinstance(event, ExperimentSettled):
                self._experiments[event.experiment.id] = event.experiment
            elif isinstance(event, BestUpdated):
                self._best = (event.commit, event.val_bpb)
            elif isinstance(event, NoiseFloor):
                self._noise_floor = event.spread
            elif isinstance(event, SessionStopped):
                self._stop_seen = True
                self._state = "stopped"

    @property
    def state(self) -> str:
        return self._state

    @property
    def mode(self) -> str:
        return self._mode

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def best(self) -> tuple[str, float] | None:
        return self._best

    @property
    def noise_floor(self) -> float | None:
        return self._noise_floor

    @property
    def total_cost(self) -> float:
        return self._total_cost

    @property
    def current_run(self) -> RunStarted | None:
        return self._current_run

    @property
    def snapshot(self) -> proto.Snapshot:
        """The snapshot last received (on attach or a resync): log tail, draft reasoning."""
        return self._snapshot

    def pending(self) -> list[Proposal]:
        with self._lock:
            return sorted(self._pending.values(), key=lambda p: p.id)

    def queued(self) -> list[Proposal]:
        with self._lock:
            return list(self._queued.values())

    def proposal(self, proposal_id: int) -> Proposal:
        with self._lock:
            for book in (self._pending, self._queued):
                if proposal_id in book:
                    return book[proposal_id]
        raise KeyError(f"no proposal {proposal_id} waiting or queued")

    def experiments(self) -> list[Experiment]:
        with self._lock:
            return sorted(self._experiments.values(), key=lambda e: e.id)
