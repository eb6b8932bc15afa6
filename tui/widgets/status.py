"""The one-line status bar: loop state, mode, best val_bpb, noise floor, cost, queue."""

from __future__ import annotations

from textual.content import Content
from textual.widgets import Static

from engine.events import RunProgress

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

    def on_mount(self) -> None:
        self.redraw()

    def on_resize(self) -> None:
        self.redraw()

    def redraw(self) -> None:
        compact = self.size.width < 140    # the full line needs ~135 columns
        state = STATE_WORDS.get(self.state, self.state)
        state_style = {"paused": "$warning", "stopped": "$error", "training": "$success",
                       "baseline": "$success", "promoting": "$success",
                       "reviewing": "$accent"}.get(self.state, "$primary")
        parts: list[Content] = [Content.styled(f" ● {state}", f"bold {state_style}")]
        if self.state in ("training", "baseline", "promoting") and self.progress is not None:
            p = self.progress
            parts.append(Content(f" {format_seconds(p.remaining_s)} left · step {p.step} · "
                                 f"loss {p.loss:.{3 if compact else 4}f}"))
        elif self.detail and not compact:
            parts.append(Content(f" · {self.detail}"))
        bar = " │ " if compact else "  │  "
        parts.append(Content.from_markup(f"{bar}mode [b]$mode[/b]",
                                         mode=self.mode))
        if self.best:
            best = f"{self.best[1]:.4f}" if compact else f"{self.best[1]:.6f} @ {self.best[0][:7]}"
        else:
            best = "—"
        parts.append(Content.from_markup(f"{bar}best [b]$best[/b]", best=best))
        if self.noise_floor is not None and not compact:
            parts.append(Content(f"{bar}noise ±{self.noise_floor:.4f}"))
        parts.append(Content(f"{bar}${self.cost:.2f}" if compact else f"{bar}cost ${self.cost:.2f}"))
        if self.pending:
            parts.append(Content.styled(f"{bar}{self.pending} pending", "bold $accent"))
        self.update(Content("").join(parts))
