"""How often does a keep rule keep noise, and how often does it find a real win?

Stand-in runs: val_bpb = the commit's true value + Gaussian noise of sigma 1 (the figures are
in units of sigma; true values sit at 400 sigma, about val_bpb 2.0 with sigma 0.005, so the
judge's "more than 5% of val_bpb" hold never fires on these wins). Two rules, both seeded the
same way:

- today's rule, the reference: a copy of the rule engine/loop/judge.py had before the keep rule,
  kept here only for comparison. The best is the baseline's first run (then the value a
  change was kept at); the noise floor is the spread (max - min) of the baseline and its 2
  repeats; a candidate better than the best by less than the floor is re-run once and the
  mean of its two runs must beat the best.
- the keep rule as the engine runs it: engine/judge.judge (which applies
  engine/loop/keep_rule.py and the large-win hold), fed as the coordinator feeds it: means of all
  runs, sigma pooled over every repeated commit, confirmations re-running the best or the
  candidate as the judge asks, the best re-run every `best_rerun_every` candidate runs
  (keep_rule.should_rerun_best). A held win counts as kept (the human accepts it).

Part 1 judges one candidate against a fresh baseline (3 runs), for true improvements of 0, 1,
2 and 3 sigma. Part 2 runs whole sessions at equal compute (the same number of runs for
both rules): candidates that are a 2 sigma win (30%), no change (40%) or 2 sigma worse
(30%), the best advancing on every keep, optionally with the machine drifting.

    python bench/keep_rule.py [--quick] [--trials 20000] [--sessions 2000] [--runs 60]

Target: the keep rule keeps <= 5% of candidates that are not wins while finding >= 80% of the
true wins of 2 sigma.
"""

from __future__ import annotations

import argparse
import random
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.loop.judge import JudgeRules, Verdict, judge  # noqa: E402
from engine.loop.keep_rule import KeepRuleSettings, pooled_noise, should_rerun_best  # noqa: E402

BASELINE_RUNS = 3          # the baseline and its 2 noise repeats, as `make run` does today
MIX = ((2.0, 0.3), (0.0, 0.4), (-2.0, 0.3))   # (true improvement in sigma, share)
BASE = 400.0               # the baseline's true value, in sigma


class Machine:
    """Draws runs: true value + N(0, 1), plus a drift that grows with every run."""

    def __init__(self, rng: random.Random, drift_per_run: float = 0.0):
        self.rng = rng
        self.drift_per_run = drift_per_run
        self.runs = 0

    def run(self, true_value: float) -> float:
        self.runs += 1
        return true_value + self.drift_per_run * self.runs + self.rng.gauss(0.0, 1.0)


# ---------------------------------------------------------------------------
# The two rules, each judging one candidate
# ---------------------------------------------------------------------------


@dataclass
class Best:
    true_value: float
    runs: list[float]         # today's rule: [its single value]; keep rule: all its runs


def today_judge(machine: Machine, best: Best, floor: float, true_value: float
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


def rule_judge(machine: Machine, best: Best, others: list[list[float]], true_value: float,
               rules: JudgeRules) -> tuple[bool, list[float]]:
    runs = [machine.run(true_value)]
    while True:
        noise = pooled_noise([best.runs, runs, *others])
        judgment = judge(runs, best.runs, noise, rules)
        if judgment.verdict is Verdict.CONFIRM:
            if judgment.rerun == "best":
                best.runs.append(machine.run(best.true_value))
            else:
                runs.append(machine.run(true_value))
            continue
        return judgment.verdict in (Verdict.KEEP, Verdict.HOLD), runs


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
        if rule == "today":
            best = Best(BASE, baseline[:1])
            keep, _ = today_judge(machine, best, max(baseline) - min(baseline),
                                  BASE - improvement)
        else:
            keep, _ = rule_judge(machine, Best(BASE, baseline), [], BASE - improvement, rules)
        kept += keep
        runs += machine.runs - BASELINE_RUNS
    return kept / trials, runs / trials


# ---------------------------------------------------------------------------
# Part 2: whole sessions at equal compute
# ---------------------------------------------------------------------------


@dataclass
class Tally:
    judged: dict
    kept: dict
    gain: float = 0.0         # true improvement of the final best over the baseline, sigma
    candidates: int = 0


def session(rule: str, total_runs: int, rng: random.Random, rules: JudgeRules,
            drift_per_run: float, tally: Tally) -> None:
    machine = Machine(rng, drift_per_run)
    baseline = [machine.run(BASE) for _ in range(BASELINE_RUNS)]
    floor = max(baseline) - min(baseline)
    best = Best(BASE, baseline[:1] if rule == "today" else baseline)
    finished: list[list[float]] = []          # repeats of commits no longer the best
    since_best_ran = 0
    while machine.runs < BASELINE_RUNS + total_runs:
        if rule == "rule" and should_rerun_best(since_best_ran, rules.keep):
            best.runs.append(machine.run(best.true_value))
            since_best_ran = 0
            continue
        improvement = rng.choices([m for m, _ in MIX], weights=[w for _, w in MIX])[0]
        candidate = best.true_value - improvement
        if rule == "today":
            keep, runs = today_judge(machine, best, floor, candidate)
        else:
            keep, runs = rule_judge(machine, best, finished, candidate, rules)
            since_best_ran += len(runs)
        tally.candidates += 1
        tally.judged[improvement] += 1
        tally.kept[improvement] += keep
        if keep:
            if rule == "rule":
                finished.append(best.runs)
            best = Best(candidate, runs)
            since_best_ran = 0
        elif rule == "rule":
            finished.append(runs)
    tally.gain += BASE - best.true_value


def sessions(rule: str, count: int, total_runs: int, rules: JudgeRules,
             drift_per_run: float, seed: int) -> Tally:
    rng = random.Random(seed)
    tally = Tally({m: 0 for m, _ in MIX}, {m: 0 for m, _ in MIX})
    for _ in range(count):
        session(rule, total_runs, rng, rules, drift_per_run, tally)
    return tally


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few trials, for the test suite")
    parser.add_argument("--trials", type=int, default=20000, help="candidates per cell, part 1")
    parser.add_argument("--sessions", type=int, default=2000, help="sessions per row, part 2")
    parser.add_argument("--runs", type=int, default=60, help="runs per session after the baseline")
    parser.add_argument("--k", type=float, default=KeepRuleSettings.k)
    parser.add_argument("--max-runs", type=int, default=KeepRuleSettings.max_candidate_runs)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.quick:
        args.trials, args.sessions, args.runs = 500, 40, 30
    settings = KeepRuleSettings(k=args.k, max_candidate_runs=args.max_runs)
    rules = JudgeRules(keep=settings)
    compared = (("today", "today's rule"),
             ("rule", f"keep rule k={settings.k:g}, <= {settings.max_candidate_runs} runs"))

    print(f"Part 1: one candidate against a fresh baseline of {BASELINE_RUNS} runs, "
          f"{args.trials} trials per cell")
    print("true improvement (sigma):     " + "".join(f"{'keep@' + format(d, 'g'):>10}"
                                                      for d in (0, 1, 2, 3)) + f"{'runs@0':>9}{'runs@2':>9}")
    for rule, label in compared:
        cells = [single(rule, d, args.trials, rules, args.seed + i)
                 for i, d in enumerate((0.0, 1.0, 2.0, 3.0))]
        print(f"{label:<30}" + "".join(f"{rate:>10.1%}" for rate, _ in cells)
              + f"{cells[0][1]:>9.2f}{cells[2][1]:>9.2f}")

    print(f"\nPart 2: {args.sessions} sessions of {args.runs} runs each after the baseline "
          f"(equal compute); candidates: 30% 2-sigma wins, 40% no change, 30% 2-sigma worse")
    print(f"{'rule':<30}{'drift/run':>10}{'cands':>7}{'false keeps':>13}{'of no-change':>14}"
          f"{'wins found':>12}{'gain sigma':>12}")
    for drift in (0.0, -0.02):
        for rule, label in compared:
            t = sessions(rule, args.sessions, args.runs, rules, drift, args.seed)
            wins = t.kept[2.0] / max(1, t.judged[2.0])
            no_wins = t.judged[0.0] + t.judged[-2.0]
            false = (t.kept[0.0] + t.kept[-2.0]) / max(1, no_wins)
            same = t.kept[0.0] / max(1, t.judged[0.0])
            print(f"{label:<30}{drift:>10g}{t.candidates / args.sessions:>7.1f}{false:>13.1%}"
                  f"{same:>14.1%}{wins:>12.1%}{t.gain / args.sessions:>12.2f}")
    print("\nfalse keeps: share of candidates that are no win (no change or worse) that were "
          "kept (of no-change: of those with no change alone);\nwins found: share of 2-sigma wins kept; gain: true improvement of the final "
          "best, in sigma.\ntarget: false keeps <= 5%, wins found >= 80% (keep rule)")


if __name__ == "__main__":
    main()
