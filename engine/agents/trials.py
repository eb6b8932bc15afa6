"""The offline tuner reading the journal: which constants each past experiment changed, from
what to what, and how it went (the trials it learns from)."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from engine.agents.knobs import Knob
from engine.base.constants import Constant, format_like, parse_constants, parse_value
from engine.base.records import HistoryItem

OUTCOMES = ("keep", "discard", "crash", "timeout")
FAILURES = ("crash", "timeout")
_VALUE = r"\([^()]*\)|\"[^\"]*\"|'[^']*'|[^\s,]+"
_CHANGE = re.compile(rf"\b([A-Z][A-Z0-9_]*) ({_VALUE}) -> ({_VALUE})")


def describe(changes: dict[str, tuple[object, object]], constants: dict[str, Constant]) -> str:
    """'MATRIX_LR 0.04 -> 0.06, WARMDOWN_RATIO 0.5 -> 0.6': readable, and parsed back later."""
    return ", ".join(f"{name} {constants[name].text} -> {format_like(new, constants[name].text)}"
                     for name, (_, new) in changes.items())


def parse_description(text: str) -> dict[str, tuple[object, object]]:
    changes = {}
    for name, old, new in _CHANGE.findall(text):
        old_value, new_value = parse_value(old), parse_value(new)
        if old_value is not None and new_value is not None:
            changes[name] = (old_value, new_value)
    return changes


def parse_diff(diff: str, device: str) -> dict[str, tuple[object, object]]:
    """Constant changes in a unified diff: NAME -> (value on '-' line, value on '+' line)."""
    removed, added = {}, {}
    for line in diff.splitlines():
        if line.startswith(("---", "+++")) or line[:1] not in ("-", "+"):
            continue
        try:
            found = parse_constants(line[1:].strip() + "\n", device)
        except SyntaxError:
            continue
        for name, c in found.items():
            (removed if line[0] == "-" else added)[name] = c.value
    return {name: (removed[name], added[name]) for name in added
            if name in removed and removed[name] != added[name]}


def item_changes(item: HistoryItem, device: str) -> dict[str, tuple[object, object]]:
    """What an experiment changed; the diff is trusted over the (editable) description."""
    changes = parse_diff(item.diff, device) if item.diff else {}
    if not changes:
        changes = parse_description(item.description)
    for name, (_, new) in parse_diff(item.human_edit_diff, device).items():
        old = changes[name][0] if name in changes else None
        changes[name] = (old, new)
    return {name: pair for name, pair in changes.items() if pair[0] != pair[1]}


@dataclass
class Trial:
    """One journal entry replayed onto the configuration it ran with."""

    item: HistoryItem
    changes: dict[str, tuple[object, object]]
    config: dict[str, object]
    delta: float | None

    @property
    def status(self) -> str:
        return self.item.status

    @property
    def has_outcome(self) -> bool:
        return self.status in OUTCOMES and (self.status in FAILURES
                                            or self.item.val_bpb is not None)


def replay(history: list[HistoryItem], current: dict[str, object], device: str) -> list[Trial]:
    """Full configurations of past experiments.

    The file at the base commit is the best so far, so undoing the kept changes newest
    first gives the configuration the journal started from; replaying forward then gives
    each experiment's configuration."""
    parsed = [item_changes(item, device) for item in history]
    config = dict(current)
    for item, changes in zip(reversed(history), reversed(parsed)):
        if item.status == "keep":
            for name, (old, _) in changes.items():
                if name in config and old is not None:
                    config[name] = old
    trials, best = [], None
    for item, changes in zip(history, parsed):
        ran = {**config, **{name: new for name, (_, new) in changes.items() if name in config}}
        delta = item.delta
        if delta is None and item.val_bpb is not None and best is not None:
            delta = item.val_bpb - best
        trials.append(Trial(item, changes, ran, delta))
        if item.status == "keep":
            config = ran
            if item.val_bpb is not None:
                best = item.val_bpb if best is None else min(best, item.val_bpb)
    return trials


@dataclass(frozen=True)
class Move:
    changes: tuple[tuple[str, object], ...]      # (name, new value), in proposal order
    hypothesis: str
    tier: str


@dataclass
class Knowledge:
    """Everything one draft knows: the best configuration and what the journal says about it."""

    constants: dict[str, Constant]
    knobs: dict[str, Knob]                     # the constants this draft may change
    base: dict[str, object]
    trials: list[Trial]
    noise: float
    tried_configs: set = field(default_factory=set)
    tried_moves: set = field(default_factory=set)
    forbidden: set = field(default_factory=set)           # (name, value) a human vetoed
    frozen: dict[str, str] = field(default_factory=dict)  # name -> the veto that names it
    undo: set = field(default_factory=set)                # (name, value) a kept change left
    limits: dict = field(default_factory=dict)            # name -> (lowest, highest) allowed
    last: dict = field(default_factory=dict)              # name -> (trial, direction)
    directions: dict = field(default_factory=lambda: defaultdict(set))  # name -> tried
    touched: Counter = field(default_factory=Counter)


def config_key(config: dict[str, object]) -> tuple:
    return tuple(sorted(config.items()))


def move_key(base: dict[str, object], changes) -> frozenset:
    return frozenset((name, base.get(name), new) for name, new in changes)
