"""The judge as a pure function: lists of run values and the pooled noise in, a verdict out;
no threads. The statistics themselves are tested in tests/test_keep_rule.py."""

import pytest

from engine.loop.judge import JudgeRules, Verdict, judge
from engine.loop.keep_rule import SEQUENTIAL, KeepRuleSettings
from engine.loop.keep_stats import Noise, pooled_noise

UNMEASURED = Noise(None, 0, 0)


def noise(*groups):
    return pooled_noise(groups)


def test_a_result_no_better_than_the_best_is_discarded_without_a_noise_estimate():
    verdict = judge([1.01], [1.00], UNMEASURED)
    assert verdict.verdict is Verdict.DISCARD
    assert verdict.improvement == pytest.approx(-0.01)
    assert verdict.measure.sigma is None and verdict.measure.margin is None
    assert judge([1.0], [1.0], UNMEASURED).verdict is Verdict.DISCARD


def test_a_win_without_a_noise_estimate_runs_the_best_again():
    verdict = judge([0.99], [1.00], UNMEASURED)
    assert (verdict.verdict, verdict.rerun) == (Verdict.CONFIRM, "best")
    assert "no noise estimate yet" in verdict.reason


def test_the_best_stands_on_the_mean_of_its_runs():
    # issue 12: baseline runs 1.994282, 1.996000, 1.984339; the mean is 1.991540, not the first
    best = [1.994282, 1.996000, 1.984339]
    verdict = judge([1.992], best, noise(best))
    assert verdict.verdict is Verdict.DISCARD
    assert verdict.measure.best_mean == pytest.approx(1.991540, abs=1e-6)
    assert verdict.measure.n_best == 3


def test_a_win_clearing_the_margin_is_kept_and_the_measure_says_why():
    best = [1.000, 1.001, 0.999, 1.000, 1.001, 0.999]
    verdict = judge([0.995], best, noise(best))
    m = verdict.measure
    assert verdict.verdict is Verdict.KEEP
    assert (m.n_best, m.n_candidate, m.noise_dof) == (6, 1, 5)
    assert m.sigma == pytest.approx(0.000894, abs=1e-6)
    assert 0 < m.margin < m.improvement == pytest.approx(0.005)
    assert "clearing the margin" in verdict.reason


def test_a_win_inside_the_margin_is_confirmed_then_discarded_at_the_limit():
    best, rules = [1.000, 1.004, 0.996], JudgeRules(keep=KeepRuleSettings(max_candidate_runs=2))
    first = judge([0.998], best, noise(best), rules)
    assert (first.verdict, first.rerun) == (Verdict.CONFIRM, "candidate")
    last = judge([0.998, 0.999], best, noise(best, [0.998, 0.999]), rules)
    assert last.verdict is Verdict.DISCARD and "not distinguishable from noise" in last.reason
    assert last.value == pytest.approx(0.9985)


def test_k_is_a_setting():
    best = [1.000, 1.004, 0.996, 1.000]
    strict = JudgeRules(keep=KeepRuleSettings(k=2.0))
    loose = JudgeRules(keep=KeepRuleSettings(k=0.5))
    assert judge([0.995], best, noise(best), strict).verdict is Verdict.CONFIRM
    assert judge([0.995], best, noise(best), loose).verdict is Verdict.KEEP


@pytest.mark.parametrize("candidate, best, why", [
    (0.94, [1.0], "more than 5% of val_bpb, no sigma yet"),
    (0.97, [1.0, 1.001, 0.999], "more than 20 sigma"),
])
def test_an_unusually_large_win_is_confirmed_then_held_for_a_human(candidate, best, why):
    first = judge([candidate], best, noise(best))
    assert (first.verdict, first.rerun) == (Verdict.CONFIRM, "candidate"), why
    second = judge([candidate, candidate], best, noise(best, [candidate, candidate]))
    assert second.verdict is Verdict.HOLD, why
    assert second.reason.startswith("unusually large win: look before it becomes the best")


def test_a_large_win_that_shrinks_on_the_rerun_is_judged_by_the_keep_rule():
    # 0.94 then 0.99: 3.5% better, under 5%, and 1.55 of the pooled sigma 0.0226: inside
    # the margin, so it is confirmed like any small win rather than held
    best = [1.0, 1.02, 0.98, 1.0]
    runs = [0.94, 0.99]
    verdict = judge(runs, best, noise(best, runs))
    assert (verdict.verdict, verdict.rerun) == (Verdict.CONFIRM, "candidate")
    assert verdict.measure.sigmas == pytest.approx(1.55, abs=0.01)


def test_the_large_win_limits_are_settings():
    loose = JudgeRules(large_win_sigmas=None, large_win_fraction=0.5)
    best = [1.0, 1.001, 0.999]
    assert judge([0.9], best, noise(best), loose).verdict is Verdict.KEEP


def test_the_judge_needs_runs():
    with pytest.raises(ValueError):
        judge([], [1.0], UNMEASURED)


def test_the_sequential_rules_measure_carries_both_bounds():
    best = [1.000, 1.001, 0.999, 1.000, 1.001, 0.999]
    rules = JudgeRules(keep=SEQUENTIAL)
    verdict = judge([0.9995], best, noise(best), rules)
    m = verdict.measure
    assert verdict.verdict is Verdict.CONFIRM and verdict.rerun == "candidate"
    assert m.drop_margin < m.improvement < m.margin
    assert "keep at" in m.describe() and "drop at" in m.describe()
    assert judge([0.9995], best, noise(best)).measure.drop_margin is None   # the margin rule
