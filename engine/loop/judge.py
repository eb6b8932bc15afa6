"""The judge: keep, discard, confirm or hold one experiment. Pure functions, no threads.

Inputs are the candidate's runs, the best's runs (every run of the best commit), and the
noise pooled over every commit run more than once (engine/loop/keep_stats.pooled_noise).

The statistical keep rule (engine/loop/keep_rule.py) decides keep, discard or confirm: the best is
the mean of its runs, a win must clear the rule's keep bound (k standard errors of the
difference of means, or the sequential test's), a win between zero (the sequential test: its
drop bound) and the keep bound is confirmed by re-running the best or the candidate. On top
of it, an unusually large win (far beyond the noise, or a large fraction of val_bpb) is confirmed
by a re-run and then held for a human, even in auto mode: it is more likely a bug or an
exploit than a discovery (issue 9).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Sequence

from engine.base.records import KeepMeasure
from engine.loop import keep_rule
from engine.loop.keep_rule import Action, KeepDecision, KeepRuleSettings
from engine.loop.keep_stats import Noise


class Verdict(str, Enum):
    KEEP = "keep"
    DISCARD = "discard"
    CONFIRM = "confirm"            # run the best or the candidate again (Judgment.rerun)
    HOLD = "hold"                  # an unusually large win, confirmed: a human decides


@dataclass(frozen=True)
class JudgeRules:
    keep: KeepRuleSettings = field(default_factory=KeepRuleSettings)
    large_win_sigmas: float | None = 20.0     # a win above this many sigma is held
    large_win_fraction: float | None = 0.05   # ...or above this fraction of val_bpb


@dataclass(frozen=True)
class Judgment:
    verdict: Verdict
    measure: KeepMeasure           # n, means, sigma and margin the verdict rests on
    reason: str
    rerun: str = ""                # CONFIRM: "best" or "candidate", the commit to run again

    @property
    def value(self) -> float:
        """The candidate's val_bpb as judged: the mean of its runs."""
        return self.measure.candidate_mean

    @property
    def improvement(self) -> float:
        return self.measure.improvement


def measure_of(decision: KeepDecision) -> KeepMeasure:
    return KeepMeasure(n_best=decision.n_best, best_mean=decision.best_mean,
                       n_candidate=decision.n_candidate, candidate_mean=decision.candidate_mean,
                       sigma=decision.sigma, noise_dof=decision.noise_dof,
                       improvement=decision.improvement, margin=decision.margin,
                       drop_margin=decision.drop_margin)


def is_large_win(improvement: float, best: float, sigma: float | None,
                 rules: JudgeRules) -> bool:
    by_noise = (rules.large_win_sigmas is not None and sigma is not None and sigma > 0
                and improvement > rules.large_win_sigmas * sigma)
    by_fraction = (rules.large_win_fraction is not None
                   and improvement > rules.large_win_fraction * best)
    return by_noise or by_fraction


def judge(candidate_runs: Sequence[float], best_runs: Sequence[float], noise: Noise,
          rules: JudgeRules = JudgeRules()) -> Judgment:
    """What to do with a candidate that produced a metric in every run in candidate_runs."""
    if not candidate_runs or not best_runs:
        raise ValueError("the judge needs at least one run of the candidate and of the best")
    decision = keep_rule.judge(best_runs, candidate_runs, noise, rules.keep)
    measure = measure_of(decision)
    if decision.action is Action.DISCARD:
        return Judgment(Verdict.DISCARD, measure, decision.reason)
    if is_large_win(decision.improvement, decision.best_mean, decision.sigma, rules):
        change = (f"{decision.best_mean:.6f} -> {decision.candidate_mean:.6f}, "
                  f"{decision.improvement:.6f} better")
        if decision.n_candidate < 2:
            return Judgment(Verdict.CONFIRM, measure, f"an unusually large win ({change}): "
                            f"re-running it to confirm", rerun="candidate")
        return Judgment(Verdict.HOLD, measure,
                        f"unusually large win: look before it becomes the best ({change})")
    if decision.action is Action.KEEP:
        return Judgment(Verdict.KEEP, measure, decision.reason)
    return Judgment(Verdict.CONFIRM, measure, decision.reason, rerun=decision.rerun)
