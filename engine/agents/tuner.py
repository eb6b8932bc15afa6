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
from collections import Counter
from typing import Iterator, Mapping

import optuna

from engine.agents import template_checks, tpe
from engine.agents.base import AgentError, DraftCancelled, DraftContext, Emit, HistoryItem
from engine.agents.knobs import (PRIORS, UNKNOWN_LR, Knob, direction_of, knob_for, level_of,
                                  position_of, step)
from engine.agents.tpe import TPE_STARTUP, fits, priority, suggest
from engine.agents.trials import (FAILURES, Knowledge, Move, Trial, config_key, describe,
                                   move_key, replay)
from engine.base.constants import format_like, parse_constants, rewrite
from engine.base.records import Draft

optuna.logging.set_verbosity(optuna.logging.WARNING)

MAX_VALIDATION_TRIES = 4

# ---------------------------------------------------------------------------
# The search
# ---------------------------------------------------------------------------


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

        imported, unusable = self._checks(ctx, source, say)
        refusals: list[str] = []
        seen: set[tuple] = set()
        for move in self._candidates(know, len(know.trials)):
            if cancel.is_set():
                raise DraftCancelled()
            config = {**know.base, **dict(move.changes)}
            key = config_key(config)
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

    def _checks(self, ctx: DraftContext, source: str, say) -> tuple[dict, set[str]]:
        """(settings, unusable): what train.py's own checks see, and the messages of those
        the current file already fails. Such a check is evaluated wrongly here (the runs see
        other settings): it cannot tell candidates apart, so it is not applied."""
        imported = {**template_checks.harness_settings(ctx.harness_source, self.device, self.env),
                    **template_checks.workspace_settings(source, ctx.workspace)}
        unusable = {v.message for v in template_checks.violations(source, imported)}
        for message in sorted(unusable):
            say(f"Not applying train.py's check {message!r}: the current file fails it with "
                "the settings the tuner sees.")
        return imported, unusable

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

    def _learn(self, ctx: DraftContext, source: str, history: list[HistoryItem]) -> Knowledge:
        try:
            constants = parse_constants(source, self.device)
        except SyntaxError as exc:
            raise AgentError(f"the tuner cannot parse the target: {exc}",
                             "fix the syntax error in train.py") from exc
        knobs = {name: knob for name, c in constants.items()
                 if (knob := knob_for(name)) is not None and fits(knob, c.value)}
        base = {name: constants[name].value for name in knobs}
        trials = replay(history, base, self.device)
        know = Knowledge(constants, knobs, base, trials, noise=ctx.noise_floor or 0.0)
        know.tried_configs = {config_key(t.config) for t in trials}
        know.tried_configs.add(config_key(base))
        know.tried_configs |= self._handed_out
        for trial in trials:
            before = {name: old for name, (old, _) in trial.changes.items()}
            changed = tuple((name, new) for name, (_, new) in trial.changes.items())
            know.tried_moves.add(move_key(before, changed))
            for name in trial.changes:
                know.touched[name] += 1
            if trial.status == "vetoed":
                self._learn_veto(know, trial)
            elif trial.has_outcome:
                self._learn_outcome(know, trial)
        for name in know.frozen:
            knobs.pop(name, None)
        return know

    def _learn_veto(self, know: Knowledge, trial: Trial) -> None:
        for name, (_, new) in trial.changes.items():
            know.forbidden.add((name, new))
        reason = trial.item.veto_reason
        for name in know.knobs:
            if re.search(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", reason,
                         re.IGNORECASE):
                know.frozen[name] = reason

    def _learn_outcome(self, know: Knowledge, trial: Trial) -> None:
        for name, (old, new) in trial.changes.items():
            knob = know.knobs.get(name)
            if knob is None or old is None:
                continue
            direction = direction_of(knob, old, new)
            if not direction:
                continue
            know.last[name] = (trial, direction)
            know.directions[name].add(direction)
            if trial.status == "keep":
                know.undo.add((name, old))
            if trial.status in FAILURES:
                self._fence_off(know, name, knob, new, direction)

    @staticmethod
    def _fence_off(know: Knowledge, name: str, knob: Knob, value: object, direction: int):
        """A run that crashed or timed out at `value`: nothing at or past it that way."""
        position = position_of(knob, value, know.base[name])
        if position is None:
            return
        low, high = know.limits.get(name, (-math.inf, math.inf))
        know.limits[name] = (low, min(high, position)) if direction > 0 \
            else (max(low, position), high)

    def _report(self, ctx: DraftContext, target: str, know: Knowledge, say) -> None:
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

    def _candidates(self, know: Knowledge, draft_number: int) -> Iterator[Move]:
        yield from self._exploit(know)
        yield from self._reverse(know)
        yield from self._priors(know)
        yield from self._refine(know)
        yield from self._explore(know, draft_number)
        yield from self._sweep(know)

    def _by_recency(self, know: Knowledge) -> list[str]:
        order = {id(t): i for i, t in enumerate(know.trials)}
        names = [n for n in know.last if n in know.knobs]
        return sorted(names, key=lambda n: -order[id(know.last[n][0])])

    def _exploit(self, know: Knowledge) -> Iterator[Move]:
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
            level = min(level_of(know.knobs[n], *trial.changes[n]) for n, _ in live)
            if len(live) == 2:
                yield self._move(know, live, level, "exploit",
                                 f"{helped}; another step of both may help again")
            for name, direction in live:
                yield self._move(know, [(name, direction)], level, "exploit",
                                 f"{helped}; a further step in the same direction may help "
                                 "again")

    def _reverse(self, know: Knowledge) -> Iterator[Move]:
        for name in self._by_recency(know):
            trial, direction = know.last[name]
            if not direction or not self._hurt(know, trial):
                continue
            why = "crashed the run" if trial.status in FAILURES \
                else f"hurt ({_signed(trial.delta)})"
            yield self._move(know, [(name, -direction)], 1.0, "reverse",
                             f"{_verbs([(name, direction)])} {why}; the opposite direction "
                             "may help")

    def _priors(self, know: Knowledge) -> Iterator[Move]:
        for moves, why in PRIORS:
            present = [(n, d) for n, d in moves if n in know.knobs]
            if not present or all(know.touched[n] for n, _ in present):
                continue
            yield self._move(know, present, 1.0, "prior", why)

    def _refine(self, know: Knowledge) -> Iterator[Move]:
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

    def _explore(self, know: Knowledge, draft_number: int) -> Iterator[Move]:
        """Ask TPE, fitted on every finished run, for a value of the least explored knobs."""
        study, finished = tpe.study(know, self.seed, draft_number)
        names = sorted(know.knobs, key=lambda n: (know.touched[n], priority(n)))
        for name in names:
            knob = know.knobs[name]
            for _ in range(6):
                proposal = study.ask()
                value = suggest(proposal, name, knob, know.base[name])
                if value is None or value == know.base[name]:
                    continue
                source = (f"TPE over {finished} finished runs rates {name} = "
                          f"{format_like(value, know.constants[name].text)} as promising"
                          if finished >= TPE_STARTUP else
                          f"too few finished runs for a model yet, so a random draw of {name}")
                yield Move(((name, value),), f"{source}; {name} ({knob.role}) is among the "
                           f"least explored constants ({know.touched[name]} changes so far)",
                           "explore")
                break

    def _sweep(self, know: Knowledge) -> Iterator[Move]:
        for level in (1.0, 0.5, 0.25):
            for name in sorted(know.knobs, key=priority):
                for direction in (1, -1):
                    yield self._move(know, [(name, direction)], level, "sweep",
                                     f"an untried neighbour of the best configuration: "
                                     f"{_verbs([(name, direction)])} ({know.knobs[name].role})")

    # ---- helpers ------------------------------------------------------------------------

    def _move(self, know: Knowledge, directions, level: float, tier: str, why: str) -> Move:
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

    def _hurt(self, know: Knowledge, trial: Trial) -> bool:
        if trial.status in FAILURES:
            return True
        return trial.delta is not None and trial.delta > know.noise

    def _admissible(self, know: Knowledge, move: Move, key: tuple) -> bool:
        if not move.changes or key in know.tried_configs:
            return False
        if move_key(know.base, move.changes) in know.tried_moves:
            return False
        for name, value in move.changes:
            knob = know.knobs.get(name)
            if knob is None or value == know.base[name] or not fits(knob, value):
                return False
            if (name, value) in know.forbidden or (name, value) in know.undo:
                return False
            low, high = know.limits.get(name, (-math.inf, math.inf))
            position = position_of(knob, value, know.base[name])
            if position is not None and not low < position < high:
                return False
        return True


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
