"""The experiments table: one row per run, Δ recomputed against the best as it moves."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.content import Content
from textual.widget import Widget
from textual.widgets import DataTable
from textual.coordinate import Coordinate
from textual.widgets.data_table import CellDoesNotExist, RowDoesNotExist

from engine.records import Experiment, RunStatus
from tui.widgets.panel import Panel

COLUMNS = ("id", "commit", "status", "val_bpb", "Δ best", "description", "by")
# Fixed widths: DataTable sizes a column from its first values and never shrinks or grows it.
WIDTHS = {"id": 4, "commit": 7, "status": 11, "val_bpb": 8, "Δ best": 8, "description": 40, "by": 8}
STATUS_STYLES = {
    RunStatus.KEEP: "bold $text-success",
    RunStatus.DISCARD: "$text-warning",
    RunStatus.CRASH: "bold $text-error",
    RunStatus.TIMEOUT: "$text-error",
    RunStatus.KILLED: "$text-error",
    RunStatus.INTERRUPTED: "dim",
}


def status_text(experiment: Experiment) -> str:
    """The status, and beside a keep (or a held win) its improvement in units of the pooled
    sigma ("keep 5.0σ"): what the keep rule's margin was measured against. The full figures
    (n, means, sigma, margin) are in the title of the run's log (enter)."""
    sigmas = experiment.measure.sigmas if experiment.measure is not None else None
    if sigmas is None or experiment.status not in (RunStatus.KEEP, RunStatus.HELD):
        return experiment.status.value
    return f"{experiment.status.value} {sigmas:.1f}σ"


class ExperimentsTable(DataTable):
    pass


class ExperimentsPanel(Panel):
    TITLE = "experiments"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.rows: dict[str, Experiment] = {}          # by run id: unique for every kind of run
        self.best: float | None = None

    def compose(self) -> ComposeResult:
        table = ExperimentsTable(id="experiments", cursor_type="row", zebra_stripes=True)
        for column in COLUMNS:
            table.add_column(column, key=column, width=WIDTHS[column])
        yield table

    def focus_target(self) -> Widget:
        return self.query_one(ExperimentsTable)

    @property
    def selected(self) -> Experiment | None:
        table = self.query_one(ExperimentsTable)
        if not self.rows or table.cursor_row < 0:
            return None
        try:
            key = table.coordinate_to_cell_key(Coordinate(table.cursor_row, 0)).row_key
        except CellDoesNotExist:
            return None
        return self.rows.get(key.value)

    def upsert(self, experiment: Experiment, training: bool = False) -> None:
        table = self.query_one(ExperimentsTable)
        self.rows[experiment.run_id] = experiment
        cells = self._cells(experiment, training)
        key = experiment.run_id
        try:
            table.get_row(key)
        except RowDoesNotExist:
            table.add_row(*cells, key=key)
            table.move_cursor(row=table.row_count - 1)
            return
        for column, value in zip(COLUMNS, cells):
            table.update_cell(key, column, value)

    def set_best(self, best: float | None) -> None:
        self.best = best
        table = self.query_one(ExperimentsTable)
        for experiment in self.rows.values():
            table.update_cell(experiment.run_id, "Δ best", self._delta(experiment))

    def _delta(self, experiment: Experiment) -> Content:
        if experiment.val_bpb is None or self.best is None:
            return Content.styled("—", "dim")
        delta = experiment.val_bpb - self.best
        if abs(delta) < 5e-7:
            return Content.styled("best", "bold $text-success")
        return Content.styled(f"{delta:+.4f}", "$text-warning" if delta > 0 else "$text-success")

    def _cells(self, experiment: Experiment, training: bool) -> list:
        if training:
            status = Content.styled("training", "bold $text-accent")
        else:
            status = Content.styled(status_text(experiment),
                                    STATUS_STYLES.get(experiment.status, ""))
        bpb = "—" if experiment.val_bpb is None else f"{experiment.val_bpb:.6f}"
        number = "—" if experiment.id is None or experiment.id < 0 else str(experiment.id)
        return [number, experiment.commit[:7], status, bpb, self._delta(experiment),
                experiment.description, experiment.decided_by]
