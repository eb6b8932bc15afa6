"""Agent reasoning: the draft in progress streamed as Markdown, and the proposal in view."""

from __future__ import annotations

import asyncio

from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.content import Content
from textual.widget import Widget
from textual.widgets import Markdown, Static
from textual.widgets.markdown import MarkdownStream

from engine.base.records import Proposal
from tui.widgets.panel import Panel

KIND_HEADINGS = {"thinking": "*thinking*", "text": "", "tool": "`tool`"}


def proposal_summary(proposal: Proposal) -> Content:
    usage = proposal.usage
    tokens = usage.input_tokens + usage.output_tokens
    summary = Content.from_markup(
        "[b]#$id $description[/b]\n[dim]hypothesis:[/dim] $hypothesis\n"
        "[dim]$agent · $tokens tokens · $cost[/dim]",
        id=str(proposal.id), description=proposal.description,
        hypothesis=proposal.hypothesis or "—", agent=proposal.agent,
        tokens=f"{tokens:,}", cost=f"${usage.cost_usd:.4f}",
    )
    return Content("\n").join([summary, *map(after_note, proposal.notes)])


def after_note(text: str) -> Content:
    """How a proposal says it was drafted after a human's note."""
    return Content.assemble(("after your note: ", "bold $text-warning"), text)


def human_note(note_id: int, text: str) -> Content:
    """A note the human sent that no draft has taken yet: marked apart from the agent's text."""
    return Content.assemble((f"✎ human note #{note_id}", "bold reverse $text-warning"),
                            (" for the next draft: ", "bold $text-warning"), text)


class ReasoningPanel(Panel):
    TITLE = "agent reasoning"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.draft_id: int | None = None
        self._stream: MarkdownStream | None = None
        self._last_kind: str | None = None
        self.text = ""          # the whole streamed reasoning of the current draft, as Markdown
        self.notes: dict[int, str] = {}   # the human's notes no proposal has shown yet

    def compose(self) -> ComposeResult:
        yield Static("waiting for the agent…", id="proposal-summary")
        yield Static(id="steering-notes")
        with VerticalScroll(id="reasoning-scroll", can_focus=True):
            yield Markdown(id="reasoning")

    def focus_target(self) -> Widget:
        return self.query_one("#reasoning-scroll")

    def on_mount(self) -> None:
        super().on_mount()
        self.query_one("#reasoning-scroll").anchor()
        self._draw_notes()

    def show_notes(self, notes: dict[int, str]) -> None:
        """The steering notes no draft has taken yet (a proposal that took one shows it)."""
        self.notes = notes
        self._draw_notes()

    def _draw_notes(self) -> None:
        notes = self.query_one("#steering-notes", Static)
        notes.display = bool(self.notes)
        notes.update(Content("\n").join(human_note(i, t) for i, t in self.notes.items()))

    def show_proposal(self, proposal: Proposal | None) -> None:
        summary = self.query_one("#proposal-summary", Static)
        if proposal is not None:
            summary.update(proposal_summary(proposal))
        elif self.draft_id is not None:
            summary.update(Content.from_markup("[dim]drafting #$id…[/dim]", id=str(self.draft_id)))
        else:
            summary.update("waiting for the agent…")

    async def start_draft(self, draft_id: int, agent: str, base_commit: str) -> None:
        await self._stop_stream()
        self.draft_id = draft_id
        self._last_kind = None
        self.text = ""
        self.border_subtitle = f"draft #{draft_id} · {agent} · base {base_commit[:7]}"
        await self.query_one("#reasoning", Markdown).update("")
        self._stream = Markdown.get_stream(self.query_one("#reasoning", Markdown))

    async def append(self, draft_id: int, chunks: list[tuple[str, str]]) -> None:
        if draft_id != self.draft_id or self._stream is None:
            await self.start_draft(draft_id, "agent", "")
        fragment = []
        for kind, text in chunks:
            if kind != self._last_kind:
                heading = KIND_HEADINGS.get(kind, f"`{kind}`")
                separator = "\n\n" if self.text or fragment else ""
                fragment.append(f"{separator}{heading}\n\n" if heading else separator)
                self._last_kind = kind
            fragment.append(text)
        piece = "".join(fragment)
        self.text += piece
        await self._stream.write(piece)

    async def end_draft(self, note: str = "") -> None:
        if note:
            await self.append(self.draft_id if self.draft_id is not None else -1, [("note", note)])
        await self._stop_stream()

    async def _stop_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is None:
            return
        try:
            await stream.stop()
        except asyncio.CancelledError:
            # A stream stopped before its task ever ran (drafts announced back to back) ends
            # cancelled, with nothing written to it; escaping this handler, that cancellation
            # would end the app's message loop. Only our own cancellation goes on up.
            if asyncio.current_task().cancelling():
                raise
