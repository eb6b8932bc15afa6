"""The journal's runs: started, finished (with what follows from an outcome, in the same
transaction), settled, read back as experiments rows. A mixin of Journal
(engine/journal/book.py): it uses the journal's one connection and its one-transaction writes
(engine/journal/db.py).
"""

from __future__ import annotations

import json
import sqlite3
import time

from engine.base.records import (Decision, Experiment, KeepMeasure, PromotionRung, ProposalState,
                                 Revert, RunKind, RunResult, RunStatus)
from engine.journal.db import dumps, redact

# speculative: a proposal's run before a human accepted it; it becomes an experiment then.
# promotion: a kept change (or its parent) trained at a larger depth (the ladder)
RUN_KINDS = tuple(RunKind)
RUNNING = "running"
FAILED_STATUSES = (RunStatus.CRASH, RunStatus.TIMEOUT, RunStatus.INTERRUPTED, RunStatus.KILLED)
INTERRUPTED_MESSAGE = "The engine stopped while this run was training; it will be run again."


class RunJournal:
    """Runs and the judge's figures on them (a mixin of Journal)."""

    def start_run(self, run_id: str, commit: str, kind: str, *, proposal_id: int | None = None,
                  description: str = "", log_path: str = "", experiment: int | None = None,
                  started_at: float | None = None) -> int:
        """Record a run as 'running' (its proposal goes to training); returns its experiment number.

        Experiment numbers count every run from 1 unless `experiment` is given. An empty
        description is taken from the proposal, or is the run kind.
        """
        if kind not in RUN_KINDS:
            raise ValueError(f"run kind must be one of {', '.join(RUN_KINDS)}, not {kind!r}")
        with self._lock:
            if experiment is None:
                experiment = self._read("SELECT COALESCE(MAX(experiment), 0) + 1 FROM runs")[0][0]
            if not description and proposal_id is not None:
                proposal = self.get_proposal(proposal_id)
                description = proposal.description if proposal else ""
            statements = [(
                "INSERT INTO runs (id, experiment, proposal_id, commit_sha, kind, description,"
                " status, log_path, started_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, experiment, proposal_id, commit, kind, redact(description or kind),
                 RUNNING, redact(log_path), time.time() if started_at is None else started_at))]
            if proposal_id is not None and kind != RunKind.SPECULATIVE:  # waits for review
                statements.append(("UPDATE proposals SET state = ? WHERE id = ?",
                                   (ProposalState.TRAINING.value, proposal_id)))
            self._write(*statements)
        return experiment

    def accept_speculative(self, run_id: str, proposal_state: ProposalState) -> Experiment:
        """A human accepted the proposal a speculative run trains (or trained): from now on
        the run is its experiment, with the time it already had."""
        self._write(("UPDATE runs SET kind = 'experiment' WHERE id = ? AND kind = 'speculative'",
                     (run_id,)),
                    ("UPDATE proposals SET state = ? WHERE id ="
                     " (SELECT proposal_id FROM runs WHERE id = ?)",
                     (ProposalState(proposal_state).value, run_id)))
        return self.get_run(run_id)

    def set_run_status(self, run_id: str, status: RunStatus, message: str) -> Experiment:
        """A finished speculative run's fate once a human decided against it (or the best
        moved under it): vetoed, or interrupted to train again."""
        self._write(("UPDATE runs SET status = ?, message = ? WHERE id = ?",
                     (RunStatus(status).value, redact(message), run_id)))
        return self.get_run(run_id)

    def finish_run(self, result: RunResult, finished_at: float | None = None, *,
                   proposal_state: ProposalState | None = None,
                   settles: RunResult | None = None, state: dict | None = None,
                   measure: KeepMeasure | None = None,
                   measured_run: str | None = None) -> Experiment:
        """Store a run's outcome and return its experiments row, in one transaction with
        what follows from it: its proposal's new state (default: done, for an experiment),
        the final outcome of the experiment it confirmed (`settles`: status, val_bpb,
        message and metrics of that experiment's run), the judge's figures for the
        experiment judged (`measure`: of `measured_run`, default `settles`, else this run), and
        session state values."""
        now = time.time() if finished_at is None else finished_at
        with self._lock:
            rows = self._read("SELECT kind, proposal_id FROM runs WHERE id = ?",
                              (result.run_id,))
            if not rows:
                raise KeyError(f"no run {result.run_id!r} in the journal; start_run it first")
            kind, proposal_id = rows[0]["kind"], rows[0]["proposal_id"]
            if proposal_state is None and kind == RunKind.EXPERIMENT:
                proposal_state = ProposalState.DONE
            statements = [self._run_update(result, now)]
            if settles is not None:
                statements.append(self._run_update(settles, now))
            if measure is not None:
                statements.append(self._measure_upsert(
                    measured_run or (settles or result).run_id, measure))
            if proposal_state is not None and proposal_id is not None:
                statements.append(("UPDATE proposals SET state = ? WHERE id = ?",
                                   (ProposalState(proposal_state).value, proposal_id)))
            statements += [self._state_upsert(k, v) for k, v in (state or {}).items()]
            self._write(*statements)
            return self.get_run(result.run_id)

    def record_measure(self, run_id: str, measure: KeepMeasure) -> None:
        """The judge's figures for an experiment still being confirmed (no run finished)."""
        self._write(self._measure_upsert(run_id, measure))

    @staticmethod
    def _measure_upsert(run_id: str, m: KeepMeasure) -> tuple[str, tuple]:
        return ("INSERT OR REPLACE INTO measures (run_id, n_best, best_mean, n_candidate,"
                " candidate_mean, sigma, noise_dof, improvement, margin, drop_margin)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, m.n_best, m.best_mean, m.n_candidate, m.candidate_mean, m.sigma,
                 m.noise_dof, m.improvement, m.margin, m.drop_margin))

    def revert_keep(self, revert_of: str, revert: Revert) -> Experiment:
        """A kept experiment (run `revert_of`) the best's re-runs showed was noise: its run
        becomes reverted and the recheck is recorded, in one transaction; the best is then
        the keep before it (best()). The caller moves the research branch there."""
        revert.at = revert.at or time.time()
        m = revert.measure
        with self._lock:
            cursor = self._write(
                ("UPDATE runs SET status = ? WHERE id = ? AND status = ?",
                 (RunStatus.REVERTED.value, revert_of, RunStatus.KEEP.value)),
                ("INSERT INTO reverts (run_id, by_run, back_to, n_best, best_mean, n_candidate,"
                 " candidate_mean, sigma, noise_dof, improvement, margin, drop_margin, reason,"
                 " at) SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?"
                 " WHERE changes() = 1",
                 (revert_of, revert.run_id, revert.back_to, m.n_best, m.best_mean,
                  m.n_candidate, m.candidate_mean, m.sigma, m.noise_dof, m.improvement,
                  m.margin, m.drop_margin, redact(revert.reason), revert.at)))
            if cursor.rowcount != 1:
                raise ValueError(f"run {revert_of!r} is not a kept run: nothing to revert")
            return self.get_run(revert_of)

    def settle_held(self, run_id: str, status: RunStatus, decision: Decision) -> Experiment:
        """A human's word on a held win: its run becomes keep or discard, its proposal done,
        and the settlement is recorded (apart from the decisions: the proposal had its one
        decision before it trained), in one transaction."""
        decision.at = decision.at or time.time()
        with self._lock:
            self._write(
                ("UPDATE runs SET status = ?, finished_at = ? WHERE id = ? AND status = ?",
                 (RunStatus(status).value, decision.at, run_id, RunStatus.HELD.value)),
                ("UPDATE proposals SET state = ? WHERE id = ?",
                 (ProposalState.DONE.value, decision.proposal_id)),
                ("INSERT INTO settlements (run_id, proposal_id, outcome, who, reason, at)"
                 " VALUES (?, ?, ?, ?, ?, ?)",
                 (run_id, decision.proposal_id, RunStatus(status).value, redact(decision.who),
                  redact(decision.reason), decision.at)))
            return self.get_run(run_id)

    def _run_update(self, result: RunResult, finished_at: float) -> tuple[str, tuple]:
        return ("UPDATE runs SET status = ?, val_bpb = ?, memory_gb = ?, training_seconds = ?,"
                " total_seconds = ?, num_steps = ?, total_tokens = ?, num_params = ?,"
                " device = ?, message = ?, log_path = COALESCE(NULLIF(?, ''), log_path),"
                " metrics = ?, finished_at = ?, confined = ?, metric_verified = ? WHERE id = ?",
                (RunStatus(result.status).value, result.val_bpb, result.memory_gb,
                 result.training_seconds, result.total_seconds, result.num_steps,
                 result.total_tokens, result.num_params, redact(result.device),
                 redact(result.message), redact(result.log_path), dumps(result.metrics),
                 finished_at, int(result.confined), int(result.metric_verified),
                 result.run_id))

    def interrupted_runs(self) -> list[Experiment]:
        """Mark runs left 'running' by a crashed engine as interrupted and return them.

        Call once at startup. Their experiments' proposals go back to accepted, so
        `pending_proposals()` re-queues them; the planner schedules the baseline, noise
        repeats and confirmations again from what the journal lacks.
        """
        with self._lock:
            rows = self._read("SELECT id FROM runs WHERE status = ? ORDER BY experiment",
                              (RUNNING,))
            if not rows:
                return []
            self._write(
                ("UPDATE proposals SET state = ? WHERE id IN"
                 " (SELECT proposal_id FROM runs WHERE status = ? AND kind = 'experiment')",
                 (ProposalState.ACCEPTED.value, RUNNING)),
                ("UPDATE runs SET status = ?, message = ?, finished_at = ? WHERE status = ?",
                 (RunStatus.INTERRUPTED.value, INTERRUPTED_MESSAGE, time.time(), RUNNING)))
            return [self.get_run(r["id"]) for r in rows]

    def get_run(self, run_id: str) -> Experiment | None:
        """One run as an experiments row; a run still training has status "running"."""
        rows = self._read(EXPERIMENT_SELECT + " WHERE r.id = ?", (run_id,))
        return row_experiment(rows[0]) if rows else None

    def experiments(self) -> list[Experiment]:
        """Finished runs of every kind, in experiment order, for the experiments table."""
        rows = self._read(EXPERIMENT_SELECT + " WHERE r.status != ? ORDER BY r.experiment",
                          (RUNNING,))
        return [row_experiment(r) for r in rows]

    def run_rows(self) -> list[dict]:
        """Finished runs as plain dicts with every column (kind, metrics, seconds ...): fresh
        copies of what was read after the last write."""
        def read():
            rows = self._read("SELECT * FROM runs WHERE status != ? ORDER BY experiment",
                              (RUNNING,))
            return [dict(r, metrics=json.loads(r["metrics"])) for r in rows]
        return [dict(r, metrics=dict(r["metrics"])) for r in self._read_cached("run_rows", read)]

    def best(self) -> Experiment | None:
        """The last run kept (a held win is kept when a human accepts it, after later
        experiments): the commit the research branch stands on."""
        rows = self._read(EXPERIMENT_SELECT + " WHERE r.status = ? AND r.val_bpb IS NOT NULL"
                          " AND r.kind IN ('baseline', 'experiment')"
                          " ORDER BY r.finished_at DESC, r.experiment DESC LIMIT 1",
                          (RunStatus.KEEP.value,))
        return row_experiment(rows[0]) if rows else None

    def previous_best(self) -> Experiment | None:
        """The kept run the best replaced: the best again should the best be reverted."""
        rows = self._read(EXPERIMENT_SELECT + " WHERE r.status = ? AND r.val_bpb IS NOT NULL"
                          " AND r.kind IN ('baseline', 'experiment')"
                          " ORDER BY r.finished_at DESC, r.experiment DESC LIMIT 1 OFFSET 1",
                          (RunStatus.KEEP.value,))
        return row_experiment(rows[0]) if rows else None

    def run_count(self) -> int:
        """Runs of every kind and state, to name the next one."""
        return self._read("SELECT COUNT(*) FROM runs")[0][0]

    def experiment_count(self) -> int:
        """Experiments that reached an outcome, for --max-experiments (interrupted ones train again)."""
        return self._read("SELECT COUNT(*) FROM runs WHERE kind = 'experiment'"
                          " AND status NOT IN (?, ?)",
                          (RUNNING, RunStatus.INTERRUPTED.value))[0][0]


EXPERIMENT_SELECT = """
SELECT r.*, p.hypothesis AS hypothesis, p.diff AS diff,
    (SELECT d.who FROM decisions d WHERE d.proposal_id = r.proposal_id AND d.kind != 'veto'
        ORDER BY d.id DESC LIMIT 1) AS decided_by,
    (SELECT d.edited_diff FROM decisions d WHERE d.proposal_id = r.proposal_id AND d.kind = 'edit'
        ORDER BY d.id DESC LIMIT 1) AS human_edit_diff,
    m.n_best AS m_n_best, m.best_mean AS m_best_mean, m.n_candidate AS m_n_candidate,
    m.candidate_mean AS m_candidate_mean, m.sigma AS m_sigma, m.noise_dof AS m_noise_dof,
    m.improvement AS m_improvement, m.margin AS m_margin, m.drop_margin AS m_drop_margin,
    v.by_run AS v_by_run, v.back_to AS v_back_to, v.n_best AS v_n_best,
    v.best_mean AS v_best_mean, v.n_candidate AS v_n_candidate,
    v.candidate_mean AS v_candidate_mean, v.sigma AS v_sigma, v.noise_dof AS v_noise_dof,
    v.improvement AS v_improvement, v.margin AS v_margin, v.drop_margin AS v_drop_margin,
    v.reason AS v_reason, v.at AS v_at,
    (SELECT json_group_array(json_array(q.depth, q.held)) FROM
        (SELECT depth, held FROM promotions WHERE run_id = r.id ORDER BY depth) q) AS rungs
FROM runs r LEFT JOIN proposals p ON p.id = r.proposal_id
    LEFT JOIN measures m ON m.run_id = r.id
    LEFT JOIN reverts v ON v.run_id = r.id"""


def row_experiment(r: sqlite3.Row) -> Experiment:
    # a baseline or noise repeat has no decision: its kind says who started it
    return Experiment(
        id=r["experiment"], proposal_id=r["proposal_id"], commit=r["commit_sha"],
        status=RunStatus(r["status"]) if r["status"] != RUNNING else RUNNING,
        val_bpb=r["val_bpb"], memory_gb=r["memory_gb"], description=r["description"],
        decided_by=r["decided_by"] or r["kind"], run_id=r["id"], started_at=r["started_at"],
        finished_at=r["finished_at"], log_path=r["log_path"], kind=r["kind"],
        speculative=r["kind"] == RunKind.SPECULATIVE, message=r["message"],
        confined=bool(r["confined"]),
        metric_verified=bool(r["metric_verified"]),
        promotions=[PromotionRung(depth, None if held is None else bool(held))
                    for depth, held in json.loads(r["rungs"])],
        measure=None if r["m_n_best"] is None else measure_of_row(r, "m_"),
        revert=None if r["v_by_run"] is None else
        Revert(measure=measure_of_row(r, "v_"), back_to=r["v_back_to"], run_id=r["v_by_run"],
               reason=r["v_reason"], at=r["v_at"]))


def measure_of_row(r: sqlite3.Row, prefix: str) -> KeepMeasure:
    return KeepMeasure(**{name: r[prefix + name] for name in (
        "n_best", "best_mean", "n_candidate", "candidate_mean", "sigma", "noise_dof",
        "improvement", "margin", "drop_margin")})
