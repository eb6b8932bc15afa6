"""How often does a keep rule keep noise, how often does it find a real win, and how much
true gain does it buy with a session's runs?

Stand-in runs: val_bpb = the commit's true value + Gaussian noise of sigma 1 (the figures are
in units of sigma; true values sit at 400 sigma, about val_bpb 2.0 with sigma 0.005, so the
judge's "more than 5% of val_bpb" hold never fires on these wins). Four rules, all seeded
the same way:

- the old rule, the reference: a copy of the rule engine/loop/judge.py had before the keep rule,
  kept here only for comparison. The best is the baseline's first run (then the value a
  change was kept at); the noise floor is the spread (max - min) of the baseline and its 2
  repeats; a candidate better than the best by less than the floor is re-run once and the
  mean of its two runs must beat the best.
- today's keep rule ("margin"), the sequential rule and the debiased rule (the sequential
  test against a best whose winning run is discounted), as the engine runs them:
  engine/loop/judge.judge (engine/loop/keep_rule.py and the large-win hold), fed as the coordinator
  feeds it: means of all runs, sigma pooled over every repeated commit, confirmations
  re-running the best or the candidate as the judge asks, the best re-run every
  `best_rerun_every` candidate runs (keep_rule.should_rerun_best). After each run of the
  best, keep_rule.recheck: a keep it reverts gives the best back to its predecessor, and a
  candidate being confirmed on the reverted best trains again on the restored one, as the
  coordinator does. A held win counts as kept (the human accepts it).

Part 1 judges one candidate against a fresh baseline (3 runs), for true improvements of 0, 1,
2 and 3 sigma. Part 2 runs whole sessions at equal compute (the same number of runs for
every rule): candidates that are a 2 sigma win (30%), no change (40%) or 2 sigma worse
(30%), the best advancing on every keep; in four scenarios: the main one, the machine
drifting either way (every run 0.02 sigma lower, or higher, than the one before) and a
noise 3 times wider (sigma 3: the wins are 2/3 of it). A bound closes the main scenario:
the sequential rule judging every candidate against the best's true value, as if the best
had been measured 50 times for free. No rule has that; the distance to it is what measuring
the best costs.

    python bench/keep_rule.py [--quick] [--trials 20000] [--sessions 2000] [--runs 60]

Targets in the main scenario: false keeps <= 5%, wins found >= 80%, and a true gain at
least the old rule's; the bench ends with the targets each rule met or missed there.
"""

from __future__ import annotations

import argparse
import random
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.loop.judge import JudgeRules, Verdict, judge  # noqa: E402
from engine.loop.keep_rule import (DEBIASED, SEQUENTIAL, Action, KeepRuleSettings,  # noqa: E402
                                   recheck, should_rerun_best)
from engine.loop.keep_stats import pooled_noise  # noqa: E402

BASELINE_RUNS = 3          # the baseline and its 2 noise repeats, as `make run` does today
MIX = ((2.0, 0.3), (0.0, 0.4), (-2.0, 0.3))   # (true improvement, share)
BASE = 400.0               # the baseline's true value
ORACLE_RUNS = 50          # the bound's best: as if measured 50 times without drawing on the runs
# (name, drift per run, noise sigma)
SCENARIOS = (("main", 0.0, 1.0), ("drift down", -0.02, 1.0), ("drift up", 0.02, 1.0),
             ("3x noise", 0.0, 3.0))


class Machine:
    """Draws runs: true value + N(0, sigma), plus a drift that grows with every run."""

    def __init__(self, rng: random.Random, drift_per_run: float = 0.0, sigma: float = 1.0):
        self.rng = rng
        self.drift_per_run = drift_per_run
        self.sigma = sigma
        self.runs = 0

    def run(self, true_value: float) -> float:
        self.runs += 1
        return true_value + self.drift_per_run * self.runs + self.rng.gauss(0.0, self.sigma)


# ---------------------------------------------------------------------------
# The rules, each judging one candidate
# ---------------------------------------------------------------------------


@dataclass
class Best:
    true_value: float
    runs: list[float]         # the old rule: [its single value]; the keep rules: all its runs
    improvement: float = 0.0  # the true improvement it was kept for (0 for the baseline)


def old_judge(machine: Machine, best: Best, floor: float, true_value: float
              ) -> tuple[bool, list[float]]:
    """The reference: the rule before the keep rule; a win inside the floor is re-run once."""
    first = machine.run(true_value)
    improvement = best.runs[0] - first
    if improvement <= 1e-9:
        return False, [first]
    if improvement < floor:
        second = machine.run(true_value)
        mean = (first + second) / 2
        return best.runs[0] - mean > 1e-9, [mean]
    return True, [first]


@dataclass
class Chain:
    """The keep rules' state: the best with its predecessors, every commit's runs."""

    machine: Machine
    rules: JudgeRules
    bests: list[Best]                                  # the baseline first, the best last
    groups: list[list[float]] = field(default_factory=list)   # every commit's runs
    reverted: dict = field(default_factory=dict)       # true improvement -> keeps reverted
    oracle: bool = False      # the bound: judged against the best's true value, for free
    since_best_ran: int = 0   # candidate runs since the best last ran, as the coordinator counts

    @property
    def best(self) -> Best:
        return self.bests[-1]

    def run_best(self) -> bool:
        """One more run of the best, then the recheck; True when it reverted the keep."""
        best = self.best
        best.runs.append(self.machine.run(best.true_value))
        self.since_best_ran = 0
        if len(self.bests) < 2:
            return False
        decision = recheck(self.bests[-2].runs, best.runs, pooled_noise(self.groups),
                           self.rules.keep)
        if decision is None or decision.action is not Action.DISCARD:
            return False
        self.reverted[best.improvement] = self.reverted.get(best.improvement, 0) + 1
        self.bests.pop()
        return True

    def judge(self, true_improvement: float) -> tuple[bool, list[float]]:
        """Train and judge a candidate made on the best, until the judge decides; a revert
        meanwhile sends it to train again on the restored best."""
        while True:
            true_value = self.best.true_value - true_improvement
            runs = [self.machine.run(true_value)]
            self.since_best_ran += 1
            self.groups.append(runs)
            best_runs = [self.best.true_value] * ORACLE_RUNS if self.oracle else self.best.runs
            while True:
                judgment = judge(runs, best_runs, pooled_noise(self.groups), self.rules)
                if judgment.verdict is not Verdict.CONFIRM:
                    return judgment.verdict in (Verdict.KEEP, Verdict.HOLD), runs
                if judgment.rerun == "candidate":
                    runs.append(self.machine.run(true_value))
                    self.since_best_ran += 1
                elif self.run_best():
                    break


# ---------------------------------------------------------------------------
# Part 1: one candidate against a fresh baseline
# ---------------------------------------------------------------------------


def single(rule: str, improvement: float, trials: int, rules: JudgeRules,
           seed: int) -> tuple[float, float]:
    """(rate of keeps, mean runs per candidate) for a candidate `improvement` sigma better."""
    rng = random.Random(seed)
    kept = runs = 0
    for _ in range(trials):
        machine = Machine(rng)
        baseline = [machine.run(BASE) for _ in range(BASELINE_RUNS)]
        if rule == "old":
            keep, _ = old_judge(machine, Best(BASE, baseline[:1]),
                                max(baseline) - min(baseline), BASE - improvement)
        else:
            chain = Chain(machine, rules, [Best(BASE, baseline)], [baseline])
            keep, _ = chain.judge(improvement)
        kept += keep
        runs += machine.runs - BASELINE_RUNS
    return kept / trials, runs / trials


# ---------------------------------------------------------------------------
# Part 2: whole sessions at equal compute
# ---------------------------------------------------------------------------


@dataclass
class Tally:
    judged: dict
    kept: dict                # kept when judged (a later revert included)
    reverted: dict
    gain: float = 0.0         # true improvement of the final best over the baseline
    candidates: int = 0
    runs: int = 0             # every run after the baseline, the best's re-runs included

    def share(self, counts: dict, improvements: tuple[float, ...]) -> float:
        return sum(counts.get(m, 0) for m in improvements) / max(
            1, sum(self.judged[m] for m in improvements))


def session(rule: str, total_runs: int, rng: random.Random, rules: JudgeRules,
            drift_per_run: float, sigma: float, tally: Tally) -> None:
    machine = Machine(rng, drift_per_run, sigma)
    baseline = [machine.run(BASE) for _ in range(BASELINE_RUNS)]
    floor = max(baseline) - min(baseline)
    if rule == "old":
        best = Best(BASE, baseline[:1])
    else:
        chain = Chain(machine, rules, [Best(BASE, baseline)], [baseline], tally.reverted,
                      oracle=rule == "oracle")
    while machine.runs < BASELINE_RUNS + total_runs:
        if rule in ("margin", "sequential", "debiased") and should_rerun_best(
                chain.since_best_ran, rules.keep):
            chain.run_best()
            continue
        improvement = rng.choices([m for m, _ in MIX], weights=[w for _, w in MIX])[0]
        if rule == "old":
            keep, runs = old_judge(machine, best, floor, best.true_value - improvement)
        else:
            keep, runs = chain.judge(improvement)
        tally.candidates += 1
        tally.judged[improvement] += 1
        tally.kept[improvement] += keep
        if keep:
            if rule == "old":
                best = Best(best.true_value - improvement, runs, improvement)
            else:
                chain.bests.append(Best(chain.best.true_value - improvement, runs, improvement))
                chain.since_best_ran = 0          # its runs are the best's now
    tally.gain += BASE - (best if rule == "old" else chain.best).true_value
    tally.runs += machine.runs - BASELINE_RUNS


def sessions(rule: str, count: int, total_runs: int, rules: JudgeRules,
             drift_per_run: float, sigma: float, seed: int) -> Tally:
    rng = random.Random(seed)
    tally = Tally({m: 0 for m, _ in MIX}, {m: 0 for m, _ in MIX}, {})
    for _ in range(count):
        session(rule, total_runs, rng, rules, drift_per_run, sigma, tally)
    return tally


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few trials, for the test suite")
    parser.add_argument("--trials", type=int, default=20000, help="candidates per cell, part 1")
    parser.add_argument("--sessions", type=int, default=2000, help="sessions per row, part 2")
    parser.add_argument("--runs", type=int, default=60, help="runs per session after the baseline")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.quick:
        args.trials, args.sessions, args.runs = 500, 40, 30
    margin = KeepRuleSettings()
    compared = (("old", "the old rule", None),
                ("margin", f"keep rule k={margin.k:g}, <={margin.max_candidate_runs} runs",
                 JudgeRules(keep=margin)),
                ("sequential", f"sequential {SEQUENTIAL.evidence:g}:1 "
                 f"{SEQUENTIAL.win_sigmas:g}sd, <={SEQUENTIAL.max_candidate_runs}",
                 JudgeRules(keep=SEQUENTIAL)),
                ("debiased", f"debiased {DEBIASED.evidence:g}/{DEBIASED.drop_ratio:g}:1 "
                 f"{DEBIASED.win_sigmas:g}sd, <={DEBIASED.max_candidate_runs}",
                 JudgeRules(keep=DEBIASED)))
    # the bound's own test: with the best known exactly the keep bound narrows, so a
    # stricter likelihood ratio keeps its false keeps under 5%
    told = replace(SEQUENTIAL, evidence=4.0, win_sigmas=2.0)
    bound = ("oracle", f"bound: best known, {told.evidence:g}:1 {told.win_sigmas:g}sd",
             JudgeRules(keep=told))

    print(f"Part 1: one candidate against a fresh baseline of {BASELINE_RUNS} runs, "
          f"{args.trials} trials per cell")
    print(f"{'true improvement (sigma):':<34}" + "".join(f"{'keep@' + format(d, 'g'):>9}"
                                                       for d in (0, 1, 2, 3))
          + f"{'runs@0':>8}{'runs@2':>8}")
    for rule, label, rules in compared:
        cells = [single(rule, d, args.trials, rules, args.seed + i)
                 for i, d in enumerate((0.0, 1.0, 2.0, 3.0))]
        print(f"{label:<34}" + "".join(f"{rate:>9.1%}" for rate, _ in cells)
              + f"{cells[0][1]:>8.2f}{cells[2][1]:>8.2f}")

    print(f"\nPart 2: {args.sessions} sessions of {args.runs} runs each after the baseline "
          f"(equal compute); candidates: 30% 2-unit wins, 40% no change, 30% 2 units worse "
          f"(a unit: the main scenario's sigma)")
    print(f"{'scenario':<12}{'rule':<34}{'cands':>6}{'false keeps':>12}{'kept':>7}"
          f"{'reverted':>9}{'wins':>7}{'gain':>7}{'runs/dec':>9}")
    main_rows = {}
    for scenario, drift, sigma in SCENARIOS:
        for rule, label, rules in compared + ((bound,) if scenario == "main" else ()):
            t = sessions(rule, args.sessions, args.runs, rules, drift, sigma, args.seed)
            still = {m: t.kept[m] - t.reverted.get(m, 0) for m in t.kept}
            if scenario == "main":
                main_rows[label] = (t.share(still, (0.0, -2.0)), t.share(still, (2.0,)),
                                    t.gain / args.sessions)
            print(f"{scenario:<12}{label:<34}{t.candidates / args.sessions:>6.1f}"
                  f"{t.share(still, (0.0, -2.0)):>12.1%}{t.share(t.kept, (0.0, -2.0)):>7.1%}"
                  f"{t.share(t.reverted, (0.0, -2.0)):>9.1%}{t.share(still, (2.0,)):>7.1%}"
                  f"{t.gain / args.sessions:>7.2f}{t.runs / max(1, t.candidates):>9.2f}")
    print("\nfalse keeps: share of the candidates that are no win (no change or worse) kept "
          "at the end; kept: kept when judged; reverted: kept, then reverted by a re-run of "
          "the best;\nwins: share of the 2-unit wins kept at the end; gain: true improvement of "
          "the final best, in units; runs/dec: runs per candidate decided, the best's "
          "re-runs included.\nthe bound: the sequential rule judging against the best's true "
          "value, which no rule has (what measuring the best costs).")
    old_gain = main_rows[compared[0][1]][2]
    print(f"\ntargets (main): false keeps <= 5%, wins >= 80%, gain >= the old rule's "
          f"({old_gain:.2f})")
    for label, (false_keeps, wins, gain) in main_rows.items():
        missed = [name for name, ok in (("false keeps", false_keeps <= 0.05),
                                        ("wins", wins >= 0.80), ("gain", gain >= old_gain))
                  if not ok]
        print(f"  {label:<34}{'met' if not missed else 'missed: ' + ', '.join(missed)}")


if __name__ == "__main__":
    main()
