"""The statistics under the keep rule (engine/loop/keep_rule.py): the pooled noise of repeated
runs, the margin of a difference of means, Student's t and a best's discounted mean.

Pure functions over numbers."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence


@dataclass(frozen=True)
class Noise:
    """The pooled run-to-run standard deviation and what it rests on."""

    sigma: float | None      # None until some commit has been run twice
    dof: int                 # degrees of freedom: sum of (runs - 1) over the groups
    groups: int              # commits run more than once


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


def discounted_mean(runs: Sequence[float], sigma: float, weight: float, shift: float
                    ) -> tuple[float, float]:
    """(mean, effective n) of a best's runs with its first run, the one it was kept on,
    weighted `weight` and taken `shift` sigma worse (higher val_bpb). The effective n is the
    number of equal runs whose mean has the weighted mean's variance."""
    first = runs[0] + shift * sigma
    if len(runs) == 1:
        return first, 1.0
    total = weight + len(runs) - 1
    mean = (weight * first + sum(runs[1:])) / total
    return mean, total * total / (weight * weight + len(runs) - 1)
