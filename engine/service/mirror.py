"""The engine client's mirror of the engine's screen state: the view it got on attach (or a
resync), brought up to date by each event with the reducer the engine's service and the
app use too (engine/base/view.py), and the Session facade's getters that read it without
asking the engine. A mixin of EngineClient (engine/service/client.py).

The view is immutable and replaced whole, so a getter reads it without a lock.
"""

from __future__ import annotations

from engine.base.events import Event, RunStarted
from engine.base.records import Experiment, Proposal
from engine.base.view import View, reduce
from engine.service import protocol as proto


class MirrorMixin:
    """What the client knows of the engine's state, and the getters that read it."""

    def _load(self, snapshot: proto.Snapshot) -> None:
        self._snapshot = snapshot
        self._workspace, self._targets = snapshot.workspace, snapshot.targets
        self.view = snapshot.view
        self._stop_seen = self._stop_seen or snapshot.view.stopped

    def _apply(self, event: Event) -> None:
        """Bring the mirror up to date, as the engine's own state moved (on the reader
        thread, the only writer)."""
        self.view = reduce(self.view, event)
        self._stop_seen = self._stop_seen or self.view.stopped

    @property
    def state(self) -> str:
        return self.view.state

    @property
    def mode(self) -> str:
        return self.view.mode

    @property
    def paused(self) -> bool:
        return self.view.paused

    @property
    def best(self) -> tuple[str, float] | None:
        return self.view.best

    @property
    def noise_floor(self) -> float | None:
        return self.view.noise_floor

    @property
    def total_cost(self) -> float:
        return self.view.total_cost

    @property
    def current_run(self) -> RunStarted | None:
        return self.view.current_run

    @property
    def snapshot(self) -> proto.Snapshot:
        """The snapshot last received (on attach or a resync)."""
        return self._snapshot

    def pending(self) -> list[Proposal]:
        return list(self.view.pending)

    def queued(self) -> list[Proposal]:
        return list(self.view.queued)

    def proposal(self, proposal_id: int) -> Proposal:
        proposal = self.view.proposal(proposal_id)
        if proposal is None:
            raise KeyError(f"no proposal {proposal_id} waiting or queued")
        return proposal

    def experiments(self) -> list[Experiment]:
        return list(self.view.experiments)
