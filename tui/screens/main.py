"""The main screen: status line, six panels, footer. Engine events are applied here;
keys become Session (or engine client) calls made in thread workers, so the UI never waits
on the engine. A read-only client shows no decision keys."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.content import Content
from textual.screen import Screen
from textual.widgets import DataTable, Footer, ProgressBar, Static

from engine.base.events import (BestUpdated, DecisionMade, DraftFailed, DraftStarted, Event,
                           ExperimentSettled, ModeChanged, NoiseFloor, Notice, Preparing, ProposalReady,
                           ProposalRebased, ProposalStale, RunAccepted, RunFinished, RunProgress,
                           RunStarted, SessionStopped, StateChanged, SteeringNote)
from engine.service.client import EngineClient, EngineLost
from engine.base.records import Experiment, ProposalState, RunStatus
from engine.scale.slots import upcoming_slots
from tui.messages import ProposalSelected
from tui.screens.editor import EditorScreen
from tui.screens.log_viewer import LogViewerScreen
from tui.screens.modals import HelpScreen, VetoScreen
from tui.screens.steering import NoteScreen, ProgramEditorScreen
from tui.widgets.chart import ChartPanel
from tui.widgets.device import DevicePanel
from tui.widgets.diff import DiffPanel
from tui.widgets.experiments import ExperimentsPanel
from tui.widgets.footer import WholeKeysFooter
from tui.widgets.log import LogPanel
from tui.widgets.panel import Panel, PanelGrid
from tui.widgets.reasoning import ReasoningPanel
from tui.widgets.status import StatusLine

# Below this size the panels stack: one at a time, chosen with tab.
NARROW_WIDTH = 100
NARROW_HEIGHT = 28
# A burst of events refreshes the footer once (it recomposes itself on each refresh).
BINDINGS_REFRESH_S = 0.05
PANEL_NAMES = {
    "reasoning-panel": "reasoning", "diff-panel": "diff", "device-panel": "device",
    "chart-panel": "chart", "log-panel": "log", "experiments-panel": "runs",
}


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


class MainScreen(Screen):
    # A panel full-screened with `f` keeps the status line and the keys around it.
    ALLOW_IN_MAXIMIZED_VIEW = "StatusLine, Footer"
    # Footer order: what matters most first, so a narrow footer cuts the least useful keys;
    # q early, so even an 80-column footer says that leaving does not stop the loop.
    BINDINGS = [
        Binding("a", "accept", "Accept", id="accept", tooltip="Train the selected proposal as is"),
        Binding("e", "edit", "Edit", id="edit", tooltip="Edit the proposal, then train your version"),
        Binding("v", "veto", "Veto", id="veto", tooltip="Reject it, with a reason for the agent"),
        Binding("q", "detach", "Detach (loop goes on)", id="detach",
                tooltip="Leave the app; the engine's loop goes on. `pairlab` comes back"),
        Binding("n", "step_proposal(1)", "Next", id="next-proposal"),
        Binding("N", "step_proposal(-1)", "Prev", id="previous-proposal"),
        Binding("p", "pause", "Pause", id="pause", tooltip="Stop starting new runs and drafts"),
        Binding("p", "resume", "Resume", id="resume"),
        Binding("k", "kill_run", "Kill", id="kill-run", tooltip="Stop the run in flight"),
        Binding("m", "toggle_mode", "Mode", id="toggle-mode", tooltip="review <-> auto"),
        Binding("question_mark", "help", "Help", id="help"),
        Binding("S", "stop_loop", "Stop loop", id="stop-loop",
                tooltip="Stop the engine's loop for every client (asks while a run trains)"),
        Binding("tab", "cycle_panel(1)", "Next panel", id="focus-next", show=False),
        Binding("shift+tab", "cycle_panel(-1)", "Previous panel", id="focus-previous", show=False),
        Binding("f", "toggle_maximize", "Full", id="maximize", tooltip="Full-screen the panel"),
        Binding("o", "open_log", "Log", id="open-log", tooltip="Open the selected run's log"),
        Binding("s", "write_note", "Note", id="steer-note",
                tooltip="A note to the agent, for its next draft"),
        Binding("P", "edit_program", "Program", id="edit-program",
                tooltip="Edit program.md, the agent's instructions; saving commits it"),
        Binding("l", "next_slot", "Log slot", id="next-slot",
                tooltip="The log panel follows the next busy trainer slot"),
    ]

    # Keys that change the loop: a read-only client has none of them.
    DECISION_ACTIONS = frozenset(("accept", "edit", "veto", "pause", "resume", "kill_run",
                                  "toggle_mode", "stop_loop", "write_note", "edit_program"))

    def __init__(self, session, read_only: bool = False) -> None:
        super().__init__()
        self.session = session
        self.read_only = read_only
        self.state = "starting"
        self.run_in_flight: RunStarted | None = None     # the followed slot's run
        self.slot_runs: dict[int, RunStarted] = {}       # every busy slot's run
        self.followed_slot = 0                           # the slot the log panel follows
        self.slot_count = 1                              # the loop's, from its runs
        self.current_panel = "diff-panel"
        self._applicable: tuple = ()
        self._bindings_refresh_due = False

    # ------------------------------------------------------------------ layout

    def compose(self) -> ComposeResult:
        yield StatusLine(id="status")
        with Horizontal(id="preparing"):
            yield Static("preparing data", id="preparing-label")
            yield ProgressBar(id="preparing-bar", show_eta=False)
        yield Static(id="panel-bar")
        with PanelGrid(id="panels"):
            yield ReasoningPanel(id="reasoning-panel")
            yield DiffPanel(id="diff-panel")
            yield DevicePanel(id="device-panel")
            yield ChartPanel(id="chart-panel")
            yield LogPanel(id="log-panel")
            yield ExperimentsPanel(id="experiments-panel")
        yield WholeKeysFooter()

    def on_mount(self) -> None:
        self.query_one("#preparing").display = False
        self._apply_size(self.size.width, self.size.height)
        self.focus_panel(self.current_panel)
        self.app.main_ready()

    def on_resize(self, event) -> None:
        self._apply_size(event.size.width, event.size.height)

    def _apply_size(self, width: int, height: int) -> None:
        narrow = width < NARROW_WIDTH or height < NARROW_HEIGHT
        self.set_class(narrow, "narrow")
        self.query_one(Footer).compact = narrow
        self._show_current_panel()

    def panels(self) -> list[Panel]:
        return list(self.query_one("#panels").query_children(Panel))

    def focus_panel(self, panel_id: str) -> None:
        self.current_panel = panel_id
        self._show_current_panel()
        self.query_one(f"#{panel_id}", Panel).focus_target().focus()

    def _show_current_panel(self) -> None:
        for panel in self.panels():
            panel.set_class(panel.id == self.current_panel, "-current")
        self.query_one("#panel-bar", Static).update(Content.assemble(*(
            (f" {name} ", "reverse bold" if panel_id == self.current_panel else "dim")
            for panel_id, name in PANEL_NAMES.items())))

    def on_descendant_focus(self, event) -> None:
        for node in event.widget.ancestors_with_self:
            if isinstance(node, Panel):
                if node.id != self.current_panel:
                    self.current_panel = node.id
                    self._show_current_panel()
                return

    # ------------------------------------------------------------------ short-hands

    @property
    def status(self) -> StatusLine:
        return self.query_one(StatusLine)

    @property
    def diff(self) -> DiffPanel:
        return self.query_one(DiffPanel)

    @property
    def reasoning(self) -> ReasoningPanel:
        return self.query_one(ReasoningPanel)

    @property
    def chart(self) -> ChartPanel:
        return self.query_one(ChartPanel)

    @property
    def device(self) -> DevicePanel:
        return self.query_one(DevicePanel)

    @property
    def log_panel(self) -> LogPanel:
        return self.query_one(LogPanel)

    @property
    def table(self) -> ExperimentsPanel:
        return self.query_one(ExperimentsPanel)

    # ------------------------------------------------------------------ engine -> widgets

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

    @on(ProposalSelected)
    def _proposal_selected(self, message: ProposalSelected) -> None:
        self.reasoning.show_proposal(self.diff.selected_proposal)
        self._after_change()

    # ------------------------------------------------------------------ keys

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in self.DECISION_ACTIONS and (self.read_only or self.state == "engine gone"):
            return False
        if action == "stop_loop":
            return self.state != "stopped"
        selected = self.diff.selected_proposal if self.is_mounted else None
        if action == "edit":      # a held win is judged as it ran: accept or veto, no edit
            return selected is not None and selected.state is not ProposalState.HELD
        if action in ("accept", "veto"):
            return selected is not None
        if action == "step_proposal":
            return len(self.diff.queue) > 1
        if action == "next_slot":
            return len(self.slot_runs) > 1
        if action == "pause":
            return self.state not in ("paused", "stopped")
        if action == "resume":
            return self.state == "paused"
        if action == "kill_run":
            return self.run_in_flight is not None
        if action in ("toggle_mode", "write_note", "edit_program"):
            return self.state != "stopped"
        if action == "open_log":
            return bool(self.table.rows) if self.is_mounted else False
        return True

    def action_accept(self) -> None:
        proposal = self.diff.selected_proposal
        if proposal is None:
            return
        self.diff.remove(proposal.id)          # optimistic; resynced if the engine refuses
        self._after_change()
        self._engine_call(f"accept #{proposal.id}", self.session.accept, proposal.id)
        if self.has_class("narrow") and not self.diff.queue:
            self.focus_panel("log-panel")      # one panel at a time: show what happens next

    def action_veto(self) -> None:
        proposal = self.diff.selected_proposal
        if proposal is None:
            return

        def vetoed(reason: str | None) -> None:
            if reason:
                self.diff.remove(proposal.id)
                self._after_change()
                self._engine_call(f"veto #{proposal.id}", self.session.veto, proposal.id, reason)

        self.app.push_screen(VetoScreen(proposal.id, proposal.description), vetoed)

    def action_edit(self) -> None:
        proposal = self.diff.selected_proposal
        if proposal is not None:
            self._open_editor(proposal)

    @work(thread=True, exit_on_error=False, group="engine")
    def _open_editor(self, proposal) -> None:
        """The proposal's files come from the engine: asked off the UI thread, so a slow or
        dead engine never freezes the keys; the editor opens once they are here."""
        paths = list(proposal.files) or self.session.workspace.config.targets
        try:
            texts = {path: self.session.proposal_text(proposal.id, path) for path in paths}
        except Exception as error:
            self.app.call_from_thread(self.notify, f"edit #{proposal.id}: {error}",
                                      severity="error")
            return
        self.app.call_from_thread(self._show_editor, proposal, texts)

    def _show_editor(self, proposal, texts: dict[str, str]) -> None:
        def edited(saved: bool | None) -> None:
            if saved:
                self.diff.remove(proposal.id)
                self._after_change()
                self.notify(f"your edit of #{proposal.id} is queued to train")

        self.app.push_screen(EditorScreen(self.session, proposal, texts), edited)

    def action_write_note(self) -> None:
        def written(note: str | None) -> None:
            if note:
                self._engine_call("note", self.session.note, note)

        self.app.push_screen(NoteScreen(), written)

    def action_edit_program(self) -> None:
        editor = ProgramEditorScreen(self.session, self.session.workspace.program())

        def saved(done: bool | None) -> None:
            if not done:
                return
            when = f"committed as {editor.commit[:7]}" if editor.commit else \
                "committed when the run in flight ends"
            self.notify(f"program.md saved ({when}); the agent's next draft is told")

        self.app.push_screen(editor, saved)

    def action_detach(self) -> None:
        self.app.action_detach()

    def action_stop_loop(self) -> None:
        self.app.action_request_stop()

    def action_step_proposal(self, delta: int) -> None:
        self.diff.step(delta)

    def action_pause(self) -> None:
        self._engine_call("pause", self.session.pause)

    def action_resume(self) -> None:
        self._engine_call("resume", self.session.resume)

    def action_kill_run(self) -> None:
        if self.run_in_flight is not None:
            self._engine_call("kill run", self.session.kill_run)

    def action_toggle_mode(self) -> None:
        mode = "auto" if self.status.mode == "review" else "review"
        self._engine_call(f"mode {mode}", self.session.set_mode, mode)

    def action_cycle_panel(self, step: int) -> None:
        ids = [panel.id for panel in self.panels()]
        index = ids.index(self.current_panel) if self.current_panel in ids else 0
        self.query_one(PanelGrid).restore()
        self.focus_panel(ids[(index + step) % len(ids)])

    def action_toggle_maximize(self) -> None:
        self.query_one(PanelGrid).toggle_full(self.query_one(f"#{self.current_panel}", Panel))

    def follow(self, slot: int) -> None:
        """The log panel, the live chart and the progress follow this slot's run."""
        run = self.slot_runs[slot]
        self.followed_slot, self.run_in_flight = slot, run
        self.status.progress = None
        self.log_panel.start_run(run)
        self.chart.start_live(run.run_id)

    def action_next_slot(self) -> None:
        busy = sorted(self.slot_runs)
        if not busy:
            return
        later = [slot for slot in busy if slot > self.followed_slot]
        self.follow(later[0] if later else busy[0])
        self.log_panel.show_tail()
        self.device.show_slots(self.slot_runs, self.followed_slot)

    def action_open_log(self) -> None:
        experiment = self.table.selected
        if experiment is None:
            return
        path = experiment.log_path or str(self.session.log_path(experiment.id))
        number = "—" if experiment.id is None or experiment.id < 0 else f"#{experiment.id}"
        judged = f" · {experiment.measure.describe()}" if experiment.measure else ""
        if experiment.revert is not None:
            judged += f" · {experiment.revert.describe()}"
        self.app.push_screen(LogViewerScreen(
            f"run {experiment.run_id} · experiment {number} · {experiment.description}{judged}",
            Path(path)))

    def action_help(self) -> None:
        rows = []
        seen = set()
        # The chain's maps have the app's keymap applied; the class BINDINGS do not.
        screen_bindings = next(b for node, b in self._modal_binding_chain if node is self)
        for key, binding in screen_bindings:
            if binding.id in seen:
                continue
            seen.add(binding.id)
            rows.append((self.app.get_key_display(replace(binding, key=key)), binding.description,
                         binding.id or ""))
        rows.append(("] / [", "next / previous hunk (diff)", "next-hunk / previous-hunk"))
        rows.append(("enter", "open the run's log (table)", ""))
        self.app.push_screen(HelpScreen(rows))

    @on(DataTable.RowSelected)
    def _row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_open_log()

    @work(thread=True, exit_on_error=False, group="engine")
    def _engine_call(self, label: str, call: Callable, *args) -> None:
        try:
            call(*args)
        except Exception as error:           # the engine refused: say why, show its truth again
            self.app.call_from_thread(self._engine_refused, label, error)

    def _engine_refused(self, label: str, error: Exception) -> None:
        self.notify(f"{label}: {error}", severity="error")
        self.diff.set_queue(self.session.pending())
        self._after_change()
