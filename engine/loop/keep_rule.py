"""The keep rule: is a candidate's val_bpb better than the best's by more than the noise?

Pure functions over numbers; the judge calls them with the runs the journal holds.

- The best is the mean of all its runs, never one lucky or unlucky draw.
- The noise sigma is the pooled standard deviation of repeated runs: every commit run more
  than once (the baseline and its repeats, confirmed candidates, re-runs of the best) adds
  its squared deviations from its own mean and n - 1 degrees of freedom. It tightens as
  repeats accumulate, and widens if the machine drifts (a throttled or busy CPU makes the
  repeats of one commit disagree).
- The improvement (best mean - candidate mean) is compared with k standard errors of a
  difference of means: margin = k' * sigma * sqrt(1/n_best + 1/n_candidate), where k' is k
  widened to Student's t for the degrees of freedom sigma rests on (a sigma from 2 repeats
  can come out tiny by chance: k = 2 becomes 4.5 there, 2.3 at 10). At or above the margin:
  keep. At or below zero: discard. In between: confirm with another run, up to a limit; at
  the limit it must clear the margin to be kept.
- A confirmation runs the best again while it has no more runs than the candidate and
  fewer than `min_best_runs` (that shrinks the standard error most, and measures the noise
  alongside the first experiments); else the candidate again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Iterable, Sequence


class Action(str, Enum):
    KEEP = "keep"
    DISCARD = "discard"
    CONFIRM = "confirm"      # run the best or the candidate again (KeepDecision.rerun), ask again


@dataclass(frozen=True)
class KeepRuleSettings:
    k: float = 2.0                  # margin in standard errors of the difference of means
    max_candidate_runs: int = 8     # runs of one candidate, its confirmations included
    min_best_runs: int = 6          # confirmations re-run the best up to this many runs
    best_rerun_every: int = 10      # candidate runs judged against the best between its re-runs

    def __post_init__(self) -> None:
        if not self.k > 0:
            raise ValueError(f"k must be positive, not {self.k!r}")
        if self.max_candidate_runs < 1:
            raise ValueError(f"max_candidate_runs must be at least 1, not "
                             f"{self.max_candidate_runs!r}")
        if self.min_best_runs < 1:
            raise ValueError(f"min_best_runs must be at least 1, not {self.min_best_runs!r}")
        if self.best_rerun_every < 1:
            raise ValueError(f"best_rerun_every must be at least 1, not "
                             f"{self.best_rerun_every!r}")


@dataclass(frozen=True)
class Noise:
    """The pooled run-to-run standard deviation and what it rests on."""

    sigma: float | None      # None until some commit has been run twice
    dof: int                 # degrees of freedom: sum of (runs - 1) over the groups
    groups: int              # commits run more than once


@dataclass(frozen=True)
class KeepDecision:
    action: Action
    n_best: int
    best_mean: float
    n_candidate: int
    candidate_mean: float
    sigma: float | None
    noise_dof: int
    improvement: float       # best_mean - candidate_mean: positive is better (lower val_bpb)
    margin: float | None     # k' standard errors of the difference; None without a sigma
    reason: str              # one line, for the journal, the app and the report
    rerun: str = ""          # CONFIRM: "best" or "candidate", the commit to run again


def pooled_noise(groups: Iterable[Sequence[float]]) -> Noise:
    """Pooled standard deviation of the runs, grouped by commit (one group per commit)."""
    squares, dof, used = 0.0, 0, 0
    for runs in groups:
        if len(runs) < 2:
            continue
        mean = sum(runs) / len(runs)
        squares += sum((x - mean) ** 2 for x in runs)
        dof += len(runs) - 1
        used += 1
    sigma = math.sqrt(squares / dof) if dof else None
    return Noise(sigma, dof, used)


def margin(sigma: float, dof: int, n_best: int, n_candidate: int, k: float) -> float:
    """k standard errors (widened to Student's t for `dof`) of the difference of two means
    of n_best and n_candidate runs."""
    return student_t_critical(k, dof) * sigma * math.sqrt(1 / n_best + 1 / n_candidate)


def student_t_critical(z: float, dof: int) -> float:
    """The Student's t quantile (dof degrees of freedom) at the normal quantile z's level.

    Cornish-Fisher expansion in 1/dof (Abramowitz & Stegun 26.7.5); within 1% of the exact
    value from 2 degrees of freedom on (k = 2: 4.49 vs 4.53 at 2, 2.284 at 10)."""
    if dof < 1:
        raise ValueError(f"dof must be at least 1, not {dof!r}")
    z2 = z * z
    terms = ((z2 + 1) * z / 4,
             ((5 * z2 + 16) * z2 + 3) * z / 96,
             (((3 * z2 + 19) * z2 + 17) * z2 - 15) * z / 384,
             ((((79 * z2 + 776) * z2 + 1482) * z2 - 1920) * z2 - 945) * z / 92160)
    return z + sum(term / dof ** (i + 1) for i, term in enumerate(terms))


def judge(best_runs: Sequence[float], candidate_runs: Sequence[float], noise: Noise,
          settings: KeepRuleSettings = KeepRuleSettings()) -> KeepDecision:
    """Keep, discard or confirm a candidate against the best, from their val_bpb runs.

    `noise` is pooled over every group of repeats, these two included (see pooled_noise)."""
    if not best_runs:
        raise ValueError("the best has no runs to compare against")
    if not candidate_runs:
        raise ValueError("the candidate has no runs to judge")
    n_best, n_cand = len(best_runs), len(candidate_runs)
    best_mean = sum(best_runs) / n_best
    cand_mean = sum(candidate_runs) / n_cand
    improvement = best_mean - cand_mean
    can_confirm = n_cand < settings.max_candidate_runs
    bound = (margin(noise.sigma, noise.dof, n_best, n_cand, settings.k)
             if noise.sigma is not None else None)
    rerun = "best" if n_best < min(n_cand + 1, settings.min_best_runs) else "candidate"

    def decide(action: Action, reason: str) -> KeepDecision:
        return KeepDecision(action, n_best, best_mean, n_cand, cand_mean, noise.sigma,
                            noise.dof, improvement, bound, reason,
                            rerun if action is Action.CONFIRM else "")

    def confirm(why: str) -> KeepDecision:
        run = (f"the best again (run {n_best + 1})" if rerun == "best" else
               f"it again (run {n_cand + 1} of at most {settings.max_candidate_runs})")
        return decide(Action.CONFIRM, f"{why}: running {run}")

    runs = f"mean of {n_cand} run{'s' if n_cand > 1 else ''}"
    vs = f"{cand_mean:.6f} ({runs}) vs best {best_mean:.6f} (mean of {n_best})"
    if improvement <= 0:
        return decide(Action.DISCARD, f"no better than the best: {vs}")
    if bound is None:
        if can_confirm:
            return confirm(f"better by {improvement:.6f} but no noise estimate yet")
        return decide(Action.DISCARD, f"better by {improvement:.6f} but the noise was never "
                      f"measured and the {settings.max_candidate_runs}-run limit is reached")
    sigmas = f"{improvement:.6f} = {improvement / noise.sigma:.2f} sigma" if noise.sigma \
        else f"{improvement:.6f}"
    if improvement >= bound:
        return decide(Action.KEEP, f"better by {sigmas}, clearing the margin {bound:.6f} "
                      f"(k={settings.k:g}, sigma on {noise.dof} dof): {vs}")
    if can_confirm:
        return confirm(f"better by {sigmas}, inside the margin {bound:.6f}")
    return decide(Action.DISCARD, f"better by {sigmas} but inside the margin {bound:.6f} "
                  f"after {n_cand} runs: not distinguishable from noise")


def should_rerun_best(candidate_runs_since_best_ran: int,
                      settings: KeepRuleSettings = KeepRuleSettings()) -> bool:
    """Re-run the best before the next candidate? After every `best_rerun_every` candidate
    runs judged against it, so its mean follows a drifting machine (thermal throttling, a
    busy CPU) and the pooled sigma sees the drift. Confirmations top up a best with few runs."""
    return candidate_runs_since_best_ran >= settings.best_rerun_every
