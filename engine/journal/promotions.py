"""The journal's promotion table: every rung a kept change was trained at (engine/loop/promotion.py).

A mixin of Journal (engine/journal/book.py): it uses the journal's one connection and its
one-transaction writes. A promotion's runs are ordinary rows of `runs` (kind "promotion"),
linked to it by `promotion_runs` with the side they trained.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from engine.base.records import KeepMeasure, PromotionRecord, RunResult, RunStatus

PROMOTION_SCHEMA = """
CREATE TABLE IF NOT EXISTS promotions (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES runs(id),  -- the kept experiment's run
    commit_sha TEXT NOT NULL,                  -- the change
    parent_sha TEXT NOT NULL,                  -- its baseline at the same scale
    from_depth INTEGER NOT NULL,
    depth INTEGER NOT NULL,                    -- the rung both sides train at
    held INTEGER,                              -- NULL while measured, then 1 or 0
    reason TEXT NOT NULL DEFAULT '',
    n_best INTEGER, best_mean REAL,            -- the keep rule's figures: baseline side
    n_candidate INTEGER, candidate_mean REAL,  -- ...the change's side
    sigma REAL, noise_dof INTEGER, improvement REAL, margin REAL,
    started_at REAL NOT NULL,
    decided_at REAL,
    UNIQUE (run_id, depth)
);
CREATE TABLE IF NOT EXISTS promotion_runs (
    run_id TEXT PRIMARY KEY REFERENCES runs(id),
    promotion_id INTEGER NOT NULL REFERENCES promotions(id),
    side TEXT NOT NULL                         -- baseline | change
);
"""

MEASURED = (RunStatus.KEEP.value, RunStatus.DISCARD.value)


@dataclass
class Promotion:
    """A promotion as the report and the app show it."""

    id: int
    run_id: str
    experiment: int                  # the kept experiment's number
    description: str
    commit: str
    parent: str
    from_depth: int
    depth: int
    held: bool | None                # None: still being measured
    reason: str
    measure: KeepMeasure | None      # n/mean of both sides, sigma, margin; None until judged
    baseline_runs: tuple[str, ...]   # run ids, in run order
    change_runs: tuple[str, ...]

    @property
    def outcome(self) -> str:
        if self.held is False and self.measure is None:
            return "run failed"              # a side crashed at this depth: no verdict
        return {True: "held", False: "did not hold", None: "being measured"}[self.held]


class PromotionJournal:
    def open_promotion(self, run_id: str, commit: str, parent: str, from_depth: int,
                       depth: int) -> int:
        """Record that a kept change starts its promotion to `depth`; returns its id."""
        cursor = self._write((
            "INSERT INTO promotions (run_id, commit_sha, parent_sha, from_depth, depth,"
            " started_at) VALUES (?, ?, ?, ?, ?, ?)",
            (run_id, commit, parent, from_depth, depth, time.time())))
        return cursor.lastrowid

    def link_promotion_run(self, run_id: str, promotion_id: int, side: str) -> None:
        self._write(("INSERT INTO promotion_runs (run_id, promotion_id, side) VALUES (?, ?, ?)",
                     (run_id, promotion_id, side)))

    def finish_promotion_run(self, result: RunResult, promotion_id: int,
                             held: bool | None = None, reason: str = "",
                             measure: KeepMeasure | None = None):
        """Store a promotion run's outcome in one transaction with the promotion's figures
        (`measure`, also while it is still measured) and its end (`held`: True or False,
        also False when a side failed to train); returns the run's experiments row."""
        now = time.time()
        statements = [self._run_update(result, now)]
        if measure is not None or held is not None:
            m = measure
            statements.append((
                "UPDATE promotions SET held = ?, reason = ?, n_best = ?, best_mean = ?,"
                " n_candidate = ?, candidate_mean = ?, sigma = ?, noise_dof = ?,"
                " improvement = ?, margin = ?, decided_at = ? WHERE id = ?",
                (None if held is None else int(held), reason, *(
                    (m.n_best, m.best_mean, m.n_candidate, m.candidate_mean, m.sigma,
                     m.noise_dof, m.improvement, m.margin) if m else (None,) * 8),
                 None if held is None else now, promotion_id)))
        with self._lock:
            self._write(*statements)
            return self.get_run(result.run_id)

    def promotion_records(self) -> list[PromotionRecord]:
        """Every promotion with the val_bpb its measured runs produced, for the ladder."""
        values: dict[tuple[int, str], list[float]] = {}
        for r in self._read(
                "SELECT l.promotion_id, l.side, r.val_bpb FROM promotion_runs l"
                " JOIN runs r ON r.id = l.run_id WHERE r.status IN (?, ?)"
                " AND r.val_bpb IS NOT NULL ORDER BY r.experiment", MEASURED):
            values.setdefault((r["promotion_id"], r["side"]), []).append(r["val_bpb"])
        return [PromotionRecord(
            id=p["id"], run_id=p["run_id"], depth=p["depth"],
            baseline_runs=tuple(values.get((p["id"], "baseline"), ())),
            change_runs=tuple(values.get((p["id"], "change"), ())),
            held=None if p["held"] is None else bool(p["held"]))
            for p in self._read("SELECT * FROM promotions ORDER BY id")]

    def promotions(self) -> list[Promotion]:
        """Every promotion, in the order they started, with its runs and figures."""
        sides: dict[tuple[int, str], list[str]] = {}
        for r in self._read("SELECT l.promotion_id, l.side, l.run_id FROM promotion_runs l"
                            " JOIN runs r ON r.id = l.run_id ORDER BY r.experiment"):
            sides.setdefault((r["promotion_id"], r["side"]), []).append(r["run_id"])
        rows = self._read(
            "SELECT p.*, r.experiment, r.description FROM promotions p"
            " JOIN runs r ON r.id = p.run_id ORDER BY p.id")
        return [Promotion(
            id=p["id"], run_id=p["run_id"], experiment=p["experiment"],
            description=p["description"], commit=p["commit_sha"], parent=p["parent_sha"],
            from_depth=p["from_depth"], depth=p["depth"],
            held=None if p["held"] is None else bool(p["held"]), reason=p["reason"],
            measure=None if p["n_best"] is None else KeepMeasure(
                n_best=p["n_best"], best_mean=p["best_mean"], n_candidate=p["n_candidate"],
                candidate_mean=p["candidate_mean"], sigma=p["sigma"],
                noise_dof=p["noise_dof"], improvement=p["improvement"], margin=p["margin"]),
            baseline_runs=tuple(sides.get((p["id"], "baseline"), ())),
            change_runs=tuple(sides.get((p["id"], "change"), ())))
            for p in rows]
