"""The main screen's engine -> widgets side. The screen keeps the loop's `View` and brings
it up to date with the one reducer the engine's service and client use too
(engine/base/view.py); each panel is then handed the parts of the view it shows that
changed (attributes down). What an event says beyond the state (a notification, a run's
end line in the log) is announced once. A mixin of MainScreen (tui/screens/main.py), on
the UI thread. Message handlers (@on) stay on the screen: Textual collects them from its
widget classes only.
"""

from __future__ import annotations

from textual.widgets import ProgressBar, Static

from engine.base.events import (BestUpdated, DraftFailed, DraftStarted, Event, Notice,
                                ProposalStale, RunFinished, RunProgress, RunStarted,
                                SessionStopped)
from engine.base.records import RunStatus
from engine.base.view import View, reduce, running_row
from engine.scale.slots import upcoming_slots
from engine.service.client import EngineClient, EngineLost

# A burst of events refreshes the footer once (it recomposes itself on each refresh).
BINDINGS_REFRESH_S = 0.05


def trains_words(slot_runs: dict[int, RunStarted]) -> str | None:
    """What the trainer slots do for proposals, in words: a run ahead of its review first."""
    runs = [run for _, run in sorted(slot_runs.items()) if run.proposal_id is not None]
    ahead = [run for run in runs if run.speculative]
    if ahead:
        return f"#{ahead[0].proposal_id} trains speculatively"
    return f"training #{runs[0].proposal_id}" if runs else None


class EngineEventsMixin:
    """The engine's news, shown: on the UI thread, never waiting on the engine."""

    view: View

    @property
    def slot_runs(self) -> dict[int, RunStarted]:
        """Every busy trainer slot's run."""
        return self.view.slot_runs()

    @property
    def run_in_flight(self) -> RunStarted | None:
        """The followed slot's run, while it trains."""
        return self.slot_runs.get(self.followed_slot)

    def load_snapshot(self) -> None:
        """What the session already knows (a resumed journal; the engine's snapshot on attach
        or a resync), drawn before live events arrive."""
        session = self.session
        attached = isinstance(session, EngineClient)
        before, self.view = self.view, session.view if attached else session.view()
        self.show_view(before, self.view)
        if attached:
            self._load_attach_extras(session.snapshot)

    def _load_attach_extras(self, snapshot) -> None:
        """What only the service kept: the run's log tail and progress, the draft so far."""
        view = snapshot.view
        if view.current_run is not None and not snapshot.resync:
            self.log_panel.write(view.current_run.run_id, list(view.log_tail), 0)
        if view.progress:
            self.apply_progress(list(view.progress))
        if view.draft is not None and not snapshot.resync:
            self.app.call_later(self._load_draft, view.draft)

    async def _load_draft(self, draft) -> None:
        await self.reasoning.start_draft(draft.draft_id, draft.agent, draft.base_commit)
        if draft.reasoning:
            await self.reasoning.append(draft.draft_id, [(c.kind, c.text) for c in draft.reasoning])
        self.reasoning.show_proposal(self.diff.selected_proposal)

    def engine_lost(self, event: EngineLost) -> None:
        """The connection ended: after a stop, or because the engine died."""
        self.state = "stopped" if event.stopped else "engine gone"
        self.status.state, self.status.detail = self.state, event.message
        if not event.stopped:
            self.notify(event.message, title="the engine is gone", severity="error", timeout=30)
        self._after_change()

    def apply_event(self, event: Event) -> None:
        before, self.view = self.view, reduce(self.view, event)
        self.show_view(before, self.view)
        self._announce(event, before)

    # ------------------------------------------------------------------ the view, shown

    def show_view(self, before: View, after: View) -> None:
        """Hand each panel the parts of the view it shows that changed: the reducer shares
        every part an event did not touch, so `is` tells what did."""
        self.state = after.state
        self._show_preparing(before, after)
        if after.pending is not before.pending:
            self.diff.show(after.pending)
        if after.best != before.best:
            self.table.set_best(after.best[1] if after.best else None)
        if after.experiments is not before.experiments:
            seen = {id(experiment) for experiment in before.experiments}
            changed = [e for e in after.experiments if id(e) not in seen]
            self.table.upsert(changed)
            self.chart.load(changed)
        if after.runs is not before.runs:
            self._show_runs(before, after)
        if after.best != before.best and after.best is not None:
            best_run = next((e.run_id for e in reversed(after.experiments)
                             if e.commit == after.best[0] and e.status is RunStatus.KEEP), None)
            if best_run:
                self.chart.set_best_run(best_run)
        if after.noise_floor != before.noise_floor:
            self.chart.set_noise_floor(after.noise_floor)
        if after.open_notes is not before.open_notes:
            self.reasoning.show_notes({note.note_id: note.text for note in after.open_notes})
        status = self.status
        status.state, status.detail, status.mode = after.state, after.detail, after.mode
        status.best, status.noise_floor, status.cost = after.best, after.noise_floor, after.total_cost
        self._after_change()

    def _show_preparing(self, before: View, after: View) -> None:
        self.query_one("#preparing").display = (after.preparing is not None
                                                or after.state == "preparing")
        preparing = after.preparing
        if preparing is not None and preparing is not before.preparing:
            self.query_one("#preparing-label", Static).update(
                f"preparing data: {preparing.stage} ")
            self.query_one("#preparing-bar", ProgressBar).update(
                total=100, progress=preparing.fraction * 100)

    def _show_runs(self, before: View, after: View) -> None:
        """Rows for the runs that started or changed; the log follows a new run in the
        followed slot, or in any slot while the followed one is idle."""
        was = {run.run_id: run for run in before.runs}
        slots = after.slot_runs()
        changed = [run for run in after.runs if was.get(run.run_id) is not run]
        for run in changed:
            self.slot_count = run.slots
            if run.run_id not in was and (run.slot == self.followed_slot
                                          or self.followed_slot not in slots):
                self.follow(run.slot)
        self.table.upsert([running_row(run) for run in changed], training=True)
        self.device.show_slots(slots, self.followed_slot)

    # ------------------------------------------------------------------ news

    def _announce(self, event: Event, before: View) -> None:
        """What an event says beyond the state it changed."""
        if isinstance(event, RunFinished):
            result = event.result
            followed = before.slot_runs().get(self.followed_slot)
            if followed is not None and followed.run_id == result.run_id:
                self.chart.stop_live()
            bpb = "—" if result.val_bpb is None else f"{result.val_bpb:.6f}"
            summary = f"{result.status.value} · val_bpb {bpb}"
            self.log_panel.finish_run(result.run_id,
                                      f"{summary} · {result.message}" if result.message else summary)
        elif isinstance(event, BestUpdated):
            best_run = next((e.run_id for e in self.table.rows.values()
                             if e.id == event.experiment_id), None)
            self.chart.set_best_run(best_run)
        elif isinstance(event, ProposalStale):
            self.notify(f"proposal #{event.proposal_id} no longer applies: {event.reason}",
                        severity="warning")
        elif isinstance(event, DraftFailed):
            self.notify(event.message, title=f"draft #{event.draft_id} failed", severity="error")
        elif isinstance(event, Notice):
            severity = {"error": "error", "warning": "warning"}.get(event.level, "information")
            text = f"{event.message}\n{event.hint}" if event.hint else event.message
            self.notify(text, severity=severity, timeout=12 if severity == "error" else 6)
        elif isinstance(event, SessionStopped):
            self.notify(event.summary, title="session stopped", timeout=30)

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

    def _after_change(self) -> None:
        self.status.pending = len(self.diff.queue)
        self.status.trains = trains_words(self.slot_runs)
        self.status.run_kind = self.run_in_flight.kind if self.run_in_flight else None
        if self.slot_count > 1:
            self.diff.show_slots(upcoming_slots(list(self.diff.queue), self.slot_count,
                                                self.slot_runs))
        self.status.redraw()
        # The footer rebuilds itself on every refresh: only when a key's applicability changed.
        if self._applicable_now() != self._applicable and not self._bindings_refresh_due:
            self._bindings_refresh_due = True
            self.set_timer(BINDINGS_REFRESH_S, self._refresh_footer)

    def _applicable_now(self) -> tuple:
        return (self.diff.selected is not None, len(self.diff.queue) > 1, self.state,
                self.run_in_flight is not None, bool(self.table.rows))

    def _refresh_footer(self) -> None:
        self._bindings_refresh_due = False
        self._applicable = self._applicable_now()
        self.refresh_bindings()

    def follow(self, slot: int) -> None:
        """The log panel, the live chart and the progress follow this slot's run."""
        run = self.slot_runs[slot]
        self.followed_slot = slot
        self.status.progress = None
        self.log_panel.start_run(run)
        self.chart.start_live(run.run_id)
