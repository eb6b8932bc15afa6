"""val_bpb history (kept / discarded / crashed, noise repeats, best-so-far, baseline and noise
band) and, while a run trains, its loss curve against the best run's at the same elapsed time.

Each plot gets at least MIN_PLOT_ROWS rows or is not drawn: with room for one only, `c`
switches between them; with room for none, a line of words says what they would show.
Ticks are placed here, not by plotext, so that labels never run into each other and carry
the decimals that tell them apart. Plotext redraws the whole figure on each render, so the
panel redraws at most twice a second, and only when something changed."""

from __future__ import annotations

import math

from textual.app import ComposeResult
from textual.binding import Binding
from textual.content import Content
from textual.widget import Widget
from textual.widgets import Static
from textual_plotext import PlotextPlot

from engine.base.records import Experiment, RunKind, RunStatus
from tui.widgets.panel import Panel

REDRAW_INTERVAL_S = 0.5
MAX_CURVE_POINTS = 2000
MIN_PLOT_ROWS = 7                # x axis (2 rows), then points and two y ticks apart
X_AXIS_ROWS = 2                  # plotext's x axis line and its labels
Y_TICK_EVERY_ROWS = 3
BORDER_SUBTITLE_MARGIN = 6       # the border's corners and the spaces around a subtitle
FAILED = (RunStatus.CRASH, RunStatus.TIMEOUT)
MEASUREMENT_KINDS = ("noise", "rerun")   # runs that measure noise or confirm: drawn apart
OTHER_SCALE_KINDS = ("promotion",)       # a larger model's val_bpb: not on this chart
EMPTY_HISTORY = "no finished run yet: each run's val_bpb lands here (lower is better)"


def tick_labels(low: float, high: float, count: int) -> tuple[list[float], list[str]]:
    """`count` evenly spaced ticks over [low, high], with the fewest decimals that keep every
    label distinct."""
    count = max(2, count)
    if high <= low:
        high = low + max(abs(low) * 1e-3, 1e-6)
    values = [low + (high - low) * i / (count - 1) for i in range(count)]
    step = (high - low) / (count - 1)
    decimals = min(6, max(0, -math.floor(math.log10(step)) + 1))
    while decimals < 8:
        labels = [f"{v:.{decimals}f}" for v in values]
        if len(set(labels)) == len(labels):
            return values, labels
        decimals += 1
    return values, labels


def integer_ticks(first: int, last: int, width: int) -> list[int]:
    """Integer ticks from first to last spaced so that their labels leave gaps on `width`."""
    label = len(str(last)) + 3
    room = max(1, width // label)
    step = max(1, math.ceil((last - first + 1) / room))
    return list(range(first, last + 1, step))


def best_so_far(experiments: list[Experiment]) -> list[tuple[str, float]]:
    """(run id, the best kept val_bpb up to it) of each experiment from the first keep on."""
    line, best = [], None
    for experiment in experiments:
        if experiment.status == RunStatus.KEEP and (best is None or experiment.val_bpb < best):
            best = experiment.val_bpb
        if best is not None:
            line.append((experiment.run_id, best))
    return line


class ChartPlot(PlotextPlot):
    def on_resize(self) -> None:
        # ticks are spaced for the plot's size: place them again
        self.query_ancestor(ChartPanel).redraw_soon()


class BpbPlot(ChartPlot):
    pass


class LossPlot(ChartPlot):
    pass


class ChartPanel(Panel, can_focus=True):
    TITLE = "val_bpb history"
    BINDINGS = [Binding("c", "switch_chart", "History/loss", id="switch-chart",
                        tooltip="Show the other chart when there is room for one only")]

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.experiments: dict[str, Experiment] = {}      # by run id, in arrival order
        self.noise_floor: float | None = None
        self.best_run_id: str | None = None
        self.live_run_id: str | None = None
        self.curves: dict[str, list[tuple[float, float]]] = {}
        self.preferred = "history"       # the chart shown when only one fits
        self.shown: tuple[str, ...] | None = None     # None: not arranged yet
        self._dirty = True
        self._note = EMPTY_HISTORY       # what the note in place of the charts says

    def compose(self) -> ComposeResult:
        yield BpbPlot(id="bpb-plot")
        yield LossPlot(id="loss-plot")
        yield Static(EMPTY_HISTORY, id="chart-note")

    def on_mount(self) -> None:
        super().on_mount()
        self.set_interval(REDRAW_INTERVAL_S, self._redraw_if_dirty)
        self._arrange()
        self._redraw_if_dirty()

    def on_resize(self) -> None:
        self._arrange()

    def on_show(self) -> None:
        # shown again (a narrow terminal's panel switch): its size is known after the refresh
        self.call_after_refresh(self._arrange)

    def redraw_soon(self) -> None:
        self._dirty = True

    @property
    def drawn(self) -> bool:
        """The plots show all the data they were given (the 2 Hz redraw has caught up)."""
        return not self._dirty

    def focus_target(self) -> Widget:
        return self

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "switch_chart":
            return len(self._wanted()) == 2 and len(self.shown or ()) < 2
        return True

    def action_switch_chart(self) -> None:
        self.preferred = "loss" if self.preferred == "history" else "history"
        self._arrange()

    # --- data in -------------------------------------------------------------------------

    def upsert(self, experiment: Experiment) -> None:
        if experiment.kind in OTHER_SCALE_KINDS:
            return
        self.experiments[experiment.run_id] = experiment
        self._changed()

    def load(self, experiments: list[Experiment]) -> None:
        """A whole journal at once: one arrangement, not one per run."""
        self.experiments.update((e.run_id, e) for e in experiments
                                if e.kind not in OTHER_SCALE_KINDS)
        self._changed()

    def set_best_run(self, run_id: str | None) -> None:
        self.best_run_id = run_id
        self._dirty = True

    def set_noise_floor(self, spread: float | None) -> None:
        self.noise_floor = spread
        self._dirty = True

    def start_live(self, run_id: str) -> None:
        self.live_run_id = run_id
        self.curves.setdefault(run_id, [])
        self._changed()

    def stop_live(self) -> None:
        self.live_run_id = None
        self._changed()

    def add_progress(self, run_id: str, elapsed_s: float, loss: float) -> None:
        curve = self.curves.setdefault(run_id, [])
        curve.append((elapsed_s, loss))
        if len(curve) > MAX_CURVE_POINTS:      # keep every other point: shape stays, memory bounded
            del curve[::2]
        if len(curve) == 1 and run_id == self.live_run_id:
            self._changed()                    # the loss chart has something to show now
        self._dirty = True

    # --- layout --------------------------------------------------------------------------

    def _changed(self) -> None:
        self._dirty = True
        if self.is_mounted:
            self._arrange()

    def _wanted(self) -> list[str]:
        """The charts that have something to show, in panel order."""
        wanted = []
        if any(e.val_bpb is not None or e.status in FAILED for e in self.experiments.values()):
            wanted.append("history")
        if self.live_run_id is not None and self.curves.get(self.live_run_id):
            wanted.append("loss")
        return wanted

    def _arrange(self) -> None:
        rows = self.content_size.height
        wanted = self._wanted()
        if len(wanted) == 2 and rows >= 2 * MIN_PLOT_ROWS:
            shown = tuple(wanted)
        elif wanted and rows >= MIN_PLOT_ROWS:
            shown = (self.preferred if self.preferred in wanted else wanted[0],)
        else:
            shown = ()
        if shown != self.shown:
            self.shown = shown
            self.query_one(BpbPlot).display = "history" in shown
            self.query_one(LossPlot).display = "loss" in shown
            self.query_one("#chart-note").display = not shown
            self.border_title = "live loss" if shown == ("loss",) else self.TITLE
            self._dirty = True
            self.refresh_bindings()
        self._draw_note(wanted)

    def _draw_note(self, wanted: list[str]) -> None:
        if self.shown:
            return
        if not wanted:
            text = EMPTY_HISTORY
            if self.live_run_id is not None:
                text += "\nthe live loss of the run in flight appears with its first step"
        else:
            text = f"{self.border_subtitle or ''}\n(too small for a chart: f full-screens it)"
        if text != self._note:           # its height is the panel's: no layout for new words
            self._note = text
            self.query_one("#chart-note", Static).update(text, layout=False)

    # --- drawing -------------------------------------------------------------------------

    def _redraw_if_dirty(self) -> None:
        if not self._dirty:
            return
        self._dirty = False
        self._draw_history()
        if "loss" in self.shown:
            self._draw_live()
        self._draw_note(self._wanted())

    def _draw_history(self) -> None:
        plot = self.query_one(BpbPlot)
        plt = plot.plt
        plt.clear_data()
        plt.clear_figure()
        rows = list(self.experiments.values())
        position = {e.run_id: index for index, e in enumerate(rows, 1)}
        scored = [e for e in rows if e.val_bpb is not None]
        if not scored:
            self.border_subtitle = ""
            plot.refresh()
            return
        low = min(e.val_bpb for e in scored)
        high = max(e.val_bpb for e in scored)
        baseline = next((e.val_bpb for e in scored if e.kind == RunKind.BASELINE), scored[0].val_bpb)
        if self.noise_floor:
            for edge in (baseline - self.noise_floor, baseline + self.noise_floor):
                plt.hline(edge, "gray")
            low = min(low, baseline - self.noise_floor)
            high = max(high, baseline + self.noise_floor)
        plt.hline(baseline, "blue")
        span = max(high - low, 0.01 * abs(high), 1e-3)
        crash_y = high + span * 0.05
        measured = [e for e in scored if e.kind in MEASUREMENT_KINDS]
        experiments = [e for e in scored if e.kind not in MEASUREMENT_KINDS]
        groups = (
            ([e for e in experiments if e.status == RunStatus.KEEP], "green", "●"),
            ([e for e in experiments if e.status != RunStatus.KEEP], "orange", "○"),
            (measured, "gray", "·"),
        )
        best_line = best_so_far(experiments)
        best = best_line[-1][1] if best_line else None
        if best_line:
            plt.plot([position[run_id] for run_id, _ in best_line], [y for _, y in best_line],
                     color="cyan")
        for members, colour, marker in groups:
            if members:
                plt.scatter([position[e.run_id] for e in members], [e.val_bpb for e in members],
                            color=colour, marker=marker)
        crashed = [e for e in rows if e.status in FAILED]
        if crashed:
            plt.scatter([position[e.run_id] for e in crashed], [crash_y] * len(crashed),
                        color="red", marker="x")
        y_low, y_high = low - span * 0.1, crash_y + span * 0.05
        plt.ylim(y_low, y_high)
        self._ticks(plt, plot, y_low, y_high)
        plt.xticks(integer_ticks(1, len(rows), max(1, plot.size.width - 8)))
        plt.xlim(0.5, len(rows) + 0.5)
        if self.shown == ("loss",):
            plot.refresh()
            return
        # words go in the border, so that every row of a small terminal is chart
        best_words = "—" if best is None else f"{best:.4f}"
        self.border_subtitle = self._fitting(
            f"[cyan]best {best_words}[/] · [blue]baseline {baseline:.4f}[/] · x: run",
            f"[cyan]best {best_words}[/] · [blue]baseline {baseline:.4f}[/]",
            f"[cyan]best {best_words}[/] · [blue]base {baseline:.4f}[/]")
        plot.refresh()

    def _fitting(self, *variants: str) -> str:
        """The first of the subtitle's variants (markup, longest first) that the border
        holds whole: a cut subtitle loses the figure at its end."""
        room = self.size.width - BORDER_SUBTITLE_MARGIN
        return next((v for v in variants if Content.from_markup(v).cell_length <= room),
                    variants[-1])

    def _ticks(self, plt, plot: PlotextPlot, low: float, high: float) -> None:
        count = (plot.size.height - X_AXIS_ROWS) // Y_TICK_EVERY_ROWS
        values, labels = tick_labels(low, high, min(5, count))
        plt.yticks(values, labels)

    def _draw_live(self) -> None:
        plot = self.query_one(LossPlot)
        plt = plot.plt
        plt.clear_data()
        plt.clear_figure()
        live = self.curves.get(self.live_run_id or "", [])
        if not live:
            plot.refresh()
            return
        now = live[-1][0]
        losses = [loss for _, loss in live if math.isfinite(loss)]
        plt.plot([t for t, _ in live], [loss for _, loss in live], color="yellow")
        title = f"loss {live[-1][1]:.3f} @ {now:.0f}s"
        best_words = ""
        best_curve = self.curves.get(self.best_run_id or "", [])
        if best_curve and self.best_run_id != self.live_run_id:
            same_span = [(t, loss) for t, loss in best_curve if t <= now]
            if same_span:
                plt.plot([t for t, _ in same_span], [loss for _, loss in same_span],
                         color="green")
                losses += [loss for _, loss in same_span if math.isfinite(loss)]
                best_words = f" · best run {same_span[-1][1]:.3f}"
        if losses:
            low, high = min(losses), max(losses)
            pad = max(high - low, 1e-3) * 0.05
            plt.ylim(low - pad, high + pad)
            self._ticks(plt, plot, low - pad, high + pad)
        start = min(t for t, _ in live)
        plt.xlim(start, max(now, start + 1))
        seconds = integer_ticks(int(start), int(max(now, start + 1)), max(1, plot.size.width - 8))
        plt.xticks(seconds, [f"{s}s" for s in seconds])
        if "history" in self.shown:
            plt.title(title + best_words)      # the border holds the history's words
        else:
            self.border_subtitle = self._fitting(
                f"[yellow]─[/] {title}[green]{best_words}[/]",
                f"[yellow]─[/] {title}[green]{best_words.replace(' run', '')}[/]",
                f"[yellow]─[/] {title}")
        plot.refresh()
