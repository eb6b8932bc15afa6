"""The promotion ladder: does a kept change still win at a larger scale? Pure functions.

The ladder is a list of depths (train.py's DEPTH), configured in the workspace. A kept
change whose depth is a rung, and whose parent has that depth too, is trained at the next
rung together with a same-scale baseline: its parent with DEPTH set to that rung. Both are
side commits that never land on the research branch. They are judged with the keep rule
(engine/loop/keep_rule.py) at that scale: the baseline plays the best, the noise is pooled over
the repeated runs at that depth only (a larger model has its own run-to-run noise), and a
difference inside the margin is confirmed by another run of one side, as the main loop does.
A win that holds climbs to the next rung; one that does not stops there.

Kept changes are promoted oldest first, one promotion at a time, its baseline first. A change
that sets DEPTH itself is not promoted: setting DEPTH on both sides would undo it.

When promotion runs are planned (engine/loop/planner.py): only when nothing of the main loop needs
the trainer (the baseline, the judge's confirmations, accepted experiments, the noise
repeats), so the ladder uses the time the trainer would otherwise stand idle; a promotion run
in flight gives the trainer back as soon as the main loop needs it (planner.preempts).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.base.constants import parse_constants, rewrite
from engine.base.records import PromotionRecord
from engine.loop import keep_rule, keep_stats
from engine.loop.keep_rule import Action, KeepDecision, KeepRuleSettings

DEPTH_NAME = "DEPTH"
# The template's `DEPTH = 4 if CPU else 8`: one rung up from it by default.
DEFAULT_LADDERS = {"cpu": (4, 8), "gpu": (8, 16)}
SIDES = ("baseline", "change")


@dataclass(frozen=True)
class KeptChange:
    """A kept experiment, as the ladder sees it."""

    run_id: str                     # the kept experiment's run
    experiment: int                 # its number in the experiments table
    commit: str
    parent: str                     # the commit it was kept over: its same-scale baseline
    depth: int | None               # DEPTH at the commit on its device (None: not a literal)
    parent_depth: int | None


@dataclass(frozen=True)
class LadderView:
    ladder: tuple[int, ...] = ()
    kept: tuple[KeptChange, ...] = ()           # in the order they were kept
    promotions: tuple[PromotionRecord, ...] = ()
    rules: KeepRuleSettings = field(default_factory=KeepRuleSettings)


@dataclass(frozen=True)
class PromotionStep:
    """The promotion run to start: one side of one change at one rung."""

    run_id: str                     # the kept experiment's run
    experiment: int
    depth: int
    side: str                       # "baseline" | "change"
    commit: str                     # the commit trained with DEPTH = depth
    promotion_id: int | None        # None: the first run of a new promotion

    @property
    def label(self) -> str:
        what = "its baseline" if self.side == "baseline" else "the change"
        return f"promotion of #{self.experiment} to depth {self.depth}: {what}"


# ---------------------------------------------------------------------------
# The ladder and train.py's depth
# ---------------------------------------------------------------------------

def device_family(device: str) -> str:
    """"cpu" or "gpu": which branch of `X if CPU else Y` a run on `device` reads."""
    return "cpu" if device.strip().lower().startswith("cpu") else "gpu"


def ladder_for(configured: list[int] | None, device: str) -> tuple[int, ...]:
    """The workspace's ladder, or the default for the device family; one rung is off."""
    if configured is None:
        return DEFAULT_LADDERS[device_family(device)]
    return tuple(configured)




def next_rung(ladder: tuple[int, ...], depth: int) -> int | None:
    """The rung above `depth`, when `depth` is a rung and not the top one."""
    if depth not in ladder:
        return None
    index = ladder.index(depth)
    return ladder[index + 1] if index + 1 < len(ladder) else None


def depth_of(source: str, device: str) -> int | None:
    """DEPTH as a run on `device` reads it, when it is an integer literal."""
    try:
        constant = parse_constants(source, device_family(device)).get(DEPTH_NAME)
    except SyntaxError:
        return None
    value = constant.value if constant is not None else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def with_depth(source: str, device: str, depth: int) -> str:
    """The source with DEPTH set to `depth` for `device` (only that literal changes)."""
    constants = parse_constants(source, device_family(device))
    if DEPTH_NAME not in constants:
        raise ValueError(f"{DEPTH_NAME} is not a literal constant of this file")
    return rewrite(source, constants, {DEPTH_NAME: depth})


# ---------------------------------------------------------------------------
# What to run next, and the verdict
# ---------------------------------------------------------------------------

def noise_at(view: LadderView, depth: int) -> keep_stats.Noise:
    """Noise pooled over the repeated sides of every promotion at `depth`."""
    groups = [runs for p in view.promotions if p.depth == depth
              for runs in (p.baseline_runs, p.change_runs)]
    return keep_stats.pooled_noise(groups)


def verdict(view: LadderView, record: PromotionRecord) -> KeepDecision | None:
    """The keep rule on the promotion's runs (None until both sides have one): KEEP means
    the win held at this depth, DISCARD that it did not, CONFIRM that a side runs again."""
    if not record.baseline_runs or not record.change_runs:
        return None
    return keep_rule.judge(record.baseline_runs, record.change_runs,
                           noise_at(view, record.depth), view.rules)


def next_step(view: LadderView) -> PromotionStep | None:
    """The next promotion run, or None when nothing on the ladder waits."""
    if len(view.ladder) < 2:
        return None
    records = {(p.run_id, p.depth): p for p in view.promotions}
    for kept in view.kept:
        if kept.depth is None or kept.parent_depth != kept.depth:
            continue
        depth = kept.depth
        while (rung := next_rung(view.ladder, depth)) is not None:
            record = records.get((kept.run_id, rung))
            if record is None:
                return _step(kept, rung, "baseline", None)
            if record.held is False:
                break
            if record.held is None:
                side = _side_to_run(view, record)
                if side is not None:
                    return _step(kept, rung, side, record.id)
                break                       # decided but not settled: nothing to run
            depth = rung
    return None


def _side_to_run(view: LadderView, record: PromotionRecord) -> str | None:
    if not record.baseline_runs:
        return "baseline"
    if not record.change_runs:
        return "change"
    decision = verdict(view, record)
    if decision.action is not Action.CONFIRM:
        return None
    return "baseline" if decision.rerun == "best" else "change"


def _step(kept: KeptChange, depth: int, side: str, promotion_id: int | None) -> PromotionStep:
    commit = kept.parent if side == "baseline" else kept.commit
    return PromotionStep(kept.run_id, kept.experiment, depth, side, commit, promotion_id)


def describe(decision: KeepDecision, depth: int) -> str:
    """One line for the journal, the app and the report."""
    held = "the win held" if decision.action is Action.KEEP else "the win did not hold"
    return f"{held} at depth {depth}: {decision.reason}"
