"""The one-line status bar: loop state, mode, best val_bpb, noise floor, cost, queue.

While proposals wait for review the trainer may be busy: training the top one ahead of the
human's decision (a speculative run), or one the human has just accepted. The bar then says
what trains, with its progress, rather than "waiting for review" over a busy trainer (the
pending count says that proposals wait)."""

from __future__ import annotations

from textual.content import Content
from textual.widgets import Static

from engine.base.events import RunProgress
from engine.base.records import RunKind

STATE_WORDS = {
    "starting": "starting",
    "baseline": "training the baseline",
    "drafting": "drafting",
    "reviewing": "waiting for review",
    "training": "training",
    "promoting": "promoting a kept change",
    "paused": "paused",
    "stopped": "stopped",
    "idle": "idle",
}


# What a run of the loop's own measures is, where the loop's state only says it trains.
KIND_WORDS = {"noise": "training a noise repeat", "rerun": "training a confirmation re-run"}


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}:{secs:02d}"


class StatusLine(Static):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.state = "starting"
        self.detail = ""
        self.mode = "review"
        self.best: tuple[str, float] | None = None
        self.noise_floor: float | None = None
        self.cost = 0.0
        self.pending = 0
        self.progress: RunProgress | None = None
        self.trains: str | None = None        # what trains while proposals wait for review
        self.run_kind: str | None = None      # the followed run's kind (a journal RUN_KINDS value)

    def on_mount(self) -> None:
        self.redraw()

    def on_resize(self) -> None:
        self.redraw()

    def redraw(self) -> None:
        """The full line where it fits, else the compact one, else the compact one without
        its least important parts (the state and the pending count go last)."""
        width = self.size.width or 200
        parts = self._parts(compact=False)
        if sum(part.cell_length for _, part in parts) > width:
            parts = self._parts(compact=True)
            while sum(part.cell_length for _, part in parts) > width and len(parts) > 1:
                least = max(rank for rank, _ in parts)
                parts = [(rank, part) for rank, part in parts if rank != least]
        self.update(Content("").join(part for _, part in parts), layout=False)

    def _parts(self, compact: bool) -> list[tuple[int, Content]]:
        """(rank, piece) in the line's order; a higher rank is dropped first for room."""
        ahead = self.state == "reviewing" and self.trains is not None
        if ahead:
            state, state_style = self.trains, "$success"
        elif self.state in (RunKind.BASELINE, "training") and self.run_kind in KIND_WORDS:
            state, state_style = KIND_WORDS[self.run_kind], "$success"
        else:
            state = STATE_WORDS.get(self.state, self.state)
            state_style = {"paused": "$warning", "stopped": "$error", "training": "$success",
                           "baseline": "$success", "promoting": "$success",
                           "reviewing": "$accent"}.get(self.state, "$primary")
        parts = [(0, Content.styled(f" ● {state}", f"bold {state_style}"))]
        trains = ahead or self.state in ("training", "baseline", "promoting")
        if trains and self.progress is not None:
            p = self.progress
            parts.append((2, Content(f" {format_seconds(p.remaining_s)} left · step {p.step} · "
                                     f"loss {p.loss:.{3 if compact else 4}f}")))
        elif self.detail and not compact:
            parts.append((6, Content(f" · {self.detail}")))
        bar = " │ " if compact else "  │  "
        parts.append((4, Content.from_markup(f"{bar}mode [b]$mode[/b]", mode=self.mode)))
        if self.best:
            best = f"{self.best[1]:.4f}" if compact else f"{self.best[1]:.6f} @ {self.best[0][:7]}"
        else:
            best = "—"
        parts.append((3, Content.from_markup(f"{bar}best [b]$best[/b]", best=best)))
        if self.noise_floor is not None and not compact:
            parts.append((6, Content(f"{bar}noise ±{self.noise_floor:.4f}")))
        parts.append((5, Content(f"{bar}${self.cost:.2f}" if compact
                                 else f"{bar}cost ${self.cost:.2f}")))
        if self.pending:
            parts.append((1, Content.styled(f"{bar}{self.pending} pending", "bold $accent")))
        return parts
