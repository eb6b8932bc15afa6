"""The judge: keep, discard, confirm or hold one experiment. Pure functions, no threads.

Inputs are lists of run values (val_bpb, lower is better) so that a statistical keep rule can
take the same inputs later: the candidate's runs, the runs the best's recorded value stands
on, and the noise estimate (the spread of the baseline's repeats; None while unmeasured).

Today's rule: a win must beat the best; a win inside the noise floor is confirmed by a
re-run and kept only if the mean of both runs still wins. An unusually large win (far beyond
the noise floor, or a large fraction of val_bpb) is confirmed by a re-run and then held for a
human, even in auto mode: it is more likely a bug or an exploit than a discovery.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from statistics import fmean
from typing import Sequence

# A result this much better than the best is a win; equal within float noise is not.
MIN_IMPROVEMENT = 1e-9


class Verdict(str, Enum):
    KEEP = "keep"
    DISCARD = "discard"
    CONFIRM = "confirm"            # train the candidate once more, then judge again
    NEED_NOISE = "need_noise"      # a win, but the noise floor is not measured yet
    HOLD = "hold"                  # an unusually large win, confirmed: a human decides


@dataclass(frozen=True)
class JudgeRules:
    rerun_small_wins: bool = True          # confirm a win smaller than the noise floor
    noise_gate: bool = True                # a win waits for a measured noise floor
    large_win_floors: float | None = 20.0  # a win above this many noise floors is held
    large_win_fraction: float | None = 0.05   # ...or above this fraction of val_bpb


@dataclass(frozen=True)
class Judgment:
    verdict: Verdict
    value: float                   # the candidate's val_bpb as judged (mean of its runs)
    improvement: float             # best's value minus the candidate's (positive is better)
    reason: str


def best_value(best_runs: Sequence[float]) -> float:
    """The value the best stands at: the mean of the runs it was kept on."""
    return fmean(best_runs)


def is_large_win(improvement: float, best: float, noise: float | None,
                 rules: JudgeRules) -> bool:
    by_noise = (rules.large_win_floors is not None and noise is not None and noise > 0
                and improvement > rules.large_win_floors * noise)
    by_fraction = (rules.large_win_fraction is not None
                   and improvement > rules.large_win_fraction * best)
    return by_noise or by_fraction


def judge(candidate_runs: Sequence[float], best_runs: Sequence[float], noise: float | None,
          rules: JudgeRules = JudgeRules()) -> Judgment:
    """What to do with a candidate that produced a metric in every run in candidate_runs."""
    if not candidate_runs or not best_runs:
        raise ValueError("the judge needs at least one run of the candidate and of the best")
    value = fmean(candidate_runs)
    best = best_value(best_runs)
    improvement = best - value
    confirmed = len(candidate_runs) > 1

    def verdict(kind: Verdict, reason: str) -> Judgment:
        return Judgment(kind, value, improvement, reason)

    if improvement <= MIN_IMPROVEMENT:
        if confirmed:
            return verdict(Verdict.DISCARD, f"the win did not hold on a re-run (mean "
                                            f"{value:.6f} vs best {best:.6f})")
        return verdict(Verdict.DISCARD, f"{value:.6f} does not beat the best {best:.6f}")
    if noise is None and rules.noise_gate:
        return verdict(Verdict.NEED_NOISE, f"a win of {improvement:.6f}: measuring the noise "
                                           f"floor before judging it")
    if is_large_win(improvement, best, noise, rules):
        if not confirmed:
            return verdict(Verdict.CONFIRM, f"an unusually large win of {improvement:.6f}: "
                                            f"re-running it to confirm")
        return verdict(Verdict.HOLD, f"unusually large win: look before it becomes the best "
                                     f"({best:.6f} -> {value:.6f}, {improvement:.6f} better)")
    if (rules.rerun_small_wins and noise and improvement < noise and not confirmed):
        return verdict(Verdict.CONFIRM, f"a win of {improvement:.6f} is inside the noise floor "
                                        f"({noise:.6f}): re-running it to confirm")
    return verdict(Verdict.KEEP, f"{value:.6f} beats the best {best:.6f} by {improvement:.6f}")
