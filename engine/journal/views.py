"""What is read out of the journal whole: the totals, the summary line, autoresearch's
results.tsv and the history the agent is told. A mixin of Journal (engine/journal/book.py).
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

from engine.base.records import (UNVERIFIED_LABEL, DecisionKind, HistoryItem, RunKind, RunStatus,
                                 Usage)
from engine.journal.runs import EXPERIMENT_SELECT, RUNNING

# autoresearch's results.tsv knows only keep, discard and crash
TSV_STATUS = {
    RunStatus.KEEP: "keep",
    RunStatus.DISCARD: "discard",
    RunStatus.CRASH: "crash",
    RunStatus.TIMEOUT: "crash",
    RunStatus.INTERRUPTED: "crash",
    RunStatus.KILLED: "crash",
    RunStatus.REVERTED: "discard",     # kept, then shown to be noise: the branch went back
}
REVERTED_NOTE = "[kept, then reverted: its re-runs showed noise]"
TSV_HEADER = "commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"


@dataclass
class Totals:
    """Counts and sums over the whole journal, for the status line and the report."""

    runs: int = 0                    # finished runs of every kind
    experiments: int = 0             # kept, reverted, discarded, crashed, vetoed, held, judging
    kept: int = 0                    # experiments kept (the baseline is not one)
    reverted: int = 0                # kept, then reverted by the best's re-runs
    discarded: int = 0
    crashed: int = 0                 # crash, timeout, killed (an interrupted run trains again)
    vetoed: int = 0                  # proposals vetoed before they trained
    held: int = 0                    # unusually large wins waiting for a human
    judging: int = 0                 # trained, waiting for a noise floor or a re-run
    noise_repeats: int = 0           # baseline repeats that measure the noise floor
    confirmations: int = 0           # re-runs that confirm a win
    speculative: int = 0             # runs trained before a decision and never accepted
    promotion_runs: int = 0          # runs of kept changes at a larger depth (the ladder)
    proposals: int = 0
    human_edits: int = 0             # edit decisions
    usage: Usage = field(default_factory=Usage)
    training_seconds: float = 0.0    # summed over finished runs
    run_seconds: float = 0.0         # summed total_seconds over finished runs
    first_started_at: float | None = None
    last_finished_at: float | None = None


class JournalViews:
    """Read-outs over the whole journal (a mixin of Journal)."""

    # ---- what the agent is told ------------------------------------------------------

    def history(self, limit: int = 20) -> list[HistoryItem]:
        """The latest `limit` outcomes, oldest first: trained proposals, the baseline and vetoes.

        Each run carries its delta to the best before it, who decided, and the human's edit.
        """
        items: list[tuple[float, HistoryItem]] = []
        best_before: float | None = None
        rows = self._read(
            EXPERIMENT_SELECT + " WHERE r.status != ? AND r.kind NOT IN ('noise', 'promotion')"
            " ORDER BY r.experiment", (RUNNING,))
        for r in rows:
            val_bpb = r["val_bpb"]
            delta = (val_bpb - best_before
                     if val_bpb is not None and best_before is not None else None)
            items.append((r["finished_at"] or r["started_at"], HistoryItem(
                description=r["description"], hypothesis=r["hypothesis"] or "",
                status=r["status"], val_bpb=val_bpb, delta=delta,
                decided_by=r["decided_by"] or r["kind"],
                human_edit_diff=r["human_edit_diff"] or "", diff=r["diff"] or "",
                message=r["message"])))
            if r["status"] == RunStatus.KEEP.value and val_bpb is not None:
                best_before = val_bpb
        # a held win a human discarded is told as a veto too: its reason is the human's
        vetoes = self._read(
            "SELECT p.description, p.hypothesis, p.diff, d.who, d.reason, d.at"
            " FROM decisions d JOIN proposals p ON p.id = d.proposal_id WHERE d.kind = ?"
            " UNION ALL SELECT p.description, p.hypothesis, p.diff, s.who, s.reason, s.at"
            " FROM settlements s JOIN proposals p ON p.id = s.proposal_id WHERE s.outcome = ?",
            (DecisionKind.VETO.value, RunStatus.DISCARD.value))
        for v in vetoes:
            items.append((v["at"], HistoryItem(
                description=v["description"], hypothesis=v["hypothesis"], status="vetoed",
                decided_by=v["who"], veto_reason=v["reason"], diff=v["diff"])))
        items.sort(key=lambda item: item[0])
        return [item for _, item in items[-limit:]] if limit > 0 else []

    # ---- totals and results.tsv ------------------------------------------------------

    def totals(self) -> Totals:
        finished = self.run_rows()
        totals = Totals(runs=len(finished))
        outcome = {RunStatus.KEEP: "kept", RunStatus.REVERTED: "reverted",
                   RunStatus.DISCARD: "discarded",
                   RunStatus.HELD: "held", RunStatus.CONFIRMING: "judging",
                   RunStatus.CRASH: "crashed", RunStatus.TIMEOUT: "crashed",
                   RunStatus.KILLED: "crashed"}
        for r in finished:
            status = RunStatus(r["status"])
            if r["kind"] == RunKind.NOISE:
                totals.noise_repeats += 1
            elif r["kind"] == RunKind.RERUN:
                totals.confirmations += 1
            elif r["kind"] == RunKind.SPECULATIVE:
                totals.speculative += 1
            elif r["kind"] == RunKind.PROMOTION:
                totals.promotion_runs += 1
            elif r["kind"] == RunKind.EXPERIMENT and status in outcome:
                setattr(totals, outcome[status], getattr(totals, outcome[status]) + 1)
            totals.training_seconds += r["training_seconds"]
            totals.run_seconds += r["total_seconds"]
        if finished:
            totals.first_started_at = min(r["started_at"] for r in finished)
            totals.last_finished_at = max(r["finished_at"] for r in finished)
        usage = self._read(
            "SELECT COUNT(*), COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0),"
            " COALESCE(SUM(cache_read_tokens), 0), COALESCE(SUM(cache_write_tokens), 0),"
            " COALESCE(SUM(cost_usd), 0.0) FROM proposals")[0]
        totals.proposals = usage[0]
        totals.usage = Usage(input_tokens=usage[1], output_tokens=usage[2],
                             cache_read_tokens=usage[3], cache_write_tokens=usage[4],
                             cost_usd=usage[5])
        # a held win that a human vetoed trained: a settlement, counted as discarded
        totals.vetoed = self._read("SELECT COUNT(*) FROM decisions WHERE kind = ?",
                                   (DecisionKind.VETO.value,))[0][0]
        totals.experiments = (totals.kept + totals.reverted + totals.discarded + totals.crashed
                              + totals.vetoed + totals.held + totals.judging)
        totals.human_edits = self._read("SELECT COUNT(*) FROM decisions WHERE kind = ?",
                                        (DecisionKind.EDIT.value,))[0][0]
        return totals

    def summary_line(self) -> str:
        """'3 experiments: 1 kept, 1 discarded, 0 crashed, 1 vetoed; 2 noise repeats, 1
        confirmation re-runs': the measurements counted apart, when there are any."""
        t = self.totals()
        held = f", {t.held} held" if t.held else ""
        judging = f", {t.judging} being confirmed" if t.judging else ""
        reverted = f", {t.reverted} reverted" if t.reverted else ""     # kept, then noise
        line = (f"{t.experiments} experiments: {t.kept} kept{reverted}, {t.discarded} "
                f"discarded, {t.crashed} crashed, {t.vetoed} vetoed{held}{judging}")
        if t.noise_repeats or t.confirmations:
            line += (f"; {t.noise_repeats} noise repeats, {t.confirmations} confirmation "
                     f"re-runs")
        if t.speculative:
            line += f"; {t.speculative} speculative runs not accepted"
        if t.promotion_runs:
            line += f"; {t.promotion_runs} promotion runs"
        return line

    def results_tsv(self) -> str:
        """autoresearch's results.tsv: the baseline and every experiment, in order.

        Noise repeats and confirmation re-runs are measurements, not experiments, a run the
        engine's own stop interrupted trains again, and a win being confirmed or held for a
        human has no outcome yet: they stay in the journal and out of the file
        autoresearch's tools read.
        """
        lines = [TSV_HEADER]
        kinds = {r["id"]: r["kind"] for r in self._read("SELECT id, kind FROM runs")}
        for e in self.experiments():
            if kinds[e.run_id] not in (RunKind.BASELINE, RunKind.EXPERIMENT) \
                    or e.status not in TSV_STATUS \
                    or e.status is RunStatus.INTERRUPTED:
                continue                  # interrupted, or undecided (confirming, held)
            status = TSV_STATUS[e.status]
            crashed = status == "crash" or e.val_bpb is None
            val_bpb = 0.0 if crashed else e.val_bpb
            memory_gb = 0.0 if crashed else e.memory_gb
            description = re.sub(r"[\t\r\n]+", " ", e.description).strip()
            if e.val_bpb is not None and not e.metric_verified:
                description = f"{description} [{UNVERIFIED_LABEL}]"
            if e.status is RunStatus.REVERTED:
                description = f"{description} {REVERTED_NOTE}"
            lines.append(f"{e.commit[:7]}\t{val_bpb:.6f}\t{memory_gb:.1f}\t{status}\t"
                         f"{description}\n")
        return "".join(lines)

    def write_results_tsv(self, path: Path) -> Path:
        """Rewrite results.tsv from the journal atomically, so it always matches it."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(self.results_tsv(), encoding="utf-8")
        os.replace(tmp, path)
        return path
