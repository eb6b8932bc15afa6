"""val_bpb history (kept / discarded / crashed, best-so-far, baseline and noise band) and,
while a run trains, its loss curve against the best run's at the same elapsed time.

Plotext redraws the whole figure on each render, so the panel redraws at most twice a
second, and only when something changed."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.widget import Widget
from textual_plotext import PlotextPlot

from engine.records import Experiment, RunStatus
from tui.widgets.panel import Panel

REDRAW_INTERVAL_S = 0.5
MAX_CURVE_POINTS = 2000


class BpbPlot(PlotextPlot):
    pass


class LossPlot(PlotextPlot):
    pass


class ChartPanel(Panel, can_focus=True):
    TITLE = "val_bpb history"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.experiments: dict[str, Experiment] = {}      # by run id, in arrival order
        self.noise_floor: float | None = None
        self.best_run_id: str | None = None
        self.live_run_id: str | None = None
        self.curves: dict[str, list[tuple[float, float]]] = {}
        self._dirty = True

    def compose(self) -> ComposeResult:
        yield BpbPlot(id="bpb-plot")
        yield LossPlot(id="loss-plot")

    def on_mount(self) -> None:
        super().on_mount()
        self.query_one(LossPlot).display = False
        self.set_interval(REDRAW_INTERVAL_S, self._redraw_if_dirty)
        self._redraw_if_dirty()

    def focus_target(self) -> Widget:
        return self

    # --- data in -------------------------------------------------------------------------

    def upsert(self, experiment: Experiment) -> None:
        self.experiments[experiment.run_id] = experiment
        self._dirty = True

    def set_best_run(self, run_id: str | None) -> None:
        self.best_run_id = run_id
        self._dirty = True

    def set_noise_floor(self, spread: float | None) -> None:
        self.noise_floor = spread
        self._dirty = True

    def start_live(self, run_id: str) -> None:
        self.live_run_id = run_id
        self.curves.setdefault(run_id, [])
        self.query_one(LossPlot).display = True       # the history gets the room back when idle
        self._dirty = True

    def stop_live(self) -> None:
        self.live_run_id = None
        self.query_one(LossPlot).display = False
        self._dirty = True

    def add_progress(self, run_id: str, elapsed_s: float, loss: float) -> None:
        curve = self.curves.setdefault(run_id, [])
        curve.append((elapsed_s, loss))
        if len(curve) > MAX_CURVE_POINTS:      # keep every other point: shape stays, memory bounded
            del curve[::2]
        self._dirty = True

    # --- drawing -------------------------------------------------------------------------

    def _redraw_if_dirty(self) -> None:
        if not self._dirty:
            return
        self._dirty = False
        self._draw_history()
        if self.live_run_id is not None:
            self._draw_live()

    def _draw_history(self) -> None:
        plot = self.query_one(BpbPlot)
        plt = plot.plt
        plt.clear_data()
        plt.clear_figure()
        rows = list(self.experiments.values())
        position = {e.run_id: index for index, e in enumerate(rows, 1)}
        scored = [e for e in rows if e.val_bpb is not None]
        if not scored:
            self.border_subtitle = "no finished run yet"
            plot.refresh()
            return
        low = min(e.val_bpb for e in scored)
        high = max(e.val_bpb for e in scored)
        baseline = scored[0].val_bpb            # the first run to finish is the baseline
        if self.noise_floor:
            for edge in (baseline - self.noise_floor, baseline + self.noise_floor):
                plt.hline(edge, "gray")
            low, high = min(low, baseline - self.noise_floor), max(high, baseline + self.noise_floor)
        plt.hline(baseline, "blue")
        span = max(high - low, 0.01 * abs(high), 1e-3)
        crash_y = high + span * 0.05
        groups = {
            "kept": ([e for e in scored if e.status == RunStatus.KEEP], "green", "●"),
            "discarded": ([e for e in scored if e.status != RunStatus.KEEP], "orange", "○"),
        }
        best_x, best_y, best = [], [], None
        for experiment in scored:
            if experiment.status == RunStatus.KEEP or best is None:
                if best is None or experiment.val_bpb < best:
                    best = experiment.val_bpb
            best_x.append(position[experiment.run_id])
            best_y.append(best)
        plt.plot(best_x, best_y, color="cyan", label="best")
        for label, (members, colour, marker) in groups.items():
            if members:
                plt.scatter([position[e.run_id] for e in members], [e.val_bpb for e in members],
                            color=colour, marker=marker, label=label)
        crashed = [e for e in rows if e.val_bpb is None]
        if crashed:
            plt.scatter([position[e.run_id] for e in crashed], [crash_y] * len(crashed),
                        color="red", marker="x", label="crashed")
        plt.ylim(low - span * 0.1, crash_y + span * 0.05)
        # words go in the border, so that every row of a small terminal is chart
        self.border_subtitle = f"best {best:.4f} · baseline {baseline:.4f} · x: run"
        plot.refresh()

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
        plt.plot([t for t, _ in live], [loss for _, loss in live], color="yellow", label="this run")
        title = f"loss {live[-1][1]:.3f} @ {now:.0f}s"
        best_curve = self.curves.get(self.best_run_id or "", [])
        if best_curve and self.best_run_id != self.live_run_id:
            same_span = [(t, loss) for t, loss in best_curve if t <= now]
            if same_span:
                plt.plot([t for t, _ in same_span], [loss for _, loss in same_span],
                         color="green", label="best run")
                title += f" · best run {same_span[-1][1]:.3f}"
        plt.title(title)                       # the loss plot names its own numbers
        plot.refresh()
