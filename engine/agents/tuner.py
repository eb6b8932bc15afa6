"""The offline tuner: the default agent when no API key is set.

It edits only the hyperparameter constants at the top of train.py, one or two per proposal,
each as a one-line change of the literal. Every draft rebuilds what it knows from the
journal and walks these tiers until a candidate is new, allowed and validated:

  1. exploit   a change that was kept: take another step the same way
  2. reverse   a change that hurt by more than the noise floor: step the other way
  3. priors    untouched constants, in the order most likely to help on a small budget
  4. refine    half steps around constants that mattered; the untested direction of
               those that made no difference
  5. explore   optuna's TPE sampler, rebuilt from the journal, picks a value for the
               least explored constant
  6. sweep     any untried neighbour of the best configuration

Vetoed values are never proposed again, a veto that names a constant freezes it, crashed
directions are fenced off, SEED is never touched, no configuration runs twice, and no
candidate that train.py's own asserts reject is proposed (engine/agents/template_checks.py).
The same journal and seed give the same proposal.
"""

from __future__ import annotations

import math
import os
import re
import threading
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping

import optuna

from engine.agents import template_checks
from engine.agents.base import AgentError, DraftCancelled, DraftContext, Emit, HistoryItem
from engine.base.constants import (Constant, format_like, is_number, parse_constants,
                                   parse_value, rewrite)
from engine.base.records import Draft

optuna.logging.set_verbosity(optuna.logging.WARNING)

MAX_VALIDATION_TRIES = 4
OUTCOMES = ("keep", "discard", "crash", "timeout")
FAILURES = ("crash", "timeout")

# ---------------------------------------------------------------------------
# What the tuner knows about each constant
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Knob:
    """How to move one constant.

    scale: "log" (multiply by `step`), "linear" (add `step`), "int" (add `step`),
    "ladder" (move to the neighbouring option; `options` lists them around the current value).
    """

    scale: str
    low: float
    high: float
    step: float
    role: str
    options: Callable[[object], list] | None = None
    verbs: tuple[str, str] = ("raising", "lowering")   # a step up, a step down, in words


def _ladder(values: list) -> Callable[[object], list]:
    return lambda current: sorted(set(values) | {current})


def _window_patterns(current: object) -> list:
    # Ordered from all-long to mostly-short windows, so a step has a direction.
    patterns = {"L", "SL", "SSL", "SSSL", current}
    return sorted(patterns, key=lambda p: (-p.count("L") / len(p), len(p), p))


def _adam_betas(current: object) -> list:
    if len(current) != 2:
        return [current]
    return sorted({(current[0], beta2) for beta2 in (0.9, 0.95, 0.99)} | {current})


KNOBS: dict[str, Knob] = {
    "MATRIX_LR": Knob("log", 1e-3, 0.5, 1.5, "learning rate of the transformer's matrices"),
    "EMBEDDING_LR": Knob("log", 0.01, 5.0, 1.5, "learning rate of the token embeddings"),
    "UNEMBEDDING_LR": Knob("log", 1e-4, 0.1, 1.5, "learning rate of the output head"),
    "SCALAR_LR": Knob("log", 0.01, 5.0, 1.5, "learning rate of the per-layer scalars"),
    "WEIGHT_DECAY": Knob("linear", 0.0, 1.0, 0.1, "weight decay"),
    "WARMUP_RATIO": Knob("linear", 0.0, 0.5, 0.05, "share of the run spent warming up"),
    "WARMDOWN_RATIO": Knob("linear", 0.0, 1.0, 0.1, "share of the run spent decaying the lr"),
    "FINAL_LR_FRAC": Knob("linear", 0.0, 0.5, 0.05, "final lr as a fraction of the peak"),
    "DEPTH": Knob("int", 1, 32, 1, "number of layers"),
    "ASPECT_RATIO": Knob("ladder", 8, 512, 1, "model width per layer",
                         _ladder([16, 24, 32, 48, 64, 96, 128, 192, 256])),
    "HEAD_DIM": Knob("ladder", 16, 256, 1, "attention head width",
                     _ladder([16, 32, 64, 128, 256])),
    "TOTAL_BATCH_SIZE": Knob("ladder", 2**8, 2**22, 1, "tokens per optimizer step",
                             _ladder([2**k for k in range(8, 23)])),
    "DEVICE_BATCH_SIZE": Knob("ladder", 1, 1024, 1, "rows per forward pass",
                              _ladder([2**k for k in range(0, 11)])),
    "WINDOW_PATTERN": Knob("ladder", 0, 0, 1, "attention window pattern", _window_patterns,
                           ("using more short windows in", "using more full windows in")),
    "ADAM_BETAS": Knob("ladder", 0, 0, 1, "AdamW betas", _adam_betas,
                       ("raising beta2 in", "lowering beta2 in")),
}
UNKNOWN_LR = Knob("log", 1e-6, 10.0, 1.5, "a learning rate")
NEVER_TOUCHED = ("SEED",)

# The first moves, most likely to help when a small CPU budget allows only a few hundred
# steps: (changes as (name, direction), why). Skipped once all of their constants have a
# history of their own, since the evidence then decides.
PRIORS: list[tuple[tuple[tuple[str, int], ...], str]] = [
    ((("MATRIX_LR", +1),),
     "a short budget allows few optimizer steps; a larger learning rate for the matrices, "
     "which hold most of the parameters, makes more progress per step"),
    ((("WARMDOWN_RATIO", +1),),
     "with few steps, a longer decay of the learning rate at the end usually lowers the "
     "final loss"),
    ((("TOTAL_BATCH_SIZE", -1), ("DEVICE_BATCH_SIZE", -1)),
     "halving the batch doubles the optimizer steps in the fixed budget; halving both keeps "
     "the gradient accumulation count, so the batch stays a whole number of micro-batches"),
    ((("EMBEDDING_LR", +1),),
     "embeddings see each token rarely in a short run; a larger learning rate lets them "
     "catch up"),
    ((("DEPTH", -1),),
     "a shallower model takes more optimizer steps in the fixed budget; at this scale more "
     "steps usually beat more layers"),
    ((("UNEMBEDDING_LR", +1),),
     "the output head learns slowly at its small learning rate; a short run may favour a "
     "larger one"),
    ((("WEIGHT_DECAY", -1),),
     "an undertrained model needs little regularization; less weight decay may let it fit "
     "faster"),
    ((("SCALAR_LR", +1),),
     "the residual mixing scalars may settle faster with a larger learning rate"),
    ((("FINAL_LR_FRAC", +1),),
     "ending the schedule above zero keeps learning in the last steps of a short run"),
    ((("DEPTH", -1), ("ASPECT_RATIO", +1)),
     "trading a layer for width keeps most of the capacity while each step gets cheaper"),
]


def knob_for(name: str) -> Knob | None:
    if name in NEVER_TOUCHED or "SEED" in name:
        return None
    if name in KNOBS:
        return KNOBS[name]
    return UNKNOWN_LR if name.endswith("_LR") else None


def step(knob: Knob, value: object, direction: int, level: float = 1.0) -> object | None:
    """The value one step (or a fraction `level` of one) away, or None past the bounds."""
    if knob.scale == "ladder":
        if level < 1:
            return None
        options = knob.options(value)
        index = options.index(value) + direction
        return options[index] if 0 <= index < len(options) else None
    if not is_number(value):
        return None
    if knob.scale == "log":
        if value <= 0:
            return None
        new = _round_significant(value * knob.step ** (direction * level))
    elif knob.scale == "int":
        new = int(value) + direction * max(1, round(knob.step * level))
    else:
        new = round(value + direction * knob.step * level, 4)
    return new if knob.low <= new <= knob.high and new != value else None


def _level(knob: Knob, old: object, new: object) -> float:
    """How many of the knob's steps a change took: 1 for a full step, 0.5 for a half."""
    if knob.scale == "log" and old > 0 and new > 0:
        steps = abs(math.log(new / old)) / math.log(knob.step)
    elif knob.scale == "linear":
        steps = abs(new - old) / knob.step
    else:
        return 1.0
    return 0.5 if steps < 0.75 else 1.0


def _round_significant(value: float, digits: int = 2) -> float:
    return float(f"{value:.{digits}g}")


def _position(knob: Knob, value: object, reference: object) -> float | None:
    """Where a value sits on the knob's axis, for comparing directions; None if off it."""
    if is_number(value):
        return float(value)
    options = knob.options(reference) if knob.options else []
    return float(options.index(value)) if value in options else None


def _direction(knob: Knob, old: object, new: object) -> int:
    a, b = _position(knob, old, old), _position(knob, new, old)
    if a is None or b is None or a == b:
        return 0
    return 1 if b > a else -1

# ---------------------------------------------------------------------------
# Reading the journal
# ---------------------------------------------------------------------------

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

# ---------------------------------------------------------------------------
# The search
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Move:
    changes: tuple[tuple[str, object], ...]      # (name, new value), in proposal order
    hypothesis: str
    tier: str


@dataclass
class _Knowledge:
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


def _config_key(config: dict[str, object]) -> tuple:
    return tuple(sorted(config.items()))


def _move_key(base: dict[str, object], changes) -> frozenset:
    return frozenset((name, base.get(name), new) for name, new in changes)


class TunerAgent:
    """Offline hyperparameter search over the literal constants of train.py."""

    name = "tuner"

    def __init__(self, device: str = "cpu", seed: int = 0, env: Mapping[str, str] | None = None):
        """env: the training runs' environment (PAIRLAB_SEQ_LEN...), for train.py's checks;
        default: this process's."""
        self.device = device
        self.seed = seed
        self.env = os.environ if env is None else env
        # Proposals still in review or training are not in the journal yet; neither are
        # candidates the engine refused. Both must not be handed out again.
        self._handed_out: set[tuple] = set()
        # The context carries only the latest entries; what scrolled out still counts.
        self._journal: list[HistoryItem] = []

    # ---- the Agent interface ------------------------------------------------------------

    def draft(self, ctx: DraftContext, emit: Emit, cancel: threading.Event) -> Draft:
        lines: list[str] = []

        def say(text: str) -> None:
            lines.append(text)
            emit("text", text + "\n")

        target = self._target(ctx)
        source = ctx.files[target]
        know = self._learn(ctx, source, self._remember(ctx.history))
        self._report(ctx, target, know, say)
        if not know.knobs:
            raise AgentError(f"the tuner found no constants it may change in {target}",
                             "add literal hyperparameters at module level, or lift the vetoes "
                             "that freeze them")
        if ctx.feedback:
            say(f"Notes from pairlab: {ctx.feedback}")

        imported = {**template_checks.harness_settings(ctx.harness_source, self.device, self.env),
                    **template_checks.workspace_settings(source, ctx.workspace)}
        # A check the current file already fails is evaluated wrongly here (the runs see
        # other settings): it cannot tell candidates apart, so it is not applied.
        unusable = {v.message for v in template_checks.violations(source, imported)}
        for message in sorted(unusable):
            say(f"Not applying train.py's check {message!r}: the current file fails it with "
                "the settings the tuner sees.")
        refusals: list[str] = []
        seen: set[tuple] = set()
        for move in self._candidates(know, len(know.trials)):
            if cancel.is_set():
                raise DraftCancelled()
            config = {**know.base, **dict(move.changes)}
            key = _config_key(config)
            if key in seen or not self._admissible(know, move, key):
                continue
            seen.add(key)
            changes = {name: (know.base[name], new) for name, new in move.changes}
            description = describe(changes, know.constants)
            files = {target: rewrite(source, know.constants, dict(move.changes))}
            if not self._reads_back(files[target], config):
                continue
            rejected = [v for v in template_checks.violations(files[target], imported)
                        if v.message not in unusable]
            if rejected:
                say(f"Skipping {description}: train.py's own check at line "
                    f"{rejected[0].line} would reject it ({rejected[0].message}).")
                self._handed_out.add(key)
                continue
            error = ctx.validate(files)
            if error:
                say(f"Candidate {description} was refused: {error}")
                self._handed_out.add(key)
                refusals.append(error)
                if len(refusals) >= MAX_VALIDATION_TRIES:
                    break
                continue
            self._handed_out.add(key)
            say(f"Proposing {description} ({move.tier}): {move.hypothesis}")
            return Draft(description=description, hypothesis=move.hypothesis, files=files,
                         reasoning="\n".join(lines))
        if refusals:
            raise AgentError(f"the engine refused the tuner's last {len(refusals)} candidates",
                             f"last refusal: {refusals[-1]}", retryable=True)
        raise AgentError("the tuner has no untried change left to propose",
                         "widen the search by editing train.py, or lift a veto")

    # ---- what the journal says ----------------------------------------------------------

    def _target(self, ctx: DraftContext) -> str:
        for path in sorted(ctx.files, key=lambda p: (not p.endswith("train.py"), p)):
            if path in ctx.targets or not ctx.targets:
                return path
        raise AgentError("the tuner has no target file to edit",
                         "the workspace's targets should include train.py")

    def _remember(self, history: list[HistoryItem]) -> list[HistoryItem]:
        """The journal so far: earlier drafts' entries followed by the new ones in `history`."""
        for overlap in range(min(len(self._journal), len(history)), -1, -1):
            if self._journal[len(self._journal) - overlap:] == history[:overlap]:
                break
        self._journal = self._journal + history[overlap:]
        return self._journal

    def _learn(self, ctx: DraftContext, source: str, history: list[HistoryItem]) -> _Knowledge:
        try:
            constants = parse_constants(source, self.device)
        except SyntaxError as exc:
            raise AgentError(f"the tuner cannot parse the target: {exc}",
                             "fix the syntax error in train.py") from exc
        knobs = {name: knob for name, c in constants.items()
                 if (knob := knob_for(name)) is not None and _fits(knob, c.value)}
        base = {name: constants[name].value for name in knobs}
        trials = replay(history, base, self.device)
        know = _Knowledge(constants, knobs, base, trials, noise=ctx.noise_floor or 0.0)
        know.tried_configs = {_config_key(t.config) for t in trials}
        know.tried_configs.add(_config_key(base))
        know.tried_configs |= self._handed_out
        for trial in trials:
            before = {name: old for name, (old, _) in trial.changes.items()}
            changed = tuple((name, new) for name, (_, new) in trial.changes.items())
            know.tried_moves.add(_move_key(before, changed))
            for name in trial.changes:
                know.touched[name] += 1
            if trial.status == "vetoed":
                self._learn_veto(know, trial)
            elif trial.has_outcome:
                self._learn_outcome(know, trial)
        for name in know.frozen:
            knobs.pop(name, None)
        return know

    def _learn_veto(self, know: _Knowledge, trial: Trial) -> None:
        for name, (_, new) in trial.changes.items():
            know.forbidden.add((name, new))
        reason = trial.item.veto_reason
        for name in know.knobs:
            if re.search(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", reason,
                         re.IGNORECASE):
                know.frozen[name] = reason

    def _learn_outcome(self, know: _Knowledge, trial: Trial) -> None:
        for name, (old, new) in trial.changes.items():
            knob = know.knobs.get(name)
            if knob is None or old is None:
                continue
            direction = _direction(knob, old, new)
            if not direction:
                continue
            know.last[name] = (trial, direction)
            know.directions[name].add(direction)
            if trial.status == "keep":
                know.undo.add((name, old))
            if trial.status in FAILURES:
                self._fence_off(know, name, knob, new, direction)

    @staticmethod
    def _fence_off(know: _Knowledge, name: str, knob: Knob, value: object, direction: int):
        """A run that crashed or timed out at `value`: nothing at or past it that way."""
        position = _position(knob, value, know.base[name])
        if position is None:
            return
        low, high = know.limits.get(name, (-math.inf, math.inf))
        know.limits[name] = (low, min(high, position)) if direction > 0 \
            else (max(low, position), high)

    def _report(self, ctx: DraftContext, target: str, know: _Knowledge, say) -> None:
        values = ", ".join(f"{n}={know.constants[n].text}" for n in know.knobs)
        say(f"Read {target}: {len(know.knobs)} tunable constants on the {self.device} "
            f"branch: {values}.")
        counts = Counter(t.status for t in know.trials)
        summary = ", ".join(f"{n} {s}" for s, n in counts.most_common())
        best = f"; best val_bpb {ctx.best_val_bpb:.4f}" if ctx.best_val_bpb is not None else ""
        noise = f", noise floor {know.noise:.4f}" if know.noise else ""
        say(f"Journal: {len(know.trials)} entries ({summary or 'none yet'}){best}{noise}.")
        for trial in [t for t in know.trials if t.changes and t.has_outcome][-4:]:
            delta = f" ({trial.delta:+.4f})" if trial.delta is not None else ""
            say(f"  {trial.item.description}: {trial.status}{delta}")
        for name, reason in know.frozen.items():
            say(f"Not touching {name}: a veto names it ({reason!r}).")

    # ---- candidates, best first ---------------------------------------------------------

    def _candidates(self, know: _Knowledge, draft_number: int) -> Iterator[Move]:
        yield from self._exploit(know)
        yield from self._reverse(know)
        yield from self._priors(know)
        yield from self._refine(know)
        yield from self._explore(know, draft_number)
        yield from self._sweep(know)

    def _by_recency(self, know: _Knowledge) -> list[str]:
        order = {id(t): i for i, t in enumerate(know.trials)}
        names = [n for n in know.last if n in know.knobs]
        return sorted(names, key=lambda n: -order[id(know.last[n][0])])

    def _exploit(self, know: _Knowledge) -> Iterator[Move]:
        for trial in reversed(know.trials):
            if trial.status != "keep" or not trial.changes:
                continue
            live = [(n, know.last[n][1]) for n in trial.changes
                    if n in know.knobs and n in know.last and know.last[n][0] is trial
                    and know.last[n][1]]
            if not live:
                continue
            helped = f"{_verbs(live)} helped last time ({_signed(trial.delta)})"
            # Another step of the size that helped (a refined half step stays half).
            level = min(_level(know.knobs[n], *trial.changes[n]) for n, _ in live)
            if len(live) == 2:
                yield self._move(know, live, level, "exploit",
                                 f"{helped}; another step of both may help again")
            for name, direction in live:
                yield self._move(know, [(name, direction)], level, "exploit",
                                 f"{helped}; a further step in the same direction may help "
                                 "again")

    def _reverse(self, know: _Knowledge) -> Iterator[Move]:
        for name in self._by_recency(know):
            trial, direction = know.last[name]
            if not direction or not self._hurt(know, trial):
                continue
            why = "crashed the run" if trial.status in FAILURES \
                else f"hurt ({_signed(trial.delta)})"
            yield self._move(know, [(name, -direction)], 1.0, "reverse",
                             f"{_verbs([(name, direction)])} {why}; the opposite direction "
                             "may help")

    def _priors(self, know: _Knowledge) -> Iterator[Move]:
        for moves, why in PRIORS:
            present = [(n, d) for n, d in moves if n in know.knobs]
            if not present or all(know.touched[n] for n, _ in present):
                continue
            yield self._move(know, present, 1.0, "prior", why)

    def _refine(self, know: _Knowledge) -> Iterator[Move]:
        names = self._by_recency(know)
        mattered = [n for n in names
                    if know.last[n][0].status == "keep" or self._hurt(know, know.last[n][0])]
        for name in mattered:
            # The constant matters: probe between the points already measured.
            trial, direction = know.last[name]
            first = direction if trial.status == "keep" else -direction
            for d in (first, -first):
                yield self._move(know, [(name, d)], 0.5, "refine",
                                 f"{_verbs([(name, direction)])} last gave "
                                 f"{_signed(trial.delta)}; a half step {_updown(d)} probes "
                                 "closer to its best value")
        for name in names:
            trial, direction = know.last[name]
            if name not in mattered and -direction not in know.directions[name]:
                yield self._move(know, [(name, -direction)], 1.0, "refine",
                                 f"{_verbs([(name, direction)])} made no difference beyond "
                                 f"the noise ({_signed(trial.delta)}); the other direction is "
                                 "untested")

    def _explore(self, know: _Knowledge, draft_number: int) -> Iterator[Move]:
        """Ask TPE, fitted on every finished run, for a value of the least explored knobs."""
        study, finished = self._study(know, draft_number)
        names = sorted(know.knobs, key=lambda n: (know.touched[n], _priority(n)))
        for name in names:
            knob = know.knobs[name]
            for _ in range(6):
                proposal = study.ask()
                value = _suggest(proposal, name, knob, know.base[name])
                if value is None or value == know.base[name]:
                    continue
                source = (f"TPE over {finished} finished runs rates {name} = "
                          f"{format_like(value, know.constants[name].text)} as promising"
                          if finished >= _TPE_STARTUP else
                          f"too few finished runs for a model yet, so a random draw of {name}")
                yield Move(((name, value),), f"{source}; {name} ({knob.role}) is among the "
                           f"least explored constants ({know.touched[name]} changes so far)",
                           "explore")
                break

    def _sweep(self, know: _Knowledge) -> Iterator[Move]:
        for level in (1.0, 0.5, 0.25):
            for name in sorted(know.knobs, key=_priority):
                for direction in (1, -1):
                    yield self._move(know, [(name, direction)], level, "sweep",
                                     f"an untried neighbour of the best configuration: "
                                     f"{_verbs([(name, direction)])} ({know.knobs[name].role})")

    # ---- helpers ------------------------------------------------------------------------

    def _move(self, know: _Knowledge, directions, level: float, tier: str, why: str) -> Move:
        changes = []
        for name, direction in directions:
            value = step(know.knobs[name], know.base[name], direction, level)
            if value is None:
                return Move((), why, tier)
            changes.append((name, value))
        return Move(tuple(changes), why, tier)

    def _reads_back(self, text: str, config: dict[str, object]) -> bool:
        """The rewritten file parses and holds exactly the intended values."""
        try:
            constants = parse_constants(text, self.device)
        except SyntaxError:
            return False
        return all(name in constants and constants[name].value == value
                   for name, value in config.items())

    def _hurt(self, know: _Knowledge, trial: Trial) -> bool:
        if trial.status in FAILURES:
            return True
        return trial.delta is not None and trial.delta > know.noise

    def _admissible(self, know: _Knowledge, move: Move, key: tuple) -> bool:
        if not move.changes or key in know.tried_configs:
            return False
        if _move_key(know.base, move.changes) in know.tried_moves:
            return False
        for name, value in move.changes:
            knob = know.knobs.get(name)
            if knob is None or value == know.base[name] or not _fits(knob, value):
                return False
            if (name, value) in know.forbidden or (name, value) in know.undo:
                return False
            low, high = know.limits.get(name, (-math.inf, math.inf))
            position = _position(knob, value, know.base[name])
            if position is not None and not low < position < high:
                return False
        return True

    def _study(self, know: _Knowledge, draft_number: int) -> tuple[optuna.Study, int]:
        """A fresh in-memory study holding every finished run; returns it and their count."""
        sampler = optuna.samplers.TPESampler(seed=self.seed * 100_003 + draft_number,
                                             n_startup_trials=_TPE_STARTUP, multivariate=False)
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
                encoded = _encode(knob, trial.config.get(name), know.base[name])
                if encoded is not None:
                    params[name], distributions[name] = encoded
            value = trial.item.val_bpb if trial.status not in FAILURES else penalty
            if value is not None:
                finished.append(optuna.trial.create_trial(
                    params=params, distributions=distributions, value=value))
        study.add_trials(finished)
        return study, len(finished)


_TPE_STARTUP = 5


def _fits(knob: Knob, value: object) -> bool:
    if knob.scale == "ladder":
        return not is_number(value) or knob.low <= value <= knob.high
    return is_number(value) and knob.low <= value <= knob.high


def _priority(name: str) -> int:
    order = [n for moves, _ in PRIORS for n, _ in moves] + list(KNOBS)
    return order.index(name) if name in order else len(order)


def _encode(knob: Knob, value: object, base: object):
    """(param, distribution) for optuna, or None for a value off the knob's range."""
    if value is None:
        return None
    if knob.scale == "ladder":
        options = knob.options(base)
        if value not in options:
            return None
        return options.index(value), optuna.distributions.IntDistribution(0, len(options) - 1)
    if not _fits(knob, value):
        return None
    if knob.scale == "int":
        return int(value), optuna.distributions.IntDistribution(int(knob.low), int(knob.high))
    return float(value), optuna.distributions.FloatDistribution(
        knob.low, knob.high, log=knob.scale == "log")


def _suggest(trial: optuna.Trial, name: str, knob: Knob, base: object) -> object | None:
    """TPE's value for one knob, snapped to what a person would write."""
    if knob.scale == "ladder":
        options = knob.options(base)
        return options[trial.suggest_int(name, 0, len(options) - 1)]
    if knob.scale == "int":
        return trial.suggest_int(name, int(knob.low), int(knob.high))
    raw = trial.suggest_float(name, knob.low, knob.high, log=knob.scale == "log")
    if knob.scale == "log":
        return _round_significant(raw)
    grid = knob.step / 2
    return round(round(raw / grid) * grid, 4)


def _verbs(moves) -> str:
    words = []
    for name, direction in moves:
        up, down = (knob_for(name) or UNKNOWN_LR).verbs
        words.append(f"{up if direction > 0 else down} {name}")
    return " together with ".join(words)


def _updown(direction: int) -> str:
    return "up" if direction > 0 else "down"


def _signed(delta: float | None) -> str:
    return f"{delta:+.4f} val_bpb" if delta is not None else "no measured change"
