"""The main screen: status line, six panels, footer. Engine events are applied to them in
tui/screens/main_events.py; keys become Session (or engine client) calls made in thread
workers, so the UI never waits on the engine. A read-only client shows no decision keys."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import DataTable, ProgressBar, Static

from engine.base.records import ProposalState
from engine.base.view import View
from tui.messages import ProposalSelected
from tui.screens.editor import EditorScreen
from tui.screens.log_viewer import LogViewerScreen, log_title
from tui.screens.main_events import EngineEventsMixin
from tui.screens.main_layout import PanelLayoutMixin
from tui.screens.modals import HelpScreen, VetoScreen, key_rows
from tui.screens.steering import NoteScreen, ProgramEditorScreen
from tui.widgets.chart import ChartPanel
from tui.widgets.device import DevicePanel
from tui.widgets.diff import DiffPanel
from tui.widgets.experiments import ExperimentsPanel
from tui.widgets.footer import WholeKeysFooter
from tui.widgets.log import LogPanel
from tui.widgets.panel import PanelGrid
from tui.widgets.reasoning import ReasoningPanel
from tui.widgets.status import StatusLine

class MainScreen(EngineEventsMixin, PanelLayoutMixin, Screen):
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
        self.view = View()                               # the loop as the engine last said
        self.state = self.view.state                     # or "engine gone", once it is
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
        if self.has_class("narrow") and not self.diff.queue:
            self.current_panel = "log-panel"   # until a proposal waits for review
        self.focus_panel(self.current_panel)
        self.app.main_ready()

    def on_resize(self, event) -> None:
        self._apply_size(event.size.width, event.size.height)

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

    # ------------------------------------------------------------------ messages

    @on(ProposalSelected)
    def _proposal_selected(self, message: ProposalSelected) -> None:
        self.reasoning.show_proposal(self.diff.selected_proposal)
        if self.has_class("narrow"):        # one panel at a time: what needs you, else the run
            if message.proposal_id is None and self.current_panel == "diff-panel":
                self.focus_panel("log-panel")
            elif message.proposal_id is not None and self.current_panel == "log-panel":
                self.focus_panel("diff-panel")
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
        self._engine_call(f"accept #{proposal.id}", self.session.accept, proposal.id)

    def action_veto(self) -> None:
        proposal = self.diff.selected_proposal
        if proposal is None:
            return

        def vetoed(reason: str | None) -> None:
            if reason:
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
        self.app.push_screen(LogViewerScreen(log_title(experiment), Path(path)))

    def action_help(self) -> None:
        self.app.push_screen(HelpScreen(key_rows(self)))

    @on(DataTable.RowSelected)
    def _row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_open_log()

    @work(thread=True, exit_on_error=False, group="engine")
    def _engine_call(self, label: str, call: Callable, *args) -> None:
        try:
            call(*args)
        except Exception as error:           # the engine refused: say why
            self.app.call_from_thread(self.notify, f"{label}: {error}", severity="error")
