"""The offline tuner's exploration: optuna's TPE sampler, fitted afresh on every finished
run the journal holds, picks a value for the least explored constant."""

from __future__ import annotations

import optuna

from engine.agents.knobs import KNOBS, PRIORS, Knob, round_significant
from engine.agents.trials import FAILURES, Knowledge
from engine.base.constants import is_number

TPE_STARTUP = 5


def fits(knob: Knob, value: object) -> bool:
    if knob.scale == "ladder":
        return not is_number(value) or knob.low <= value <= knob.high
    return is_number(value) and knob.low <= value <= knob.high


def priority(name: str) -> int:
    order = [n for moves, _ in PRIORS for n, _ in moves] + list(KNOBS)
    return order.index(name) if name in order else len(order)


def encode(knob: Knob, value: object, base: object):
    """(param, distribution) for optuna, or None for a value off the knob's range."""
    if value is None:
        return None
    if knob.scale == "ladder":
        options = knob.options(base)
        if value not in options:
            return None
        return options.index(value), optuna.distributions.IntDistribution(0, len(options) - 1)
    if not fits(knob, value):
        return None
    if knob.scale == "int":
        return int(value), optuna.distributions.IntDistribution(int(knob.low), int(knob.high))
    return float(value), optuna.distributions.FloatDistribution(
        knob.low, knob.high, log=knob.scale == "log")


def suggest(trial: optuna.Trial, name: str, knob: Knob, base: object) -> object | None:
    """TPE's value for one knob, snapped to what a person would write."""
    if knob.scale == "ladder":
        options = knob.options(base)
        return options[trial.suggest_int(name, 0, len(options) - 1)]
    if knob.scale == "int":
        return trial.suggest_int(name, int(knob.low), int(knob.high))
    raw = trial.suggest_float(name, knob.low, knob.high, log=knob.scale == "log")
    if knob.scale == "log":
        return round_significant(raw)
    grid = knob.step / 2
    return round(round(raw / grid) * grid, 4)


def study(know: Knowledge, seed: int, draft_number: int) -> tuple[optuna.Study, int]:
    """A fresh in-memory study holding every finished run; returns it and their count."""
    sampler = optuna.samplers.TPESampler(seed=seed * 100_003 + draft_number,
                                         n_startup_trials=TPE_STARTUP, multivariate=False)
    study = optuna.create_study(direction="minimize", sampler=sampler)
    scored = [t for t in know.trials if t.has_outcome]
    values = [t.item.val_bpb for t in scored if t.item.val_bpb is not None]
    if not values:
        return study, 0
    # Crashes and timeouts count as clearly worse than anything that finished.
    penalty = max(values) + max(0.05, max(values) - min(values))
    finished = []
    for trial in scored:
        params, distributions = {}, {}
        for name, knob in know.knobs.items():
            encoded = encode(knob, trial.config.get(name), know.base[name])
            if encoded is not None:
                params[name], distributions[name] = encoded
        value = trial.item.val_bpb if trial.status not in FAILURES else penalty
        if value is not None:
            finished.append(optuna.trial.create_trial(
                params=params, distributions=distributions, value=value))
    study.add_trials(finished)
    return study, len(finished)
