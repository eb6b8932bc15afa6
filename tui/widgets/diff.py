"""The pending diff: the queue of proposals waiting for review and the selected one's
unified diff, hunk by hunk, with the Python inside highlighted by pygments."""

from __future__ import annotations

import re
from dataclasses import dataclass

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.content import Content
from textual.highlight import highlight
from textual.widget import Widget
from textual.widgets import Static

from engine.base.records import Proposal, ProposalState
from tui.messages import ProposalSelected
from tui.widgets.nudge import ReviewNudge
from tui.widgets.panel import Panel
from tui.widgets.reasoning import after_note

HUNK_HEADER = re.compile(r"^@@ -(\d+)(?:,\d+)? \+(\d+)(?:,\d+)? @@(.*)$")
HUNK_LENGTHS = re.compile(r"^@@ -\d+(?:,(\d+))? \+\d+(?:,(\d+))? @@")
LINE_STYLES = {"+": "on $success-muted", "-": "on $error-muted"}
PREFIX_STYLES = {"+": "bold $text-success", "-": "bold $text-error", " ": "dim", "\\": "dim"}


@dataclass
class Hunk:
    path: str
    header: str
    old_start: int
    new_start: int
    lines: list[str]           # diff body lines, each with its one-character prefix


def parse_hunks(diff: str) -> list[Hunk]:
    hunks: list[Hunk] = []
    path = ""
    current: Hunk | None = None
    for line in diff.splitlines():
        if current is not None and line[:1] in (" ", "+", "-", "") and not _hunk_complete(current):
            current.lines.append(line or " ")
        elif current is not None and line.startswith("\\"):
            current.lines.append(line)          # "\ No newline at end of file"
        elif line.startswith("+++ "):
            path = line[4:].strip().removeprefix("b/")
        elif match := HUNK_HEADER.match(line):
            current = Hunk(path, line, int(match[1]), int(match[2]), [])
            hunks.append(current)
    return hunks


def _hunk_complete(hunk: Hunk) -> bool:
    """True when the hunk already holds every line its header announced."""
    match = HUNK_LENGTHS.match(hunk.header)
    old_len = int(match[1]) if match[1] is not None else 1
    new_len = int(match[2]) if match[2] is not None else 1
    old = sum(1 for line in hunk.lines if line[:1] in (" ", "-"))
    new = sum(1 for line in hunk.lines if line[:1] in (" ", "+"))
    return old >= old_len and new >= new_len


def render_hunk(hunk: Hunk) -> Content:
    """Gutter with line numbers, the +/- prefix, and the code highlighted as Python."""
    code = [line[1:] for line in hunk.lines]
    language = "python" if hunk.path.endswith(".py") else "text"
    highlighted = highlight("\n".join(code), language=language).split("\n")
    old_no, new_no = hunk.old_start, hunk.new_start
    rendered: list[Content] = []
    for index, line in enumerate(hunk.lines):
        prefix = line[:1]
        if prefix == "\\":
            rendered.append(Content.styled(f"{'':>5} {line}", "dim italic"))
            continue
        number = old_no if prefix == "-" else new_no
        body = highlighted[index] if index < len(highlighted) else Content(code[index])
        row = Content.assemble(
            (f"{number:>5} ", "dim"), (prefix + " ", PREFIX_STYLES.get(prefix, "")), body)
        if prefix in LINE_STYLES:
            row = row.stylize_before(LINE_STYLES[prefix])
        rendered.append(row)
        if prefix != "+":
            old_no += 1
        if prefix != "-":
            new_no += 1
    return Content("\n").join(rendered)


class HunkView(Static):
    pass


class HunkScroll(VerticalScroll, can_focus=True):
    BINDINGS = [
        Binding("right_square_bracket", "hunk(1)", "Next hunk", id="next-hunk", show=False),
        Binding("left_square_bracket", "hunk(-1)", "Prev hunk", id="previous-hunk", show=False),
    ]

    def action_hunk(self, step: int) -> None:
        hunks = list(self.query(HunkView))
        if not hunks:
            return
        top = self.scroll_y
        offsets = [hunk.virtual_region.y for hunk in hunks]
        if step > 0:
            target = next((o for o in offsets if o > top), offsets[-1])
        else:
            target = next((o for o in reversed(offsets) if o < top), offsets[0])
        self.scroll_to(y=target, animate=False)


class DiffPanel(Panel):
    TITLE = "pending diff"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.queue: dict[int, Proposal] = {}
        self.selected: int | None = None
        self.slots: dict[int, int] = {}          # with several trainer slots: where each goes

    def compose(self) -> ComposeResult:
        yield Static("no proposal waiting", id="queue")
        yield HunkScroll(id="hunks")
        yield ReviewNudge(id="review-nudge")

    def on_mount(self) -> None:
        super().on_mount()
        self._draw_queue()

    @property
    def nudge(self) -> ReviewNudge:
        return self.query_one(ReviewNudge)

    def focus_target(self) -> Widget:
        return self.query_one("#hunks")

    @property
    def selected_proposal(self) -> Proposal | None:
        return self.queue.get(self.selected) if self.selected is not None else None

    def show(self, proposals: tuple[Proposal, ...]) -> None:
        """The proposals waiting for review, as the engine has them: the selection stays
        while its proposal waits (its diff drawn again only if the proposal changed, on a
        rebase), and moves to the first one when it has gone."""
        shown = self.selected_proposal
        self.queue = {p.id: p for p in proposals}
        if self.selected not in self.queue:
            self._select(next(iter(self.queue), None))
        elif self.queue[self.selected] is not shown:
            self._select(self.selected, force=True)
        else:
            self._draw_queue()

    def show_slots(self, slots: dict[int, int]) -> None:
        if slots != self.slots:
            self.slots = slots
            self._draw_queue()

    def step(self, delta: int) -> None:
        ids = list(self.queue)
        if not ids:
            return
        index = ids.index(self.selected) if self.selected in ids else 0
        self._select(ids[(index + delta) % len(ids)])

    def _select(self, proposal_id: int | None, force: bool = False) -> None:
        changed = proposal_id != self.selected
        self.selected = proposal_id
        self._draw_queue()
        if changed or force:
            self._draw_diff()
            self.post_message(ProposalSelected(proposal_id))

    def _draw_queue(self) -> None:
        self.nudge.proposals_waiting(bool(self.queue))
        queue = self.query_one("#queue", Static)
        if not self.queue:
            queue.update(Content.styled("no proposal waiting", "dim"))
            self.border_subtitle = ""
            return
        rows = []
        for proposal in self.queue.values():
            chosen = proposal.id == self.selected
            rows.append(Content.assemble(
                ("▶ " if chosen else "  ", "bold $accent"),
                (f"#{proposal.id} ", "bold" if chosen else ""),
                ("HELD " if proposal.state is ProposalState.HELD else "", "bold $text-warning"),
                (f"→ slot {self.slots[proposal.id]} " if proposal.id in self.slots else "",
                 "$text-accent"),
                (f"base {proposal.base_commit[:7]} ", "dim"),
                (proposal.description, "bold" if chosen else ""),
            ))
        queue.update(Content("\n").join(rows))
        position = list(self.queue).index(self.selected) + 1 if self.selected in self.queue else 0
        self.border_subtitle = f"{position}/{len(self.queue)} pending"

    def _draw_diff(self) -> None:
        scroll = self.query_one("#hunks", HunkScroll)
        scroll.remove_children()
        proposal = self.selected_proposal
        if proposal is None:
            return
        hunks = parse_hunks(proposal.diff)
        held = proposal.state is ProposalState.HELD
        views = []
        if held:
            views.append(HunkView(Content.assemble(
                ("unusually large win: look before it becomes the best", "bold $text-warning"),
                ("\nit trained, and a re-run confirmed it: a keeps it, v discards it", "")),
                classes="held-banner"))
        if proposal.notes:
            views.append(HunkView(Content("\n").join(map(after_note, proposal.notes)),
                                  classes="note-banner"))
        for number, hunk in enumerate(hunks, 1):
            view = HunkView(render_hunk(hunk), classes="hunk held" if held else "hunk")
            view.border_title = f"{hunk.path} · hunk {number}/{len(hunks)}"
            view.border_subtitle = hunk.header.split("@@")[-1].strip()[:40]
            views.append(view)
        if not views:
            views.append(HunkView(Content.styled("(empty diff)", "dim")))
        scroll.mount_all(views)
        scroll.scroll_home(animate=False)
