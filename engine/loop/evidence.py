"""What the judge rests on, read from the journal: every measured run grouped by commit, the
pooled noise, the runs of the best and of a candidate, the rules the settings pick. A part
the Coordinator holds; it keeps no state (the journal is the record), so every answer is
the journal's as of now."""

from __future__ import annotations

from engine.base.records import RunKind, RunStatus
from engine.journal import FAILED_STATUSES, Journal
from engine.loop import judge, keep_rule, keep_stats
from engine.loop.planner import Need


class Evidence:
    def __init__(self, journal: Journal, settings):
        self.journal = journal
        self.settings = settings

    def rules(self) -> judge.JudgeRules:
        s = self.settings
        return judge.JudgeRules(keep=keep_rule.settings_for(
            s.keep_rule, k=s.keep_k, max_candidate_runs=s.max_candidate_runs,
            min_best_runs=s.min_best_runs, best_rerun_every=s.best_rerun_every),
            large_win_sigmas=s.large_win_sigmas, large_win_fraction=s.large_win_fraction)

    def run_groups(self) -> dict[str, list[float]]:
        """Every measured val_bpb, grouped by commit in run order: the runs of one commit
        are repeats of each other (the baseline and its repeats, an experiment and its
        confirmations, the best and its re-runs)."""
        # a vetoed speculative run measured a change nobody kept, nor will re-run
        failed = {s.value for s in FAILED_STATUSES} | {RunStatus.VETOED.value}
        groups: dict[str, list[float]] = {}
        for r in self.journal.run_rows():
            if r["val_bpb"] is None or r["status"] in failed or r["kind"] == RunKind.PROMOTION:
                continue                  # a promotion run is another scale: its own noise
            # a settled experiment's row holds the mean of its runs; its own run is kept apart
            value = r["metrics"].get("first_val_bpb", r["val_bpb"]) \
                if r["kind"] == RunKind.EXPERIMENT else r["val_bpb"]
            groups.setdefault(r["commit_sha"], []).append(value)
        return groups

    def noise(self) -> keep_stats.Noise:
        return keep_stats.pooled_noise(self.run_groups().values())

    def candidate_runs(self, commit: str) -> list[float]:
        """The measured runs of an experiment's commit: its first run, then its re-runs."""
        return self.run_groups().get(commit, [])

    def best_runs(self) -> list[float]:
        """Every run of the best commit: the runs it was kept on and its re-runs since."""
        best = self.journal.best()
        return self.run_groups().get(best.commit) or [best.val_bpb]

    def runs_since_best_ran(self) -> int:
        """Candidate runs judged against the best since the best itself last ran."""
        best = self.journal.best()
        count = 0
        for r in self.journal.run_rows():
            if best is not None and r["commit_sha"] == best.commit:
                count = 0
            elif r["kind"] in (RunKind.EXPERIMENT, RunKind.RERUN) and r["val_bpb"] is not None:
                count += 1
        return count

    def need_of(self, commit: str) -> Need:
        """Which run a restored, undecided experiment waits for: the best's or its own."""
        verdict = judge.judge(self.candidate_runs(commit), self.best_runs(), self.noise(),
                              self.rules())
        return Need(verdict.rerun or Need.CANDIDATE)

