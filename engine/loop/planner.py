"""The planner: given an immutable view of the loop, what to start next. Pure functions.

K trainer slots (one per accelerator), one drafter. The order of runs gives a new user a
judged experiment after two runs without giving up the noise gate (issue 12); each free slot
takes the first of these that no other slot is already running:

1. the baseline (other slots meanwhile run the noise repeats on the same commit);
2. the judge's needs first: a win inside the keep rule's margin is confirmed by a run of the
   best (which also measures the noise) or of the candidate, as the judge asked;
3. the next accepted proposal (a result no better than the best needs no noise estimate),
   after a re-run of the best when one is due to follow drift;
4. with nothing else to train, the remaining noise repeats, so the accelerator works while
   the human reviews or the agent drafts;
5. in review mode, speculation (issue 10): the oldest proposal waiting for a human trains
   before anyone accepted it, in its slot's own worktree. It comes after the noise repeats
   on purpose: they are few, every judged win needs the noise they measure, and a slot
   taken by speculation would otherwise keep them from ever running; speculation only
   fills time the trainer would have spent idle.
6. with none of the main loop's runs to start, the promotion ladder's next run
   (engine/loop/promotion.py), one at a time, in a free slot's worktree; it also runs after
   --max-experiments, before the loop stops.

Promotions never block the main loop (issue 11): a promotion run is stopped and re-queued
(`preempts`) when every slot is busy and the main loop has a baseline, noise repeat,
confirmation or accepted experiment to start. Speculation (step 5) is main-loop work, so it
takes a free slot before a promotion does, but it does not stop a promotion that trains:
it is a head start on a decision the human has not made, and in review mode a proposal
waits for speculation nearly all the time, so preempting for it would starve the ladder.
Once the human accepts that proposal it is an experiment, which does preempt.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum

from engine.base.records import RunKind
from engine.loop import promotion


def unattended(mode: str, deciding_clients: int) -> bool:
    """Nobody can press a key: auto mode with no app attached that may decide. A failure
    the loop cannot go on from then ends the engine (non-zero exit) rather than pausing it
    for a human who is not there; in review mode, or with an app attached, it pauses."""
    return mode == "auto" and deciding_clients == 0


class Need(StrEnum):
    """What a trained, undecided experiment waits for."""

    BEST = "best"                    # a run of the best (the keep rule's rerun)
    CANDIDATE = "candidate"          # a run of its own commit
    HUMAN = "human"                  # a held win: a human's accept or veto


@dataclass(frozen=True)
class Awaiting:
    """An experiment that trained and waits for the judge's next run."""

    proposal_id: int
    commit: str
    need: Need                       # BEST | CANDIDATE: the run the judge asked for


@dataclass(frozen=True)
class RunPlan:
    kind: RunKind
    commit: str                      # "" for a proposal's run: committed when it starts
    proposal_id: int | None
    label: str
    judging: int | None = None       # the proposal whose judgment this run serves
    promotion: promotion.PromotionStep | None = None   # kind "promotion": what it trains


@dataclass(frozen=True)
class LoopView:
    stopping: bool = False
    paused: bool = False
    data_ready: bool = False         # the training data was checked and is whole
    slots: int = 1                   # trainer slots
    in_flight: tuple[RunPlan, ...] = ()   # what the busy slots train
    drafting: bool = False
    best_commit: str = ""            # the branch's best (the start commit before a baseline)
    has_baseline: bool = False
    noise_samples: int = 0           # baseline and noise-repeat values measured
    noise_repeats: int = 0           # wanted beyond the baseline
    awaiting: tuple[Awaiting, ...] = ()
    best_rerun_due: bool = False     # keep_rule.should_rerun_best: the best runs again first
    queue: tuple[int, ...] = ()      # accepted proposals, in order
    pending: int = 0                 # proposals waiting for review
    speculate: bool = False          # review mode with speculation on
    unspeculated: tuple[int, ...] = ()   # waiting for review, never trained ahead, oldest first
    drafts_ahead: int = 1
    experiments_done: int = 0        # experiments with an outcome (for the cap)
    max_experiments: int | None = None
    draft_allowed_at: float = 0.0    # a failed agent waits until then (backoff)
    now: float = 0.0
    ladder: promotion.LadderView = field(default_factory=promotion.LadderView)

    @property
    def running(self) -> bool:
        return bool(self.in_flight)

    @property
    def free_slots(self) -> int:
        return self.slots - len(self.in_flight)

    def in_flight_of(self, kind: str) -> list[RunPlan]:
        return [plan for plan in self.in_flight if plan.kind == kind]

    @property
    def samples_planned(self) -> int:
        """Noise samples measured, and those the busy slots are measuring."""
        return (self.noise_samples + len(self.in_flight_of(RunKind.NOISE))
                + len(self.in_flight_of(RunKind.BASELINE)))

    @property
    def noise_measured(self) -> bool:
        return self.samples_planned >= 1 + self.noise_repeats

    @property
    def cap_reached(self) -> bool:
        return (self.max_experiments is not None
                and self.experiments_done >= self.max_experiments)

    @property
    def room_for_experiment(self) -> bool:
        """Below the cap, counting the proposals' runs in flight (one per slot)."""
        started = (self.experiments_done + len(self.in_flight_of(RunKind.EXPERIMENT))
                   + len(self.in_flight_of(RunKind.SPECULATIVE)))
        return self.max_experiments is None or started < self.max_experiments


def next_run(view: LoopView) -> RunPlan | None:
    """The run for the next free slot, or None."""
    if view.stopping or view.paused or view.free_slots <= 0 or not view.data_ready:
        return None
    served = {plan.judging for plan in view.in_flight} - {None}
    if not view.has_baseline:
        if not view.in_flight_of(RunKind.BASELINE):
            return RunPlan(RunKind.BASELINE, view.best_commit, None, RunKind.BASELINE)
        return None if view.noise_measured else _noise(view)
    for waiting in view.awaiting:
        if waiting.need == Need.BEST and waiting.proposal_id not in served:
            return RunPlan(RunKind.NOISE, view.best_commit, None,
                           f"re-run of the best to judge #{waiting.proposal_id}",
                           judging=waiting.proposal_id)
    for waiting in view.awaiting:
        if waiting.need == Need.CANDIDATE and waiting.proposal_id not in served:
            return RunPlan(RunKind.RERUN, waiting.commit, waiting.proposal_id,
                           f"re-run of #{waiting.proposal_id} to confirm a win",
                           judging=waiting.proposal_id)
    if view.queue and view.room_for_experiment:
        if view.best_rerun_due and not view.in_flight_of(RunKind.NOISE):
            return RunPlan(RunKind.NOISE, view.best_commit, None,
                           "re-run of the best to follow drift")
        return RunPlan(RunKind.EXPERIMENT, "", view.queue[0], "")
    if not view.noise_measured and not view.cap_reached:
        return _noise(view)
    if view.speculate and view.unspeculated and view.room_for_experiment:
        return RunPlan(RunKind.SPECULATIVE, "", view.unspeculated[0], "")
    return _promotion(view)


def _promotion(view: LoopView) -> RunPlan | None:
    if view.in_flight_of(RunKind.PROMOTION):
        return None                  # one at a time: the ladder plans from finished runs
    step = promotion.next_step(view.ladder)
    if step is None:
        return None
    return RunPlan(RunKind.PROMOTION, step.commit, None, step.label, promotion=step)


# not speculation
PREEMPTING_KINDS = (RunKind.BASELINE, RunKind.NOISE, RunKind.RERUN, RunKind.EXPERIMENT)


def preempts(view: LoopView) -> bool:
    """A promotion run holds a slot the main loop needs: every slot is busy and, without
    the promotion, a baseline, noise repeat, confirmation or accepted experiment would
    start. Stop the promotion (it is re-queued)."""
    if not view.in_flight_of(RunKind.PROMOTION) or view.free_slots > 0:
        return False
    rest = tuple(plan for plan in view.in_flight if plan.kind != RunKind.PROMOTION)
    plan = next_run(replace(view, in_flight=rest))
    return plan is not None and plan.kind in PREEMPTING_KINDS


def _noise(view: LoopView) -> RunPlan:
    return RunPlan(RunKind.NOISE, view.best_commit, None,
                   f"noise repeat {view.samples_planned} of {view.noise_repeats}")


def should_draft(view: LoopView) -> bool:
    """Keep `drafts_ahead` proposals ahead of the trainer; 0 drafts only when it is idle."""
    if view.stopping or view.paused or view.drafting or view.now < view.draft_allowed_at:
        return False
    # a proposal training ahead of its review is not waiting for the trainer: it is fed
    ahead = view.pending - len(view.in_flight_of(RunKind.SPECULATIVE)) + len(view.queue)
    if view.drafts_ahead <= 0:
        main_loop_running = any(plan.kind != RunKind.PROMOTION for plan in view.in_flight)
        if ahead or main_loop_running or not view.has_baseline:
            return False                 # sequential, like autoresearch (a promotion yields)
    elif ahead >= view.drafts_ahead:
        return False
    cap = view.max_experiments
    in_flight = (len(view.in_flight_of(RunKind.EXPERIMENT))
                 + len(view.in_flight_of(RunKind.SPECULATIVE)))
    if cap is not None and view.experiments_done + ahead + in_flight >= cap:
        return False
    return True


def cap_stop(view: LoopView) -> bool:
    """Stop for --max-experiments: the baseline ran, the cap is reached, no judgment is
    still open and the promotion ladder has nothing left to train."""
    return (view.cap_reached and view.has_baseline and not view.awaiting and not view.running
            and promotion.next_step(view.ladder) is None)
