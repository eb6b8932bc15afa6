"""Steering the agent: a note for its next draft, and program.md (its instructions) in the
app's editor. Both go to the engine as commands; the engine says what it did with them."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Input, Static, TextArea

from engine.workspace import PROGRAM_FILE
from tui.screens.editor import EditorScreen

NOTE_PROMPT = "Write a note to the agent: it goes into the context of its next draft."


class NoteScreen(ModalScreen[str | None]):
    """Asks for the note; an empty one is not sent."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="cancel-note")]

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(NOTE_PROMPT)
            yield Static("Every attached client shows it; the proposals it influenced say so.",
                         classes="hint")
            yield Input(placeholder="note (Enter to send, Esc to cancel)", id="note")
            yield Static("", id="note-error", classes="error")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        note = event.value.strip()
        if not note:
            self.query_one("#note-error", Static).update("Write something for the agent first.")
            return
        self.dismiss(note)

    def action_cancel(self) -> None:
        self.dismiss(None)


class ProgramEditorScreen(EditorScreen):
    """program.md in the proposal editor; saving commits it on the research branch as a
    human change (or once the run in flight ends) and tells the agent."""

    BINDINGS = [
        Binding("ctrl+s", "save", "Save & commit", id="save-program"),
        Binding("ctrl+o", "external_editor", "Open in $EDITOR", id="external-editor"),
        Binding("escape", "cancel", "Cancel", id="cancel-edit"),
    ]
    SCRATCH_SUFFIX = ".md"

    def __init__(self, session, text: str) -> None:
        super().__init__(session, None, {PROGRAM_FILE: text})
        self.commit: str | None = None            # what the engine committed, once saved

    def heading(self) -> Content:
        return Content.from_markup(
            "Editing [b]$name[/b], the agent's instructions  [dim](Ctrl+S commits it on the "
            "research branch and tells the agent)[/dim]", name=PROGRAM_FILE)

    def text_area(self, text: str) -> TextArea:
        return TextArea(text, theme="monokai", soft_wrap=True, show_line_numbers=True,
                        classes="code-editor")

    def save_files(self, files: dict[str, str]) -> None:
        self.commit = self.session.edit_program(files[PROGRAM_FILE])
