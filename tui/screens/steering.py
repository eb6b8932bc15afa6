"""Steering the agent: a note for its next draft, and program.md (its instructions) in the
app's editor. Both go to the engine as commands; the engine says what it did with them."""

from __future__ import annotations

from textual.binding import Binding
from textual.content import Content
from textual.widgets import TextArea

from engine.workspace import PROGRAM_FILE
from tui.screens.editor import EditorScreen
from tui.screens.modals import TextPromptScreen

NOTE_PROMPT = "Write a note to the agent: it goes into the context of its next draft."


class NoteScreen(TextPromptScreen):
    """Asks for the note; an empty one is not sent."""

    HINT = "Every attached client shows it; the proposals it influenced say so."
    PLACEHOLDER = "note (Enter to send, Esc to cancel)"
    EMPTY = "Write something for the agent first."
    INPUT_ID = "note"

    def heading(self) -> Content:
        return Content(NOTE_PROMPT)


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
