"""The keep rule as a pure function: numbers in, a typed decision out."""

import dataclasses
import math

import pytest

from engine.loop.keep_rule import (DEBIASED, SEQUENTIAL, Action, KeepRuleSettings, judge, recheck,
                                   sequential_bounds, settings_for, should_rerun_best)
from engine.loop.keep_stats import Noise, discounted_mean, margin, pooled_noise, student_t_critical

# Exact Student's t quantiles at the one-sided level of z = 2 (0.97725), from tables.
T_AT_Z2 = {2: 4.527, 3: 3.307, 5: 2.649, 10: 2.284, 30: 2.088}


def noise_of(sigma: float, dof: int) -> Noise:
    return Noise(sigma, dof, 1)


def test_pooled_noise_weights_each_group_by_its_degrees_of_freedom():
    # group a: mean 2, squares 2 (dof 2); group b: mean 5, squares 8 (dof 1); singles add nothing
    noise = pooled_noise([[1.0, 2.0, 3.0], [3.0, 7.0], [9.0]])
    assert noise.dof == 3 and noise.groups == 2
    assert noise.sigma == pytest.approx(math.sqrt(10 / 3))


def test_pooled_noise_without_repeats_is_unknown():
    assert pooled_noise([[1.0], [2.0]]) == Noise(None, 0, 0)


@pytest.mark.parametrize("dof,exact", sorted(T_AT_Z2.items()))
def test_t_critical_matches_the_tables(dof, exact):
    assert student_t_critical(2.0, dof) == pytest.approx(exact, rel=0.01)


def test_margin_is_k_standard_errors_of_a_difference_of_means():
    sigma, k = 0.01, 2.0
    assert margin(sigma, 10, 4, 4, k) == pytest.approx(
        student_t_critical(k, 10) * sigma * math.sqrt(1 / 4 + 1 / 4))
    # more runs on either side shrink it
    assert margin(sigma, 10, 8, 4, k) < margin(sigma, 10, 4, 4, k)


def test_the_best_is_the_mean_of_its_runs_not_its_first_draw():
    # the issue's baseline: a single draw of 1.994282, a mean of 1.991540
    best = [1.994282, 1.996000, 1.984339]
    decision = judge(best, [1.992], pooled_noise([best]))
    assert decision.best_mean == pytest.approx(1.991540, abs=1e-6)
    assert decision.action is Action.DISCARD          # better than the first draw, not the mean
    assert "no better than the best" in decision.reason


def test_the_issue_kept_change_is_not_a_keep():
    # WARMDOWN_RATIO 0.5 -> 0.6: mean of two runs 1.987541, a third of the measured spread
    best = [1.994282, 1.996000, 1.984339]
    candidate = [1.9885, 1.986582]
    decision = judge(best, candidate, pooled_noise([best, candidate]))
    assert decision.action is Action.CONFIRM
    assert decision.improvement == pytest.approx(0.004, abs=1e-4)
    assert decision.improvement < decision.margin


def test_a_clear_win_is_kept_with_every_figure_recorded():
    settings = KeepRuleSettings(k=2.0)
    decision = judge([2.00, 2.01, 1.99, 2.00], [1.90, 1.91], noise_of(0.01, 20), settings)
    assert decision.action is Action.KEEP
    assert (decision.n_best, decision.n_candidate, decision.noise_dof) == (4, 2, 20)
    assert decision.best_mean == pytest.approx(2.0)
    assert decision.candidate_mean == pytest.approx(1.905)
    assert decision.sigma == 0.01
    assert decision.margin == pytest.approx(margin(0.01, 20, 4, 2, 2.0))
    assert decision.rerun == ""
    assert "\n" not in decision.reason and "clearing the margin" in decision.reason
    with pytest.raises(dataclasses.FrozenInstanceError):
        decision.action = Action.DISCARD  # type: ignore[misc]


def test_k_sets_the_margin():
    best, candidate, noise = [2.0] * 4, [1.985] * 4, noise_of(0.01, 40)
    # improvement 1.5 sigma; one standard error of the difference is 0.71 sigma
    assert judge(best, candidate, noise, KeepRuleSettings(k=1.5)).action is Action.KEEP
    assert judge(best, candidate, noise, KeepRuleSettings(k=3.0)).action is Action.CONFIRM


def test_a_small_win_is_confirmed_then_decided_at_the_limit():
    settings = KeepRuleSettings(k=2.0, max_candidate_runs=3, min_best_runs=1)
    best, noise = [2.0] * 6, noise_of(0.01, 30)
    first = judge(best, [1.995], noise, settings)
    assert first.action is Action.CONFIRM and first.rerun == "candidate"
    assert "run 2 of at most 3" in first.reason
    last = judge(best, [1.995, 1.996, 1.994], noise, settings)
    assert last.action is Action.DISCARD and "not distinguishable from noise" in last.reason


def test_confirmation_runs_the_best_while_it_has_fewer_runs():
    settings = KeepRuleSettings(min_best_runs=4)
    noise = noise_of(0.01, 5)
    assert judge([2.0], [1.99], noise, settings).rerun == "best"        # 1 run vs 1
    assert judge([2.0, 2.0], [1.99], noise, settings).rerun == "candidate"
    assert judge([2.0, 2.0], [1.99, 1.99], noise, settings).rerun == "best"
    # never past min_best_runs
    assert judge([2.0] * 4, [1.995] * 5, noise, settings).rerun == "candidate"


def test_without_a_noise_estimate_a_win_is_confirmed_and_a_loss_discarded():
    unknown = Noise(None, 0, 0)
    assert judge([2.0], [1.9], unknown).action is Action.CONFIRM
    assert "no noise estimate" in judge([2.0], [1.9], unknown).reason
    assert judge([2.0], [2.1], unknown).action is Action.DISCARD
    capped = judge([2.0], [1.9], unknown, KeepRuleSettings(max_candidate_runs=1))
    assert capped.action is Action.DISCARD and "never measured" in capped.reason


def test_few_degrees_of_freedom_widen_the_margin():
    best, candidate = [2.0, 2.0, 2.0], [1.97]
    # a 3-sigma win on a sigma from 2 repeats is not yet a keep; on 30 dof it is
    assert judge(best, candidate, noise_of(0.01, 2)).action is Action.CONFIRM
    assert judge(best, candidate, noise_of(0.01, 30)).action is Action.KEEP


def test_identical_repeats_make_any_win_a_keep():
    # fixed-step CPU runs are exactly reproducible: sigma 0
    decision = judge([2.0, 2.0], [1.999], pooled_noise([[2.0, 2.0]]))
    assert decision.action is Action.KEEP and decision.sigma == 0.0


def test_the_best_is_rerun_to_follow_drift():
    settings = KeepRuleSettings(best_rerun_every=3)
    assert not should_rerun_best(2, settings)
    assert should_rerun_best(3, settings)


@pytest.mark.parametrize("field,value", [("k", 0), ("max_candidate_runs", 0),
                                         ("min_best_runs", 0), ("best_rerun_every", 0),
                                         ("rule", "bayes"), ("win_sigmas", 0),
                                         ("evidence", 1.0), ("drop_evidence", 1.0),
                                         ("recheck_evidence", 0.5), ("kept_run_weight", 1.5),
                                         ("kept_run_shift", -0.1)])
def test_settings_reject_nonsense(field, value):
    with pytest.raises(ValueError, match=field):
        KeepRuleSettings(**{field: value})


def test_empty_runs_are_an_error():
    with pytest.raises(ValueError, match="best has no runs"):
        judge([], [1.0], Noise(None, 0, 0))
    with pytest.raises(ValueError, match="candidate has no runs"):
        judge([1.0], [], Noise(None, 0, 0))


# ---------------------------------------------------------------------- the sequential rule
# sigma 0.01 on 30 dof throughout: Student's t widens it by t(30)/2 = 1.044


def log_likelihood_ratio(improvement, sigma, dof, n_best, n_candidate, settings=SEQUENTIAL):
    """Of a win of win_sigmas sigma against no change, with the widened sigma."""
    win = settings.win_sigmas * sigma
    variance = (sigma * student_t_critical(2.0, dof) / 2) ** 2 * (1 / n_best + 1 / n_candidate)
    return win / variance * (improvement - win / 2)


def test_the_sequential_bounds_are_where_the_likelihood_ratio_reaches_the_evidence():
    keep_at, drop_at = sequential_bounds(0.01, 30, 4, 1, SEQUENTIAL)
    assert log_likelihood_ratio(keep_at, 0.01, 30, 4, 1) == pytest.approx(
        math.log(SEQUENTIAL.evidence))
    assert log_likelihood_ratio(drop_at, 0.01, 30, 4, 1) == pytest.approx(
        -math.log(SEQUENTIAL.evidence))
    # they close in on half the win as the runs add up: the test always ends
    wide, narrow = sequential_bounds(0.01, 30, 2, 1, SEQUENTIAL), \
        sequential_bounds(0.01, 30, 8, 8, SEQUENTIAL)
    assert wide[1] < narrow[1] < 0.0075 < narrow[0] < wide[0]


def test_a_clear_win_is_kept_after_one_run_and_a_near_miss_goes_after_two():
    best, noise = [2.0] * 4, noise_of(0.01, 30)
    win = judge(best, [1.97], noise, SEQUENTIAL)              # 3 sigma better
    assert win.action is Action.KEEP and win.n_candidate == 1
    assert win.improvement >= win.margin and win.drop_margin < win.margin
    assert "reaching the keep bound" in win.reason and "2.5:1" in win.reason
    # 0.1 sigma better: one more run, then the drop bound has risen past it (the margin
    # rule would confirm it up to 8 runs)
    assert judge(best, [1.999], noise, SEQUENTIAL).action is Action.CONFIRM
    near = judge(best, [1.999, 1.9985], noise, SEQUENTIAL)
    assert near.action is Action.DISCARD and "drop bound" in near.reason
    assert near.improvement <= near.drop_margin
    assert judge(best, [1.999, 1.9985], noise).action is Action.CONFIRM
    assert judge(best, [2.001], noise, SEQUENTIAL).action is Action.DISCARD


def test_a_close_call_runs_again_then_the_limit_keeps_only_what_clears_the_keep_bound():
    best, noise = [2.0] * 4, noise_of(0.01, 30)
    close = judge(best, [1.985], noise, SEQUENTIAL)           # 1.5 sigma: between the bounds
    assert close.action is Action.CONFIRM and close.rerun == "candidate"
    assert close.drop_margin < close.improvement < close.margin
    assert "between the drop bound" in close.reason and "of at most 5" in close.reason
    last = judge(best, [1.993] * 5, noise, SEQUENTIAL)        # 0.7 sigma after 5 runs
    assert last.action is Action.DISCARD and "after 5 runs" in last.reason
    assert judge(best, [1.985] * 5, noise, SEQUENTIAL).action is Action.KEEP


def test_the_sequential_rule_reruns_the_best_up_to_its_own_limit():
    noise = noise_of(0.01, 30)
    assert judge([2.0], [1.99], noise, SEQUENTIAL).rerun == "best"
    assert judge([2.0] * 4, [1.99, 1.992, 1.99, 1.991], noise, SEQUENTIAL).rerun == "candidate"


def test_settings_for_a_rule_take_its_limits_and_the_values_given():
    assert settings_for("margin") == KeepRuleSettings()
    assert settings_for("sequential") == SEQUENTIAL
    tuned = settings_for("sequential", max_candidate_runs=3, best_rerun_every=None)
    assert (tuned.max_candidate_runs, tuned.best_rerun_every) == (3, SEQUENTIAL.best_rerun_every)
    with pytest.raises(ValueError, match="keep_rule must be one of margin, sequential, "
                                         "debiased"):
        settings_for("bayes")
    assert settings_for("debiased") == DEBIASED
    assert settings_for("debiased", max_candidate_runs=6).kept_run_weight == 0.5


# ---------------------------------------------------------------------- the recheck, a revert


def test_a_keep_on_one_lucky_run_is_reverted_when_the_best_runs_again():
    """A session step by step, as the coordinator feeds the rule: the baseline, a change
    kept on one lucky run, then two runs of the new best that show it was noise."""
    baseline = [2.000, 2.010, 1.990, 2.005, 1.995]            # sigma 0.0079 on 4 dof
    kept_on = [1.970]
    decision = judge(baseline, kept_on, pooled_noise([baseline, kept_on]), SEQUENTIAL)
    assert decision.action is Action.KEEP and decision.n_candidate == 1
    best = list(kept_on)
    assert recheck(baseline, best, pooled_noise([baseline, best]), SEQUENTIAL) is None
    best.append(2.010)                                       # its first re-run: 1.99 mean
    first = recheck(baseline, best, pooled_noise([baseline, best]), SEQUENTIAL)
    assert first.action is Action.KEEP and first.reason.startswith("the keep stands")
    best.append(2.012)                                       # 1.9973 mean of 3: noise
    again = recheck(baseline, best, pooled_noise([baseline, best]), SEQUENTIAL)
    assert again.action is Action.DISCARD
    assert again.reason.startswith("reverted: over 3 runs")
    assert (again.n_best, again.n_candidate) == (5, 3)
    assert again.best_mean == pytest.approx(2.0) and again.candidate_mean == pytest.approx(
        1.997333, abs=1e-6)
    assert again.improvement <= again.drop_margin
    assert again.rerun == ""


def test_a_real_win_stands_its_rechecks():
    baseline = [2.000, 2.010, 1.990, 2.005, 1.995]
    best = [1.970, 1.976, 1.981, 1.972]
    decision = recheck(baseline, best, pooled_noise([baseline, best]), SEQUENTIAL)
    assert decision.action is Action.KEEP and decision.improvement > decision.drop_margin


def test_the_margin_rule_never_reverts():
    baseline, best = [2.0, 2.01, 1.99], [1.97, 2.05, 2.06]
    assert recheck(baseline, best, pooled_noise([baseline, best]), KeepRuleSettings()) is None


# ---------------------------------------------------------------------- the debiased rule
# DEBIASED: a 2-sigma win kept at 2.2:1, dropped at 10:1; the best's first run at weight 0.5
# and 0.4 sigma worse; sigma 0.01 on 30 dof unless said


def test_the_discounted_mean_weights_the_first_run_and_moves_it_worse():
    mean, n_eff = discounted_mean([1.96, 2.0, 2.0, 2.0], 0.01, 0.5, 0.4)
    # (0.5 * (1.96 + 0.004) + 3 * 2.0) / 3.5; n_eff: 3.5^2 / (0.25 + 3)
    assert mean == pytest.approx((0.5 * 1.964 + 6.0) / 3.5)
    assert n_eff == pytest.approx(12.25 / 3.25)
    assert discounted_mean([1.97], 0.01, 0.5, 0.4) == (pytest.approx(1.974), 1.0)
    assert discounted_mean([1.9, 2.0], 0.01, 1.0, 0.0) == (pytest.approx(1.95), 2.0)


def test_the_sequential_rule_drops_at_its_own_evidence_unless_told_otherwise():
    assert SEQUENTIAL.drop_ratio == SEQUENTIAL.recheck_ratio == SEQUENTIAL.evidence
    assert (DEBIASED.drop_ratio, DEBIASED.recheck_ratio) == (10.0, 2.5)
    keep_at, drop_at = sequential_bounds(0.01, 30, 4, 1, DEBIASED)
    win = DEBIASED.win_sigmas * 0.01
    variance = (0.01 * student_t_critical(2.0, 30) / 2) ** 2 * (1 / 4 + 1)
    assert keep_at == pytest.approx(win / 2 + math.log(2.2) * variance / win)
    assert drop_at == pytest.approx(win / 2 - math.log(10.0) * variance / win)


def test_the_debiased_bounds_are_on_the_raw_improvement_with_the_correction_in_them():
    best, noise = [2.0] * 4, noise_of(0.01, 30)
    corrected, n_eff = discounted_mean(best, 0.01, 0.5, 0.4)
    keep_at, drop_at = sequential_bounds(0.01, 30, n_eff, 1, DEBIASED)
    win = judge(best, [1.97], noise, DEBIASED)                # 3 sigma better: kept at once
    assert win.action is Action.KEEP and win.best_mean == pytest.approx(2.0)
    assert win.margin == pytest.approx(keep_at - (corrected - 2.0))
    assert win.drop_margin == pytest.approx(drop_at - (corrected - 2.0))
    assert "2.2:1 for a 2-sigma win or 10:1 for none" in win.reason
    assert "the best's first run at weight 0.5, 0.4 sigma worse: its mean 2.000571" \
        in win.reason
    # the same runs under the sequential rule's own bounds: the raw mean, no correction
    assert judge(best, [1.97], noise, SEQUENTIAL).margin == pytest.approx(
        sequential_bounds(0.01, 30, 4, 1, SEQUENTIAL)[0])


def test_a_best_kept_on_one_run_is_run_again_before_a_close_call_is_decided():
    noise = noise_of(0.01, 30)
    # the best's only run is the one it won on: taken 0.4 sigma worse, 1.974
    close = judge([1.97], [1.965], noise, DEBIASED)
    assert (close.action, close.rerun) == (Action.CONFIRM, "best")
    assert "running the best again (run 2)" in close.reason
    # at the candidate's limit the best still runs again while it has fewer runs
    limit = judge([1.97, 1.975], [1.965] * 4, noise, DEBIASED)
    assert (limit.action, limit.rerun) == (Action.CONFIRM, "best")
    assert judge([2.001], [2.0015], noise, DEBIASED).action is Action.DISCARD   # no better


def test_at_the_limit_the_debiased_rule_keeps_what_is_likelier_a_win_than_none():
    best, noise = [2.0] * 4, noise_of(0.01, 30)
    # half the win is 0.01 on the corrected best mean 2.000571: 0.009429 on the raw one
    kept = judge(best, [1.99] * 4, noise, DEBIASED)
    assert kept.action is Action.KEEP and "half the win: likelier a win than none" in \
        kept.reason
    assert kept.drop_margin < kept.improvement < kept.margin
    gone = judge(best, [1.993] * 4, noise, DEBIASED)
    assert gone.action is Action.DISCARD and "likelier no change" in gone.reason
    assert "after 4 runs" in gone.reason


def test_a_debiased_keep_on_one_lucky_run_is_reverted_when_the_best_runs_again():
    """As the coordinator feeds it: the baseline, a change kept on one lucky run, then the
    new best's re-runs; the baseline's first run discounted too (it is the best before)."""
    baseline = [2.000, 2.010, 1.990, 2.005, 1.995]            # sigma 0.0079 on 4 dof
    kept_on = [1.975]
    noise = pooled_noise([baseline, kept_on])
    decision = judge(baseline, kept_on, noise, DEBIASED)
    assert decision.action is Action.KEEP and decision.n_candidate == 1
    best = list(kept_on)
    assert recheck(baseline, best, pooled_noise([baseline, best]), DEBIASED) is None
    best.append(1.995)                                       # its first re-run: 1.985 mean
    first = recheck(baseline, best, pooled_noise([baseline, best]), DEBIASED)
    assert first.action is Action.KEEP and first.reason.startswith("the keep stands")
    best.append(2.012)                                       # 1.994 mean of 3: noise
    again = recheck(baseline, best, pooled_noise([baseline, best]), DEBIASED)
    assert again.action is Action.DISCARD
    assert again.reason.startswith("reverted: over 3 runs")
    assert (again.n_best, again.n_candidate) == (5, 3) and again.rerun == ""
    assert again.candidate_mean == pytest.approx(1.994)
    assert 0 < again.improvement <= again.drop_margin
    # the drop bound is the recheck's own 2.5:1, not the judge's 10:1
    assert "2.2:1 for a 2-sigma win or 2.5:1 for none" in again.reason
    stands = recheck(baseline, best, pooled_noise([baseline, best]),
                     dataclasses.replace(DEBIASED, recheck_evidence=None))
    assert stands.action is Action.KEEP


def test_the_debiased_rule_reruns_the_best_as_often_as_its_own_rule_says():
    settings = DEBIASED
    assert not should_rerun_best(3, settings) and should_rerun_best(4, settings)
