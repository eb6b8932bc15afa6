"""The main screen's engine -> widgets side: what the session already knows loaded at
start (and on a resync), each engine event applied to the panels, the status line
and the footer, and which trainer slot's run the log panel follows. A mixin of
MainScreen (tui/screens/main.py), on the UI thread. Message handlers (@on) stay on
the screen: Textual collects them from its widget classes only.
"""

from __future__ import annotations

from dataclasses import replace

from textual.widgets import ProgressBar, Static

from engine.base.events import (BestUpdated, DecisionMade, DraftFailed, DraftStarted, Event,
                           ExperimentSettled, ModeChanged, NoiseFloor, Notice, Preparing, ProposalReady,
                           ProposalRebased, ProposalStale, RunAccepted, RunFinished, RunProgress,
                           RunStarted, SessionStopped, StateChanged, SteeringNote)
from engine.service.client import EngineClient, EngineLost
from engine.base.records import Experiment, RunStatus
from engine.scale.slots import upcoming_slots

# A burst of events refreshes the footer once (it recomposes itself on each refresh).
BINDINGS_REFRESH_S = 0.05


def best_value(best) -> tuple[str, float] | None:
    """Session.best as (commit, val_bpb), whether it hands back a tuple or an Experiment."""
    if best is None:
        return None
    if isinstance(best, tuple):
        return best
    return (best.commit, best.val_bpb)


def trains_words(slot_runs: dict[int, RunStarted]) -> str | None:
    """What the trainer slots do for proposals, in words: a run ahead of its review first."""
    runs = [run for _, run in sorted(slot_runs.items()) if run.proposal_id is not None]
    ahead = [run for run in runs if run.speculative]
    if ahead:
        return f"#{ahead[0].proposal_id} trains speculatively"
    return f"training #{runs[0].proposal_id}" if runs else None


class EngineEventsMixin:
    """The engine's news, shown: on the UI thread, never waiting on the engine."""

    def load_snapshot(self) -> None:
        """What the session already knows (a resumed journal), before live events arrive."""
        session = self.session
        experiments = session.experiments()
        best = best_value(session.best)
        self.table.load(experiments, best[1] if best else None)
        self.chart.load(experiments)
        self._set_best(best)
        self.status.noise_floor = session.noise_floor
        self.chart.set_noise_floor(session.noise_floor)
        self.status.mode = session.mode
        self.status.cost = session.total_cost
        self.diff.set_queue(session.pending())
        self.state = session.state
        self.status.state = session.state
        if session.current_run is not None:           # opened on a loop already training
            self.apply_event(session.current_run)
        if isinstance(session, EngineClient):
            self._load_attach_extras(session)
        self._after_change()

    def _load_attach_extras(self, client: EngineClient) -> None:
        """What only the service kept: the run's log tail and progress, the draft so far."""
        snapshot = client.snapshot
        for note in snapshot.open_notes:
            self.reasoning.add_note(note.note_id, note.text)
        if snapshot.current_run is not None and not snapshot.resync:
            self.log_panel.write(snapshot.current_run.run_id, snapshot.log_tail, 0)
        if snapshot.progress:
            self.apply_progress(snapshot.progress)
        if snapshot.draft_id is not None and not snapshot.resync:
            self.app.call_later(self._load_draft, snapshot)

    async def _load_draft(self, snapshot) -> None:
        await self.reasoning.start_draft(snapshot.draft_id, snapshot.draft_agent,
                                         snapshot.draft_base)
        if snapshot.reasoning:
            await self.reasoning.append(snapshot.draft_id,
                                        [(c.kind, c.text) for c in snapshot.reasoning])
        self.reasoning.show_proposal(self.diff.selected_proposal)

    def engine_lost(self, event: EngineLost) -> None:
        """The connection ended: after a stop, or because the engine died."""
        self.state = "stopped" if event.stopped else "engine gone"
        self.run_in_flight = None
        self.status.state, self.status.detail = self.state, event.message
        if not event.stopped:
            self.notify(event.message, title="the engine is gone", severity="error", timeout=30)
        self._after_change()

    def apply_event(self, event: Event) -> None:
        if isinstance(event, StateChanged):
            self.state = event.state
            self.status.state, self.status.detail = event.state, event.detail
            self.query_one("#preparing").display = event.state == "preparing"
        elif isinstance(event, Preparing):
            self.query_one("#preparing").display = True
            self.query_one("#preparing-label", Static).update(f"preparing data: {event.stage} ")
            self.query_one("#preparing-bar", ProgressBar).update(total=100,
                                                                 progress=event.fraction * 100)
        elif isinstance(event, ModeChanged):
            self.status.mode = event.mode
        elif isinstance(event, ProposalReady):
            self.diff.add(event.proposal)
            self.reasoning.notes_taken(event.proposal.notes)
            self.status.cost += event.proposal.usage.cost_usd   # no journal read on the UI thread
        elif isinstance(event, ProposalRebased):
            self.diff.rebase(event.proposal_id, event.base_commit, event.diff)
        elif isinstance(event, ProposalStale):
            self.diff.remove(event.proposal_id)
            self.notify(f"proposal #{event.proposal_id} no longer applies: {event.reason}",
                        severity="warning")
        elif isinstance(event, DecisionMade):
            self.diff.remove(event.decision.proposal_id)
        elif isinstance(event, ExperimentSettled):
            self._record_experiment(event.experiment)
        elif isinstance(event, RunStarted):
            self.slot_runs[event.slot], self.slot_count = event, event.slots
            if event.slot == self.followed_slot or self.followed_slot not in self.slot_runs:
                self.follow(event.slot)                 # the followed slot's, or it is idle
            self.device.show_slots(self.slot_runs, self.followed_slot)
            self.table.upsert(Experiment(
                id=event.experiment_id, proposal_id=event.proposal_id, commit=event.commit,
                status=RunStatus.INTERRUPTED, val_bpb=None, memory_gb=0.0,
                description=event.description, decided_by="", run_id=event.run_id,
                started_at=event.at, finished_at=None, log_path=event.log_path,
                kind=event.kind, speculative=event.speculative), training=True)
        elif isinstance(event, RunAccepted):
            for slot, run in self.slot_runs.items():
                if run.run_id == event.run_id:
                    self.slot_runs[slot] = replace(run, speculative=False, kind="experiment")
                    if self.run_in_flight is run:
                        self.run_in_flight = self.slot_runs[slot]
            row = self.table.rows.get(event.run_id)
            if row is not None:                # the speculative run now counts: training
                self.table.upsert(replace(row, speculative=False, kind="experiment"),
                                  training=row.finished_at is None)
        elif isinstance(event, RunFinished):
            experiment, result = event.experiment, event.result
            for slot, run in list(self.slot_runs.items()):
                if run.run_id == result.run_id:
                    del self.slot_runs[slot]
            self.device.show_slots(self.slot_runs, self.followed_slot)
            if self.run_in_flight is not None and self.run_in_flight.run_id == result.run_id:
                self.run_in_flight = None
                self.chart.stop_live()
            self._record_experiment(experiment)
            bpb = "—" if result.val_bpb is None else f"{result.val_bpb:.6f}"
            summary = f"{result.status.value} · val_bpb {bpb}"
            if result.message:
                summary += f" · {result.message}"
            self.log_panel.finish_run(result.run_id, summary)
        elif isinstance(event, BestUpdated):
            self._set_best((event.commit, event.val_bpb))
            best_run = next((e.run_id for e in self.table.rows.values()
                             if e.id == event.experiment_id and e.id is not None), None)
            self.chart.set_best_run(best_run)
        elif isinstance(event, NoiseFloor):
            self.status.noise_floor = event.spread
            self.chart.set_noise_floor(event.spread)
        elif isinstance(event, DraftFailed):
            self.notify(event.message, title=f"draft #{event.draft_id} failed", severity="error")
        elif isinstance(event, Notice):
            severity = {"error": "error", "warning": "warning"}.get(event.level, "information")
            text = f"{event.message}\n{event.hint}" if event.hint else event.message
            self.notify(text, severity=severity, timeout=12 if severity == "error" else 6)
        elif isinstance(event, SteeringNote):
            self.reasoning.add_note(event.note_id, event.text)
        elif isinstance(event, SessionStopped):
            self.state = "stopped"
            self.status.state, self.status.detail = "stopped", event.reason
            self.notify(event.summary, title="session stopped", timeout=30)
        self._after_change()

    async def apply_draft_event(self, event: DraftStarted | DraftFailed) -> None:
        if isinstance(event, DraftStarted):
            await self.reasoning.start_draft(event.draft_id, event.agent, event.base_commit)
            self.reasoning.show_proposal(self.diff.selected_proposal)
        else:
            await self.reasoning.end_draft(f"draft failed: {event.message}")

    def apply_progress(self, samples: list[RunProgress]) -> None:
        for sample in samples:
            self.chart.add_progress(sample.run_id, sample.elapsed_s, sample.loss)
        latest = samples[-1]
        if self.run_in_flight is None or latest.run_id == self.run_in_flight.run_id:
            self.status.progress = latest
            self.status.redraw()

    def _record_experiment(self, experiment: Experiment) -> None:
        self.table.upsert(experiment)
        self.chart.upsert(experiment)

    def _set_best(self, best: tuple[str, float] | None) -> None:
        self.status.best = best
        self.table.set_best(best[1] if best else None)
        if best is not None:
            best_run = next((e.run_id for e in reversed(self.table.rows.values())
                             if e.commit == best[0] and e.status == RunStatus.KEEP), None)
            if best_run:
                self.chart.set_best_run(best_run)

    def _after_change(self) -> None:
        self.status.pending = len(self.diff.queue)
        self.status.trains = trains_words(self.slot_runs)
        self.status.run_kind = self.run_in_flight.kind if self.run_in_flight else None
        if self.slot_count > 1:
            self.diff.show_slots(upcoming_slots(list(self.diff.queue), self.slot_count,
                                                self.slot_runs))
        self.status.redraw()
        # The footer rebuilds itself on every refresh: only when a key's applicability changed.
        applicable = (self.diff.selected is not None, len(self.diff.queue) > 1, self.state,
                      self.run_in_flight is not None, bool(self.table.rows))
        if applicable != self._applicable and not self._bindings_refresh_due:
            self._bindings_refresh_due = True
            self.set_timer(BINDINGS_REFRESH_S, self._refresh_footer)

    def _refresh_footer(self) -> None:
        self._bindings_refresh_due = False
        self._applicable = (self.diff.selected is not None, len(self.diff.queue) > 1, self.state,
                            self.run_in_flight is not None, bool(self.table.rows))
        self.refresh_bindings()

    def follow(self, slot: int) -> None:
        """The log panel, the live chart and the progress follow this slot's run."""
        run = self.slot_runs[slot]
        self.followed_slot, self.run_in_flight = slot, run
        self.status.progress = None
        self.log_panel.start_run(run)
        self.chart.start_live(run.run_id)
