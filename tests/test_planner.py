"""The planner as a pure function of an immutable view: what to start next; no threads."""

from dataclasses import replace

from engine.planner import Awaiting, LoopView, cap_stop, next_run, should_draft

READY = LoopView(data_ready=True, best_commit="b" * 40, noise_repeats=2, now=100.0)


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
    assert next_run(replace(READY, running=True)) is None
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
                                    running_experiment=True))


def test_sequential_drafting_waits_for_an_idle_trainer_after_the_baseline():
    sequential = replace(READY, drafts_ahead=0)
    assert not should_draft(sequential)
    assert not should_draft(replace(sequential, has_baseline=True, running=True))
    assert should_draft(replace(sequential, has_baseline=True))
