"""Edit a proposal before it trains: a Python editor in the app, or $EDITOR through app
suspension. On save the engine recomputes and validates the diff; a refusal is shown
inline and the editor stays open with the text as the human left it. The same editor opens
program.md (tui/screens/steering.py)."""

from __future__ import annotations

import functools
import os
import shlex
import subprocess
import tempfile
from pathlib import Path

from pygments.token import Token
from textual import work
from textual.app import ComposeResult, SuspendNotSupported
from textual.binding import Binding
from textual.containers import Vertical
from textual.content import Content
from textual.screen import Screen
from textual.widgets import Footer, Static, TabbedContent, TabPane, TextArea

from engine.base.records import Proposal
from engine.workspace.patch import PatchRefused

# pygments token -> TextArea theme highlight name (the names tree-sitter queries use).
TOKEN_NAMES = [
    (Token.Comment, "comment"),
    (Token.Literal.String.Doc, "string.documentation"),
    (Token.Literal.String, "string"),
    (Token.Literal.Number, "number"),
    (Token.Keyword.Constant, "boolean"),
    (Token.Keyword, "keyword"),
    (Token.Operator.Word, "keyword.operator"),
    (Token.Operator, "operator"),
    (Token.Name.Builtin, "type.builtin"),
    (Token.Name.Function, "function"),
    (Token.Name.Class, "class"),
    (Token.Name.Decorator, "function"),
]


def _highlight_name(token) -> str | None:
    for parent, name in TOKEN_NAMES:
        if token in parent:
            return name
    return None


@functools.cache
def python_lexer():
    """Built on the first edit, not at import: compiling its patterns took ~0.1 s of the
    app's start (issue 10's first paint)."""
    from pygments.lexers.python import PythonLexer
    return PythonLexer(stripnl=False, ensurenl=False)


class PythonTextArea(TextArea):
    """TextArea highlighted with pygments, so no tree-sitter install is needed."""

    def _build_highlight_map(self) -> None:
        self._line_cache.clear()
        highlights = self._highlights
        highlights.clear()
        row, column = 0, 0                   # column in UTF-8 bytes, as TextArea expects
        for token, value in python_lexer().get_tokens(self.text):
            name = _highlight_name(token)
            for index, part in enumerate(value.split("\n")):
                if index:
                    row, column = row + 1, 0
                width = len(part.encode())
                if name and width:
                    highlights[row].append((column, column + width, name))
                column += width


class EditorScreen(Screen[bool]):
    BINDINGS = [
        Binding("ctrl+s", "save", "Save & train", id="save-edit"),
        Binding("ctrl+o", "external_editor", "Open in $EDITOR", id="external-editor"),
        Binding("escape", "cancel", "Cancel", id="cancel-edit"),
    ]

    SCRATCH_SUFFIX = ".py"                     # the file $EDITOR opens

    def __init__(self, session, proposal: Proposal | None, texts: dict[str, str]) -> None:
        super().__init__()
        self.session = session
        self.proposal = proposal
        # what `texts` are: kept if the proposal is rebased while it is edited
        self.base_commit = proposal.base_commit if proposal else None
        self.texts = texts

    def heading(self) -> Content:
        return Content.from_markup(
            "Editing [b]#$id[/b] $description  [dim](Ctrl+S saves and queues it to train)[/dim]",
            id=str(self.proposal.id), description=self.proposal.description)

    def text_area(self, text: str) -> TextArea:
        return PythonTextArea(text, theme="monokai", show_line_numbers=True,
                              tab_behavior="indent", classes="code-editor")

    def save_files(self, files: dict[str, str]) -> None:
        """Hand the texts to the engine; a refusal raises with its reason."""
        # The base it opened on: if the best moved meanwhile, the engine merges onto it.
        self.session.edit(self.proposal.id, files, self.base_commit)

    def compose(self) -> ComposeResult:
        with Vertical(id="editor-body"):
            yield Static(self.heading(), id="editor-title")
            yield Static("", id="edit-error", classes="error")
            with TabbedContent(id="editor-tabs"):
                for index, (path, text) in enumerate(self.texts.items()):
                    with TabPane(path, id=f"file-{index}"):
                        yield self.text_area(text)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(TextArea).focus()

    def _areas(self) -> dict[str, TextArea]:
        return dict(zip(self.texts, self.query(TextArea)))

    def _current_area(self) -> TextArea:
        pane = self.query_one(TabbedContent).active_pane
        return pane.query_one(TextArea) if pane else self.query_one(TextArea)

    def action_save(self) -> None:
        self.query_one("#edit-error", Static).update("checking the edit…")
        self._submit({path: area.text for path, area in self._areas().items()})

    @work(thread=True, exclusive=True, exit_on_error=False)
    def _submit(self, files: dict[str, str]) -> None:
        try:
            self.save_files(files)
        except (PatchRefused, ValueError, KeyError) as refused:   # refused by the engine
            self.app.call_from_thread(self._refused, refused)
        else:
            self.app.call_from_thread(self.dismiss, True)

    def _refused(self, refused: Exception) -> None:
        if isinstance(refused, PatchRefused):
            text = Content.from_markup("[b]Refused[/b] ($rule): $message", rule=refused.rule,
                                       message=refused.message)
        else:
            message = refused.args[0] if isinstance(refused, KeyError) and refused.args \
                else str(refused)
            text = Content.from_markup("[b]Refused[/b]: $message", message=str(message))
        self.query_one("#edit-error", Static).update(text)

    def action_cancel(self) -> None:
        self.dismiss(False)

    def action_external_editor(self) -> None:
        editor = os.environ.get("VISUAL") or os.environ.get("EDITOR")
        if not editor:
            self.notify("Set $EDITOR (or $VISUAL) to edit outside the app.", severity="warning")
            return
        area = self._current_area()
        with tempfile.NamedTemporaryFile("w", suffix=self.SCRATCH_SUFFIX, delete=False,
                                         encoding="utf-8") as handle:
            handle.write(area.text)
        scratch = Path(handle.name)
        try:
            with self.app.suspend():
                subprocess.run([*shlex.split(editor), str(scratch)], check=False)
        except SuspendNotSupported:
            self.notify("This terminal cannot hand over to $EDITOR here.", severity="error")
            return
        finally:
            edited = scratch.read_text(encoding="utf-8")
            scratch.unlink(missing_ok=True)
        area.load_text(edited)
        self.action_save()
