"""`pairlab report`: autoresearch's progress chart and a Markdown summary, from the journal."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from engine.base.records import Experiment, KeepMeasure, RunKind, RunStatus
from engine.journal import FAILED_STATUSES, Journal, Totals
from engine.journal.promotions import Promotion

PNG_NAME = "progress.png"
MD_NAME = "report.md"
LABEL_CHARS = 48

KEPT_COLOUR = "#2ecc71"
DISCARDED_COLOUR = "#b0b0b0"
BEST_COLOUR = "#27ae60"
CRASH_COLOUR = "#e74c3c"
BASELINE_COLOUR = "#34495e"
REVERTED_COLOUR = "#e67e22"


@dataclass
class Summary:
    """The numbers the chart and the Markdown share."""

    totals: Totals
    experiments: list[Experiment]
    kinds: dict[str, str]                   # run id -> baseline | experiment | noise | rerun
    baseline: Experiment | None
    best: Experiment | None
    noise_band: tuple[float, float] | None  # val_bpb range the baseline's repeats span
    # each steering note with the proposals it went into: (id, description, what became of it)
    notes: list[tuple[str, list[tuple[int, str, str]]]]
    promotions: list[Promotion]             # kept changes trained at a larger depth

    @property
    def improvement(self) -> float | None:
        if self.baseline is None or self.best is None:
            return None
        return self.baseline.val_bpb - self.best.val_bpb

    def kept_changes(self) -> list[Experiment]:
        """Kept runs other than the baseline, first time each commit was kept."""
        seen, kept = set(), []
        for e in self.experiments:
            if (e.status is RunStatus.KEEP and self.kinds[e.run_id] != RunKind.BASELINE
                    and e.commit not in seen):
                seen.add(e.commit)
                kept.append(e)
        return kept


def summarize(journal: Journal) -> Summary:
    experiments = journal.experiments()
    kinds = {r["id"]: r["kind"] for r in journal.run_rows()}
    measured = [e for e in experiments if e.val_bpb is not None and e.status not in FAILED_STATUSES]
    baselines = [e for e in measured if kinds[e.run_id] == RunKind.BASELINE]
    kept = [e for e in measured if e.status is RunStatus.KEEP]
    baseline = baselines[0] if baselines else (kept[0] if kept else None)
    best = journal.best()
    return Summary(totals=journal.totals(), experiments=experiments, kinds=kinds,
                   baseline=baseline, best=best,
                   noise_band=_noise_band(journal, baseline, baselines, measured, kinds),
                   notes=_notes(journal, experiments), promotions=journal.promotions())


def _notes(journal: Journal, experiments: list[Experiment]):
    outcomes = {e.proposal_id: e.status.value for e in experiments if e.proposal_id is not None}
    notes = []
    for text, proposal_ids in journal.notes():
        influenced = []
        for proposal_id in proposal_ids:
            proposal = journal.get_proposal(proposal_id)
            influenced.append((proposal_id, proposal.description,
                               outcomes.get(proposal_id, proposal.state.value)))
        notes.append((text, influenced))
    return notes


def _noise_band(journal, baseline, baselines, measured, kinds) -> tuple[float, float] | None:
    """The spread of the baseline's repeats, measured, else from the stored noise floor."""
    repeats = baselines + [e for e in measured if kinds[e.run_id] == RunKind.NOISE]
    if len(repeats) > 1:
        values = [e.val_bpb for e in repeats]
        return min(values), max(values)
    spread = journal.get_state("noise_floor")
    if baseline is None or not isinstance(spread, (int, float)) or spread <= 0:
        return None
    return baseline.val_bpb - spread / 2, baseline.val_bpb + spread / 2


def write_report(journal: Journal, out_dir: Path) -> tuple[Path, Path]:
    """Write progress.png and report.md into `out_dir`; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(journal)
    png_path = out_dir / PNG_NAME
    md_path = out_dir / MD_NAME
    plot_progress(summary, png_path)
    md_path.write_text(markdown(summary, png_path.name), encoding="utf-8")
    return png_path, md_path


@dataclass
class ChartPoints:
    kept: list[Experiment]
    others: list[Experiment]         # discarded, measurements, held and undecided wins
    crashed: list[Experiment]        # crash, timeout, killed
    reverted: list[Experiment]       # kept, then shown to be noise by the best's re-runs


def chart_points(summary: Summary) -> ChartPoints:
    """What progress.png draws. An interrupted run is no outcome (it trains again), and a
    promotion run trains a larger model: neither is drawn."""
    shown = [e for e in summary.experiments if e.status is not RunStatus.INTERRUPTED
             and e.kind != RunKind.PROMOTION]
    measured = [e for e in shown if e.val_bpb is not None and e.status not in FAILED_STATUSES]
    return ChartPoints(kept=[e for e in measured if e.status is RunStatus.KEEP],
                       others=[e for e in measured if e.status not in (RunStatus.KEEP,
                                                                       RunStatus.REVERTED)],
                       crashed=[e for e in shown if e.status in FAILED_STATUSES],
                       reverted=[e for e in measured if e.status is RunStatus.REVERTED])


def plot_progress(summary: Summary, path: Path) -> None:
    """val_bpb over experiments: grey discards, labelled keeps, running best, crashes on top."""
    fig = Figure(figsize=(16, 8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    points = chart_points(summary)
    kept, others, crashed = points.kept, points.others, points.crashed

    if summary.noise_band is not None:
        low, high = summary.noise_band
        ax.axhspan(low, high, color=BASELINE_COLOUR, alpha=0.08, label="noise band (baseline repeats)")
    if summary.baseline is not None:
        ax.axhline(summary.baseline.val_bpb, color=BASELINE_COLOUR, linestyle="--", linewidth=1,
                   label=f"baseline {summary.baseline.val_bpb:.6f}")
    ax.scatter([e.id for e in others], [e.val_bpb for e in others], s=18, c=DISCARDED_COLOUR,
               alpha=0.7, zorder=2, label="discarded")
    ax.scatter([e.id for e in kept], [e.val_bpb for e in kept], s=60, c=KEPT_COLOUR,
               edgecolors="black", linewidths=0.6, zorder=4, label="kept")
    if points.reverted:
        ax.scatter([e.id for e in points.reverted], [e.val_bpb for e in points.reverted], s=60,
                   facecolors="none", edgecolors=REVERTED_COLOUR, linewidths=1.4, zorder=4,
                   label="kept, then reverted (noise)")
    if kept:
        steps_x, steps_y, best = [], [], None
        for e in kept:
            best = e.val_bpb if best is None else min(best, e.val_bpb)
            steps_x.append(e.id)
            steps_y.append(best)
        last_id = max(e.id for e in summary.experiments)
        steps_x.append(last_id)
        steps_y.append(best)
        ax.step(steps_x, steps_y, where="post", color=BEST_COLOUR, linewidth=2, alpha=0.8,
                zorder=3, label="running best")
    for e in kept:
        label = "baseline" if summary.kinds[e.run_id] == RunKind.BASELINE \
            else _shorten(e.description)
        ax.annotate(label, (e.id, e.val_bpb), xytext=(6, 6), textcoords="offset points",
                    fontsize=8, rotation=25, color="#1e8449", zorder=5)
    if crashed:
        # y in axes coordinates: crashes have no val_bpb, so they sit along the top edge
        ax.scatter([e.id for e in crashed], [0.97] * len(crashed), marker="x", s=50,
                   c=CRASH_COLOUR, transform=ax.get_xaxis_transform(), zorder=5,
                   label="crash / timeout")

    totals = summary.totals
    ax.set_title(f"pairlab progress: {totals.runs} runs, {totals.kept} kept improvements")
    ax.set_xlabel("experiment #")
    ax.set_ylabel("validation bits per byte (lower is better)")
    ax.grid(True, alpha=0.25)
    if summary.experiments:
        # progress runs from the top left to the bottom right: the lower left stays empty
        ax.legend(loc="lower left", fontsize=9)
    else:
        ax.text(0.5, 0.5, "no finished runs yet", transform=ax.transAxes, ha="center")
    fig.tight_layout()
    fig.savefig(path, format="png")


def markdown(summary: Summary, png_name: str) -> str:
    """The report, section by section."""
    lines = ["# pairlab report", "", f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')}.", "",
             f"![val_bpb over experiments]({png_name})"]
    lines += (totals_lines(summary.totals) + val_bpb_lines(summary) + kept_lines(summary)
              + reverted_lines(summary) + note_lines(summary.notes)
              + promotion_lines(summary.promotions) + cost_lines(summary.totals)
              + time_lines(summary.totals))
    return "\n".join(lines) + "\n"


def totals_lines(t: Totals) -> list[str]:
    return ["", "## Totals", "",
            "| | |", "|---|---:|",
            f"| runs (all kinds) | {t.runs} |",
            f"| experiments (kept + reverted + discarded + crashed + vetoed + held) | "
            f"{t.experiments} |",
            f"| kept | {t.kept} |",
            f"| reverted (kept, then the best's re-runs showed noise) | {t.reverted} |",
            f"| discarded | {t.discarded} |",
            f"| crashed or timed out | {t.crashed} |",
            f"| vetoed | {t.vetoed} |",
            f"| held for a human or being confirmed | {t.held + t.judging} |",
            f"| noise repeats (measurements, counted apart) | {t.noise_repeats} |",
            f"| confirmation re-runs (counted apart) | {t.confirmations} |",
            f"| speculative runs not accepted (vetoed, restarted or waiting) | "
            f"{t.speculative} |",
            f"| promotion runs (larger depth, counted apart) | {t.promotion_runs} |",
            f"| proposals | {t.proposals} |",
            f"| human edits | {t.human_edits} |"]


def val_bpb_lines(summary: Summary) -> list[str]:
    """The baseline, the best, the gain and the noise band, and which runs are flagged."""
    lines = ["", "## val_bpb", ""]
    if summary.baseline is not None:
        lines.append(f"- Baseline: {summary.baseline.val_bpb:.6f} "
                     f"(commit `{summary.baseline.commit[:7]}`)")
    if summary.best is not None:
        lines.append(f"- Best: {summary.best.val_bpb:.6f} (commit `{summary.best.commit[:7]}`, "
                     f"experiment #{summary.best.id})")
    if summary.improvement is not None:
        percent = 100.0 * summary.improvement / summary.baseline.val_bpb
        lines.append(f"- Improvement: {summary.improvement:.6f} ({percent:.2f}%)")
    if summary.noise_band is not None:
        low, high = summary.noise_band
        lines.append(f"- Noise band: {low:.6f} – {high:.6f} (spread {high - low:.6f})")
    if summary.baseline is None and summary.best is None:
        lines.append("- No measured run yet.")
    flagged = sorted({e.integrity_label for e in summary.experiments
                      if e.val_bpb is not None and e.integrity_label})
    for label in flagged:
        lines.append(f"- Some runs are marked \"{label}\": see the README's "
                     "\"Metric integrity\" section")
    return lines


def kept_lines(summary: Summary) -> list[str]:
    """Each kept change with its gain over the one before and what the judge rested it on."""
    lines = ["", "## Kept changes", ""]
    kept = summary.kept_changes()
    if not kept:
        return lines + ["No change kept yet."]
    lines += ["| # | commit | val_bpb | change | n | best (n) | sigma | margin "
              "| decided by | description |",
              "|---:|---|---:|---:|---:|---:|---:|---:|---|---|"]
    previous = summary.baseline.val_bpb if summary.baseline is not None else None
    for e in kept:
        change = f"{e.val_bpb - previous:+.6f}" if previous is not None else ""
        label = f" ({e.integrity_label})" if e.integrity_label else ""
        lines.append(f"| {e.id} | `{e.commit[:7]}` | {e.val_bpb:.6f}{label} | {change} | "
                     f"{_measure_cells(e.measure)} | {e.decided_by} | "
                     f"{_cell(e.description)} |")
        previous = e.val_bpb
    return lines + ["", "n: runs of the change (val_bpb is their mean); best (n): the mean of "
                    "the best it was judged against and its runs; sigma: the run-to-run noise "
                    "pooled over every repeated commit; margin: the improvement it had to "
                    "clear (k standard errors of the difference; the sequential rule's keep "
                    "bound, with the drop bound at or under which it would have gone)."]


def note_lines(notes: list[tuple[str, list[tuple[int, str, str]]]]) -> list[str]:
    """Each steering note with the proposals it went into; nothing without notes."""
    if not notes:
        return []
    lines = ["", "## Steering notes", ""]
    for text, influenced in notes:
        went = "; ".join(f"#{i} {_cell(description)} ({outcome})"
                         for i, description, outcome in influenced) or "no draft yet"
        lines.append(f"- \"{_cell(text)}\" → {went}")
    return lines


def cost_lines(t: Totals) -> list[str]:
    u = t.usage
    return ["", "## Cost", "",
            f"- Agent cost: ${u.cost_usd:.2f} over {t.proposals} proposals",
            f"- Tokens: {u.input_tokens:,} input, {u.output_tokens:,} output, "
            f"{u.cache_read_tokens:,} cache read, {u.cache_write_tokens:,} cache write"]


def time_lines(t: Totals) -> list[str]:
    lines = ["", "## Time", "",
             f"- Training: {_duration(t.training_seconds)} over {t.runs} runs",
             f"- Runs end to end (startup, compile, eval included): {_duration(t.run_seconds)}"]
    if t.first_started_at is not None and t.last_finished_at is not None:
        lines.append(f"- Wall clock, first run start to last run end: "
                     f"{_duration(t.last_finished_at - t.first_started_at)}")
    return lines


def promotion_lines(promotions: list[Promotion]) -> list[str]:
    """Which kept changes transfer: each rung a change was trained at, with its baseline."""
    lines = ["", "## Promotions", ""]
    if not promotions:
        return lines + ["No kept change promoted to a larger depth yet (the ladder is in the "
                        "workspace's config: see the README's \"Promotion ladder\")."]
    lines += ["| # | change | depth | outcome | baseline (n) | change (n) | sigma | margin "
              "| runs | description |",
              "|---:|---|---|---|---:|---:|---:|---:|---|---|"]
    for p in promotions:
        m = p.measure
        if m is None:
            sides = "— | — | — | —"
        else:
            sigma = "—" if m.sigma is None else f"{m.sigma:.6f}"
            margin = "—" if m.margin is None else f"{m.margin:.6f}"
            sides = (f"{m.best_mean:.6f} ({m.n_best}) | {m.candidate_mean:.6f} "
                     f"({m.n_candidate}) | {sigma} | {margin}")
        runs = ", ".join(p.baseline_runs + p.change_runs)
        lines.append(f"| {p.experiment} | `{p.commit[:7]}` | {p.from_depth} → {p.depth} | "
                     f"{p.outcome} | {sides} | {runs} | {_cell(p.description)} |")
    lines += ["", "Each kept change is trained at the next depth of the ladder beside its "
              "baseline (its parent at that depth) and judged with the keep rule there: "
              "baseline and change are the means of their runs, sigma the noise pooled over "
              "the repeated runs at that depth; \"held\" means the win cleared the margin."]
    return lines


def reverted_lines(summary: Summary) -> list[str]:
    """Keeps that the best's later re-runs showed were noise, with both sets of figures."""
    reverted = [e for e in summary.experiments if e.status is RunStatus.REVERTED]
    if not reverted:
        return []
    lines = ["", "## Reverted keeps", "",
             "| # | commit | kept on: n | best (n) | sigma | margin | reverted on: n | "
             "best before (n) | sigma | drop bound | back to | description |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for e in reverted:
        r = e.revert
        again = "— | — | — | —" if r is None else _measure_cells(r.measure, bound="drop")
        back = "—" if r is None else f"`{r.back_to[:7]}`"
        lines.append(f"| {e.id} | `{e.commit[:7]}` | {_measure_cells(e.measure)} | {again} | "
                     f"{back} | {_cell(e.description)} |")
    return lines + ["", "Each was kept on the runs in the first figures; the best's re-runs "
                    "since, judged against the best it replaced (the second figures: n counts "
                    "every run of the change), fell to the sequential test's drop bound, so "
                    "the research branch went back to the commit in \"back to\". The change's "
                    "commit and runs stay in the journal."]


def _measure_cells(m: KeepMeasure | None, bound: str = "keep") -> str:
    """n | best (n) | sigma | margin, as the judge recorded them; blank where it did not
    (a journal from before the keep rule). The sequential rule's keep bound shows its drop
    bound beside it; `bound="drop"` shows the drop bound alone (a recheck)."""
    if m is None:
        return "— | — | — | —"
    sigma = "—" if m.sigma is None else f"{m.sigma:.6f}"
    if bound == "drop":
        margin = "—" if m.drop_margin is None else f"{m.drop_margin:.6f}"
    elif m.margin is None:
        margin = "—"
    elif m.drop_margin is None:
        margin = f"{m.margin:.6f}"
    else:
        margin = f"{m.margin:.6f} (drop {m.drop_margin:.6f})"
    return f"{m.n_candidate} | {m.best_mean:.6f} ({m.n_best}) | {sigma} | {margin}"


def _shorten(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= LABEL_CHARS else text[:LABEL_CHARS - 1] + "…"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"
