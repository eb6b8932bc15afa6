"""Small modal screens: the veto reason prompt, the quit confirmation, the key help."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Input, Static


class VetoScreen(ModalScreen[str | None]):
    """Asks why the proposal is vetoed; the reason goes back to the agent."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="cancel")]

    def __init__(self, proposal_id: int, description: str) -> None:
        super().__init__()
        self.proposal_id = proposal_id
        self.description = description

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(Content.from_markup("Veto [b]#$id[/b] $description",
                                             id=str(self.proposal_id),
                                             description=self.description))
            yield Static("Why? The agent reads this before its next draft.", classes="hint")
            yield Input(placeholder="reason (Enter to veto, Esc to cancel)", id="reason")
            yield Static("", id="veto-error", classes="error")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        reason = event.value.strip()
        if not reason:
            self.query_one("#veto-error", Static).update("A reason is needed: the agent learns from it.")
            return
        self.dismiss(reason)

    def action_cancel(self) -> None:
        self.dismiss(None)


class ConfirmQuitScreen(ModalScreen[bool]):
    BINDINGS = [
        Binding("y", "answer(True)", "Quit", id="confirm-quit"),
        Binding("n,escape", "answer(False)", "Stay", id="cancel-quit"),
    ]

    def __init__(self, run_description: str) -> None:
        super().__init__()
        self.run_description = run_description

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(Content.from_markup(
                "A run is in flight: [b]$run[/b]\n\nQuit now? The run is stopped; the journal "
                "keeps every proposal, decision and result, and the next start resumes.\n\n"
                "[b]y[/b] quit   [b]n[/b] stay", run=self.run_description))

    def action_answer(self, quit_now: bool) -> None:
        self.dismiss(quit_now)


class HelpScreen(ModalScreen[None]):
    """Every key of the main screen with what it does, as currently mapped."""

    BINDINGS = [Binding("escape,question_mark,q", "close", "Close", id="close-help")]

    def __init__(self, rows: list[tuple[str, str, str]]) -> None:
        super().__init__()
        self.rows = rows

    def compose(self) -> ComposeResult:
        lines = [Content.styled("Keys (remappable by binding id through the keymap)\n", "bold")]
        for key, description, binding_id in self.rows:
            lines.append(Content.assemble((f"{key:>10}  ", "bold $accent"),
                                          f"{description:<28}", (binding_id, "dim")))
        lines.append(Content.styled("\nEsc closes this help.", "dim"))
        with VerticalScroll(id="dialog"):
            yield Static(Content("\n").join(lines), id="help-text")

    def action_close(self) -> None:
        self.dismiss(None)
