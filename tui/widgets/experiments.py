"""The experiments table: one row per run, Δ recomputed against the best as it moves."""

from __future__ import annotations

import textwrap

from textual.app import ComposeResult
from textual.content import Content
from textual.coordinate import Coordinate
from textual.widget import Widget
from textual.widgets import DataTable
from textual.widgets.data_table import CellDoesNotExist, RowDoesNotExist, RowKey

from engine.base.records import Experiment, RunKind, RunStatus
from tui.widgets.panel import Panel

# The description last: free text of any length, it is the one cut at the panel's edge.
COLUMNS = ("id", "commit", "status", "val_bpb", "Δ best", "by", "description")
# Fixed widths: DataTable sizes a column from its first values and never shrinks or grows it.
# "by" holds who decided, or what the run was for ("speculative", the longest).
WIDTHS = {"id": 4, "commit": 7, "status": 12, "val_bpb": 8, "Δ best": 8, "by": 11,
          "description": 60}
# What a run is, in words, with its style; keyed by the status value, so a status the engine
# adds later (held, vetoed) reads as itself.
LABEL_STYLES = {
    "keep": "bold $text-success",
    "discard": "$text-warning",
    "crash": "bold $text-error",
    "timeout": "$text-error",
    "killed": "$text-error",
    "interrupted": "dim",
    "held": "bold $text-accent",
    "reverted": "strike $text-warning",     # kept, then its re-runs showed it was noise
    "vetoed": "$text-error",
    "noise repeat": "italic $text-secondary",   # $text-muted renders black in a table cell
    "confirmation": "$text-primary",
    "training": "bold $text-accent",
    "speculative": "bold italic $text-accent",
    "promotion": "$text-secondary",
}
MEASUREMENT_LABELS = {"noise": "noise repeat", "rerun": "confirmation", "promotion": "promotion"}
# A kept change's rungs on the promotion ladder: the depth, and whether its win held there.
RUNG_MARKS = {True: ("✓", "$text-success"), False: ("✗", "$text-error"), None: ("…", "dim")}
# A run that produced a metric: its kind says what it was for.
MEASURED = (RunStatus.KEEP, RunStatus.DISCARD)
# Runs whose message says what went wrong: shown whole, wrapped under the description.
ENDED_BADLY = (RunStatus.CRASH, RunStatus.TIMEOUT, RunStatus.KILLED)


def why_lines(experiment: Experiment, width: int, training: bool = False) -> list[str]:
    """Why a run ended without a metric, wrapped to `width` (the description's visible part)."""
    if training or experiment.status not in ENDED_BADLY or not experiment.message:
        return []
    return textwrap.wrap(experiment.message, width, initial_indent="↳ ", subsequent_indent="  ",
                         break_on_hyphens=False)


def run_label(experiment: Experiment, training: bool = False) -> str:
    """The status column: what the run is, from its record (kind, status, speculative)."""
    if training:
        if experiment.kind == RunKind.PROMOTION:
            return "promotion"
        return "speculative" if experiment.speculative else "training"
    if experiment.status in MEASURED and experiment.kind in MEASUREMENT_LABELS:
        return MEASUREMENT_LABELS[experiment.kind]
    return experiment.status.value


def totals(experiments: list[Experiment]) -> str:
    """Finished runs counted by what they are, in the table's order of words."""
    counts: dict[str, int] = {}
    for experiment in experiments:
        if experiment.finished_at is not None:
            label = run_label(experiment)
            counts[label] = counts.get(label, 0) + 1
    order = list(LABEL_STYLES)
    return " · ".join(f"{n} {label}" for label, n in
                      sorted(counts.items(), key=lambda item: order.index(item[0])
                             if item[0] in order else len(order)))


def status_text(experiment: Experiment, training: bool = False) -> str:
    """What the run is, and beside a keep (or a held win) its improvement in units of the
    pooled sigma ("keep 5.0σ"): what the keep rule's margin was measured against. The full
    figures (n, means, sigma, bounds; a reverted keep's recheck too) are in the title of the
    run's log (enter)."""
    label = run_label(experiment, training)
    sigmas = experiment.measure.sigmas if experiment.measure is not None else None
    if training or sigmas is None or experiment.status not in (RunStatus.KEEP, RunStatus.HELD):
        return label
    return f"{label} {sigmas:.1f}σ"


def ladder_marks(experiment: Experiment) -> list[tuple[str, str]]:
    """'d8✓ ' before a kept change whose win held at depth 8 ('✗' did not, '…' measuring)."""
    marks = []
    for rung in experiment.promotions:
        mark, style = RUNG_MARKS[rung.held]
        marks.append((f"d{rung.depth}{mark} ", f"bold {style}"))
    return marks


class Cell:
    """A cell the table need not measure. DataTable measures every cell of each new row, and
    measuring costs a Content a render and a Text a fresh ConsoleOptions: with 1,000 rows,
    most of an attach. Every column here has a fixed width, which a measured width never
    changes, so a Cell offers none (DataTable then takes 1) and is rendered, for the rows on
    screen only, as its Content."""

    __slots__ = ("content", "rank")

    def __init__(self, content: Content | str, rank: int = 0) -> None:
        self.content = Content(content) if isinstance(content, str) else content
        self.rank = rank            # the id column's: the row's place, for re-sorting

    def __str__(self) -> str:
        return self.content.plain

    def __rich_console__(self, console, options):
        yield self.content


class ExperimentsTable(DataTable):
    pass


class ExperimentsPanel(Panel):
    TITLE = "experiments"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.rows: dict[str, Experiment] = {}          # by run id: unique for every kind of run
        self.ranks: dict[str, int] = {}                # by run id: the order rows came in
        self.why_width = WIDTHS["description"]         # what of the description shows
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

    def upsert(self, experiments: list[Experiment], training: bool = False) -> None:
        """Add or update these runs' rows: the cursor moves to the last row when one is new,
        and the totals are counted once, so a whole journal at once (attaching to a long
        session) costs a step per row."""
        added = [self._put(experiment, training) for experiment in experiments]
        if any(added):
            table = self.query_one(ExperimentsTable)
            table.move_cursor(row=table.row_count - 1)
        if experiments:
            self.border_subtitle = totals(list(self.rows.values()))

    def _put(self, experiment: Experiment, training: bool) -> bool:
        """Add or update the run's row; True when the row is new."""
        table = self.query_one(ExperimentsTable)
        key = experiment.run_id
        self.rows[key] = experiment
        self.ranks.setdefault(key, len(self.ranks))
        cells = self._cells(experiment, training)
        height = 1 + len(why_lines(experiment, self.why_width, training))
        try:
            table.get_row(key)
        except RowDoesNotExist:
            table.add_row(*cells, key=key, height=height)
            return True
        if table.get_row_height(RowKey(key)) != height:
            self._replace_row(table, key, cells, height)
            return False
        for column, value in zip(COLUMNS, cells):
            table.update_cell(key, column, value)
        return False

    def _replace_row(self, table: DataTable, key: str, cells: list, height: int) -> None:
        """A row whose height changes (a run that crashed: its error, whole) is added again,
        in its place among the others, with the cursor where it was."""
        selected = self.selected
        table.remove_row(key)
        table.add_row(*cells, key=key, height=height)
        table.sort("id", key=lambda cell: cell.rank)
        if selected is not None:
            table.move_cursor(row=table.get_row_index(selected.run_id))

    def on_resize(self) -> None:
        """The errors of crashed runs wrapped again to what of the description now shows."""
        table = self.query_one(ExperimentsTable)
        others = sum(WIDTHS[c] + 2 * table.cell_padding for c in COLUMNS if c != "description")
        width = max(20, min(WIDTHS["description"],
                            table.scrollable_content_region.width - others - 2 * table.cell_padding))
        if width == self.why_width:
            return
        self.why_width = width
        for experiment in list(self.rows.values()):
            if why_lines(experiment, width):
                self._put(experiment, training=False)

    def set_best(self, best: float | None) -> None:
        if best == self.best:
            return                   # every row's Δ already says so
        self.best = best
        table = self.query_one(ExperimentsTable)
        for experiment in self.rows.values():
            table.update_cell(experiment.run_id, "Δ best", self._delta(experiment))

    def _delta(self, experiment: Experiment) -> Cell:
        if experiment.val_bpb is None or self.best is None:
            return Cell(Content.styled("—", "dim"))
        delta = experiment.val_bpb - self.best
        if abs(delta) < 5e-7:
            return Cell(Content.styled("best", "bold $text-success"))
        return Cell(Content.styled(f"{delta:+.4f}",
                                   "$text-warning" if delta > 0 else "$text-success"))

    def _cells(self, experiment: Experiment, training: bool) -> list:
        label = run_label(experiment, training)
        status = Content.styled(status_text(experiment, training), LABEL_STYLES.get(label, ""))
        bpb = "—" if experiment.val_bpb is None else f"{experiment.val_bpb:.6f}"
        number = "—" if experiment.id is None or experiment.id < 0 else str(experiment.id)
        # What the metric rests on, when it is less than the evaluator on a confined run.
        integrity = experiment.integrity_label
        why = why_lines(experiment, self.why_width, training)
        description = Content.assemble(*ladder_marks(experiment), experiment.description,
                                       (f" [{integrity}]" if integrity else "", "$text-warning"),
                                       ("".join(f"\n{line}" for line in why), "$text-error"))
        return [Cell(number, self.ranks[experiment.run_id]), Cell(experiment.commit[:7]),
                Cell(status), Cell(bpb),
                self._delta(experiment), Cell(experiment.decided_by), Cell(description)]
