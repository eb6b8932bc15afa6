"""The planner: given an immutable view of the loop, what to start next. Pure functions.

One trainer slot, one drafter. The order of runs gives a new user a judged experiment after
two runs without giving up the noise gate (issue 12):

1. the baseline;
2. the judge's needs first: a win inside the keep rule's margin is confirmed by a run of the
   best (which also measures the noise) or of the candidate, as the judge asked;
3. the next accepted proposal (a result no better than the best needs no noise estimate),
   after a re-run of the best when one is due to follow drift;
4. with nothing else to train, the remaining noise repeats, so the accelerator works while
   the human reviews or the agent drafts;
5. with none of the main loop's runs to start, the promotion ladder's next run
   (engine/promotion.py); it also runs after --max-experiments, before the loop stops, and
   gives the trainer back at once when the main loop needs it (preempts).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from engine import promotion


@dataclass(frozen=True)
class Awaiting:
    """An experiment that trained and waits for the judge's next run."""

    proposal_id: int
    commit: str
    need: str                        # "best" | "candidate": the run the judge asked for


@dataclass(frozen=True)
class LoopView:
    stopping: bool = False
    paused: bool = False
    data_ready: bool = False         # the training data was checked and is whole
    running: bool = False            # the trainer slot is busy
    running_experiment: bool = False # ...with a proposal's run
    running_promotion: bool = False  # ...with a promotion run, which yields to the main loop
    drafting: bool = False
    best_commit: str = ""            # the branch's best (the start commit before a baseline)
    has_baseline: bool = False
    noise_samples: int = 0           # baseline and noise-repeat values measured
    noise_repeats: int = 0           # wanted beyond the baseline
    awaiting: tuple[Awaiting, ...] = ()
    best_rerun_due: bool = False     # keep_rule.should_rerun_best: the best runs again first
    queue: tuple[int, ...] = ()      # accepted proposals, in order
    pending: int = 0                 # proposals waiting for review
    drafts_ahead: int = 1
    experiments_done: int = 0        # experiments with an outcome (for the cap)
    max_experiments: int | None = None
    draft_allowed_at: float = 0.0    # a failed agent waits until then (backoff)
    now: float = 0.0
    ladder: promotion.LadderView = field(default_factory=promotion.LadderView)

    @property
    def noise_measured(self) -> bool:
        return self.noise_samples >= 1 + self.noise_repeats

    @property
    def cap_reached(self) -> bool:
        return (self.max_experiments is not None
                and self.experiments_done >= self.max_experiments)


@dataclass(frozen=True)
class RunPlan:
    kind: str                        # baseline | noise | rerun | experiment
    commit: str                      # "" for an experiment: committed when it starts
    proposal_id: int | None
    label: str
    promotion: promotion.PromotionStep | None = None   # kind "promotion": what it trains


def next_run(view: LoopView) -> RunPlan | None:
    """The run to start now, or None."""
    if view.stopping or view.paused or view.running or not view.data_ready:
        return None
    if not view.has_baseline:
        return RunPlan("baseline", view.best_commit, None, "baseline")
    for waiting in view.awaiting:
        if waiting.need == "best":
            return RunPlan("noise", view.best_commit, None,
                           f"re-run of the best to judge #{waiting.proposal_id}")
    for waiting in view.awaiting:
        if waiting.need == "candidate":
            return RunPlan("rerun", waiting.commit, waiting.proposal_id,
                           f"re-run of #{waiting.proposal_id} to confirm a win")
    if view.queue and not view.cap_reached:
        if view.best_rerun_due:
            return RunPlan("noise", view.best_commit, None, "re-run of the best to follow drift")
        return RunPlan("experiment", "", view.queue[0], "")
    if not view.noise_measured and not view.cap_reached:
        return _noise(view)
    return _promotion(view)


def _promotion(view: LoopView) -> RunPlan | None:
    step = promotion.next_step(view.ladder)
    if step is None:
        return None
    return RunPlan("promotion", step.commit, None, step.label, promotion=step)


def preempts(view: LoopView) -> bool:
    """A promotion run is training and the main loop has a run to start: stop the
    promotion (it is re-queued) so it never holds the trainer the main loop needs."""
    if not view.running_promotion:
        return False
    plan = next_run(replace(view, running=False, running_promotion=False))
    return plan is not None and plan.kind != "promotion"


def _noise(view: LoopView) -> RunPlan:
    done = view.noise_samples
    return RunPlan("noise", view.best_commit, None,
                   f"noise repeat {done} of {view.noise_repeats}")


def should_draft(view: LoopView) -> bool:
    """Keep `drafts_ahead` proposals ahead of the trainer; 0 drafts only when it is idle."""
    if view.stopping or view.paused or view.drafting or view.now < view.draft_allowed_at:
        return False
    ahead = view.pending + len(view.queue)
    if view.drafts_ahead <= 0:
        if ahead or view.running or not view.has_baseline:
            return False                 # sequential, like autoresearch
    elif ahead >= view.drafts_ahead:
        return False
    cap = view.max_experiments
    in_flight = 1 if view.running_experiment else 0
    if cap is not None and view.experiments_done + ahead + in_flight >= cap:
        return False
    return True


def cap_stop(view: LoopView) -> bool:
    """Stop for --max-experiments: the baseline ran, the cap is reached, no judgment is
    still open and the promotion ladder has nothing left to train."""
    return (view.cap_reached and view.has_baseline and not view.awaiting and not view.running
            and promotion.next_step(view.ladder) is None)
