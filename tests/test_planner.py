"""The planner as a pure function of an immutable view: what to start next; no threads."""

from dataclasses import replace

from engine.loop.planner import Awaiting, LoopView, RunPlan, cap_stop, next_run, should_draft

READY = LoopView(data_ready=True, best_commit="b" * 40, noise_repeats=2, now=100.0)
NOISE_RUN = RunPlan("noise", "b" * 40, None, "noise repeat 1 of 2")


def kinds_until_idle(view: LoopView, outcomes) -> list[str]:
    """Play the planner forward: each run's outcome changes the view as the loop would."""
    kinds = []
    for _ in range(10):
        plan = next_run(view)
        if plan is None:
            return kinds
        kinds.append(plan.kind)
        view = outcomes(view, plan)
    return kinds


def test_nothing_starts_before_the_data_is_checked_or_while_paused_or_busy():
    assert next_run(replace(READY, data_ready=False)) is None
    assert next_run(replace(READY, paused=True)) is None
    assert next_run(replace(READY, in_flight=(NOISE_RUN,))) is None
    assert next_run(replace(READY, stopping=True)) is None


def test_the_baseline_comes_first_on_the_best_commit():
    plan = next_run(READY)
    assert (plan.kind, plan.commit, plan.proposal_id) == ("baseline", "b" * 40, None)


def test_after_the_baseline_the_first_proposal_trains_before_the_noise_repeats():
    """Issue 12: a new user sees a judged experiment after two runs."""
    view = replace(READY, has_baseline=True, noise_samples=1, queue=(7,))
    plan = next_run(view)
    assert (plan.kind, plan.proposal_id) == ("experiment", 7)


def test_a_win_waiting_for_the_best_runs_the_best_before_anything_else():
    view = replace(READY, has_baseline=True, noise_samples=1, queue=(8,),
                   awaiting=(Awaiting(7, "c" * 40, "best"),))
    plan = next_run(view)
    assert (plan.kind, plan.commit, plan.proposal_id, plan.label) == (
        "noise", "b" * 40, None, "re-run of the best to judge #7")


def test_a_confirmation_rerun_comes_before_the_next_proposal():
    view = replace(READY, has_baseline=True, noise_samples=3, queue=(8,),
                   awaiting=(Awaiting(7, "c" * 40, "candidate"),))
    plan = next_run(view)
    assert (plan.kind, plan.commit, plan.proposal_id) == ("rerun", "c" * 40, 7)


def test_a_due_rerun_of_the_best_comes_before_the_next_proposal():
    view = replace(READY, has_baseline=True, noise_samples=3, queue=(8,), best_rerun_due=True)
    plan = next_run(view)
    assert (plan.kind, plan.commit, plan.label) == (
        "noise", "b" * 40, "re-run of the best to follow drift")
    assert next_run(replace(view, queue=())) is None     # only before an experiment


def test_noise_repeats_fill_the_idle_trainer_and_stop_once_measured():
    view = replace(READY, has_baseline=True, noise_samples=1)
    assert next_run(view).kind == "noise"
    assert next_run(replace(view, noise_samples=3)) is None


def test_a_whole_session_order_a_loss_then_a_small_win():
    """baseline, a losing experiment (judged at once), then, with the next proposal a win,
    the run of the best it needs, its own re-run, and only then the idle noise work."""
    def outcomes(view, plan):
        if plan.kind == "baseline":
            return replace(view, has_baseline=True, noise_samples=1, queue=(1, 2))
        if plan.kind == "experiment" and plan.proposal_id == 1:
            return replace(view, queue=(2,), experiments_done=1)          # worse: discarded
        if plan.kind == "experiment":
            return replace(view, queue=(), experiments_done=2,
                           awaiting=(Awaiting(2, "c" * 40, "best"),))
        if plan.kind == "noise":
            awaiting = (Awaiting(2, "c" * 40, "candidate"),) if view.awaiting else ()
            return replace(view, noise_samples=view.noise_samples + 1, awaiting=awaiting)
        return replace(view, awaiting=())                                  # rerun: decided
    assert kinds_until_idle(READY, outcomes) == [
        "baseline", "experiment", "experiment", "noise", "rerun", "noise"]


def test_the_cap_stops_experiments_and_idle_noise_but_not_an_open_judgment():
    view = replace(READY, has_baseline=True, noise_samples=1, queue=(3,), experiments_done=1,
                   max_experiments=1)
    assert next_run(view) is None and cap_stop(view)
    judging = replace(view, awaiting=(Awaiting(2, "c" * 40, "best"),))
    assert next_run(judging).kind == "noise" and not cap_stop(judging)
    assert not cap_stop(replace(view, has_baseline=False))


def test_drafting_keeps_drafts_ahead_and_waits_out_a_backoff():
    assert should_draft(READY)
    assert not should_draft(replace(READY, pending=1))
    assert should_draft(replace(READY, drafts_ahead=2, pending=1))
    assert not should_draft(replace(READY, drafting=True))
    assert not should_draft(replace(READY, paused=True))
    assert not should_draft(replace(READY, draft_allowed_at=101.0))
    assert not should_draft(replace(READY, max_experiments=2, experiments_done=1,
                                    in_flight=(RunPlan("experiment", "", 5, ""),)))


def test_sequential_drafting_waits_for_an_idle_trainer_after_the_baseline():
    sequential = replace(READY, drafts_ahead=0)
    assert not should_draft(sequential)
    assert not should_draft(replace(sequential, has_baseline=True, in_flight=(NOISE_RUN,)))
    assert should_draft(replace(sequential, has_baseline=True))


# ---------------------------------------------------------------------- speculation (issue 10)

SPECULATING = replace(READY, has_baseline=True, noise_samples=3, speculate=True, pending=1,
                      unspeculated=(4,))


def test_a_free_trainer_trains_the_oldest_proposal_waiting_for_review():
    plan = next_run(replace(SPECULATING, pending=2, unspeculated=(4, 5)))
    assert (plan.kind, plan.proposal_id, plan.commit) == ("speculative", 4, "")
    assert next_run(replace(SPECULATING, speculate=False)) is None     # the setting, or auto
    assert next_run(replace(SPECULATING, unspeculated=())) is None     # trained ahead already


def test_accepted_work_and_the_noise_repeats_come_before_speculation():
    """The noise gate is never lost: the repeats run first, and speculation only fills
    time the trainer would have spent idle."""
    assert next_run(replace(SPECULATING, queue=(3,))).kind == "experiment"
    assert next_run(replace(SPECULATING, noise_samples=1)).label == "noise repeat 1 of 2"
    judged = replace(SPECULATING, awaiting=(Awaiting(2, "c" * 40, "best"),))
    assert next_run(judged).kind == "noise"


def test_the_cap_counts_runs_in_flight_speculation_included():
    capped = replace(SPECULATING, max_experiments=2, experiments_done=1,
                     in_flight=(RunPlan("speculative", "", 3, ""),), slots=2)
    assert next_run(capped) is None
    assert next_run(replace(capped, in_flight=(), slots=1)).kind == "speculative"


def test_a_proposal_training_ahead_of_its_review_lets_the_agent_draft_the_next():
    training_ahead = replace(SPECULATING, unspeculated=(),
                             in_flight=(RunPlan("speculative", "", 4, ""),))
    assert should_draft(training_ahead)
    assert not should_draft(replace(training_ahead, in_flight=()))   # trained: it waits


# ---------------------------------------------------------------------- K slots (issue 11)

def test_each_free_slot_takes_the_next_plan_that_no_slot_runs():
    two = replace(READY, slots=2, has_baseline=True, noise_samples=3, queue=(7, 8))
    assert next_run(replace(two, in_flight=(RunPlan("experiment", "", 7, ""),),
                            queue=(8,))).proposal_id == 8
    full = replace(two, in_flight=(RunPlan("experiment", "", 7, ""), NOISE_RUN))
    assert next_run(full) is None


def test_a_judgment_gets_one_run_however_many_slots_are_free():
    judging = replace(READY, slots=3, has_baseline=True, noise_samples=3,
                      awaiting=(Awaiting(7, "c" * 40, "best"),))
    first = next_run(judging)
    assert (first.kind, first.judging) == ("noise", 7)
    assert next_run(replace(judging, in_flight=(first,))) is None


def test_other_slots_measure_the_noise_while_the_baseline_trains():
    baseline = RunPlan("baseline", "b" * 40, None, "baseline")
    two = replace(READY, slots=3, in_flight=(baseline,))
    assert next_run(two).label == "noise repeat 1 of 2"
    both = replace(two, in_flight=(baseline, next_run(two)))
    assert next_run(both).label == "noise repeat 2 of 2"
    assert next_run(replace(both, slots=4, in_flight=both.in_flight + (NOISE_RUN,))) is None
