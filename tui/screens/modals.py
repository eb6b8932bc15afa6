"""Small modal screens: a one-line text prompt (the veto reason), the stop confirmation,
the dead-engine offer to restart, the key help."""

from __future__ import annotations

from dataclasses import replace

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Input, Static


class TextPromptScreen(ModalScreen[str | None]):
    """Asks for one line of text: Enter sends it, an empty one is refused with EMPTY (and
    nothing is sent), Esc cancels. Subclasses say what is asked and why."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="cancel")]
    HINT = ""
    PLACEHOLDER = ""
    EMPTY = ""                   # said when Enter is pressed on an empty input
    INPUT_ID = "text"

    def heading(self) -> Content:
        raise NotImplementedError

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(self.heading())
            yield Static(self.HINT, classes="hint")
            yield Input(placeholder=self.PLACEHOLDER, id=self.INPUT_ID)
            yield Static("", id=f"{self.INPUT_ID}-error", classes="error")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        if not text:
            self.query_one(f"#{self.INPUT_ID}-error", Static).update(self.EMPTY)
            return
        self.dismiss(text)

    def action_cancel(self) -> None:
        self.dismiss(None)


class VetoScreen(TextPromptScreen):
    """Asks why the proposal is vetoed; the reason goes back to the agent."""

    HINT = "Why? The agent reads this before its next draft."
    PLACEHOLDER = "reason (Enter to veto, Esc to cancel)"
    EMPTY = "A reason is needed: the agent learns from it."
    INPUT_ID = "reason"

    def __init__(self, proposal_id: int, description: str) -> None:
        super().__init__()
        self.proposal_id = proposal_id
        self.description = description

    def heading(self) -> Content:
        return Content.from_markup("Veto [b]#$id[/b] $description", id=str(self.proposal_id),
                                   description=self.description)


class ConfirmStopScreen(ModalScreen[bool]):
    """Stopping the loop kills the run in flight: asked, never assumed."""

    BINDINGS = [
        Binding("y", "answer(True)", "Stop", id="confirm-stop"),
        Binding("n,escape", "answer(False)", "Keep going", id="cancel-stop"),
    ]

    def __init__(self, run_description: str) -> None:
        super().__init__()
        self.run_description = run_description

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(Content.from_markup(
                "A run is in flight: [b]$run[/b]\n\nStop the loop now? The run is killed; the "
                "journal keeps every proposal, decision and result, and the next start "
                "resumes.\n(To leave the loop running, press [b]q[/b] instead: that only "
                "detaches this app.)\n\n[b]y[/b] stop   [b]n[/b] keep going",
                run=self.run_description))

    def action_answer(self, stop_now: bool) -> None:
        self.dismiss(stop_now)


class EngineLostScreen(ModalScreen[bool]):
    """The engine died under the app: say so, offer a restart (it resumes from the journal)."""

    BINDINGS = [
        Binding("r", "answer(True)", "Restart", id="restart-engine"),
        Binding("q,escape", "answer(False)", "Quit", id="leave-dead-engine"),
    ]

    def __init__(self, message: str) -> None:
        super().__init__()
        self.message = message

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(Content.from_markup(
                "[b]The engine stopped unexpectedly.[/b]\n$message\n\nRestart it? It resumes "
                "from the journal: nothing recorded is lost, and a run that was cut off "
                "trains again.\n\n[b]r[/b] restart   [b]q[/b] quit", message=self.message),
                id="engine-lost")

    def action_answer(self, restart: bool) -> None:
        self.dismiss(restart)


def key_rows(screen) -> list[tuple[str, str, str]]:
    """The screen's keys as currently mapped, one row per binding id: (keys, what, id)."""
    rows = []
    seen = set()
    # The chain's maps have the app's keymap applied; the class BINDINGS do not.
    screen_bindings = next(b for node, b in screen._modal_binding_chain if node is screen)
    for key, binding in screen_bindings:
        if binding.id in seen:
            continue
        seen.add(binding.id)
        rows.append((screen.app.get_key_display(replace(binding, key=key)), binding.description,
                     binding.id or ""))
    rows.append(("] / [", "next / previous hunk (diff)", "next-hunk / previous-hunk"))
    rows.append(("enter", "open the run's log (table)", ""))
    return rows


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
