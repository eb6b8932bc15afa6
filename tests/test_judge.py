"""The judge as a pure function: lists of run values in, a verdict out; no threads."""

import pytest

from engine.judge import JudgeRules, Verdict, judge

NO_GATE = JudgeRules(noise_gate=False)


def test_a_result_worse_than_the_best_is_discarded_without_a_noise_floor():
    verdict = judge([1.01], [1.00], None)
    assert verdict.verdict is Verdict.DISCARD
    assert verdict.improvement == pytest.approx(-0.01)


def test_a_tie_within_float_noise_is_no_win():
    assert judge([1.0 - 1e-12], [1.0], 0.01).verdict is Verdict.DISCARD


def test_a_win_waits_for_the_noise_floor_when_one_is_wanted():
    assert judge([0.99], [1.00], None).verdict is Verdict.NEED_NOISE
    assert judge([0.99], [1.00], None, NO_GATE).verdict is Verdict.KEEP


def test_a_win_inside_the_noise_floor_is_confirmed_then_kept_if_the_mean_still_wins():
    first = judge([0.998], [1.000], 0.006)
    assert first.verdict is Verdict.CONFIRM and "inside the noise floor" in first.reason
    held = judge([0.998, 0.999], [1.000], 0.006)
    assert held.verdict is Verdict.KEEP and held.value == pytest.approx(0.9985)
    lost = judge([0.998, 1.004], [1.000], 0.006)
    assert lost.verdict is Verdict.DISCARD and "did not hold on a re-run" in lost.reason


def test_a_win_beyond_the_noise_floor_is_kept_at_once():
    assert judge([0.99], [1.00], 0.006).verdict is Verdict.KEEP


def test_no_confirmation_when_small_wins_are_not_rerun():
    rules = JudgeRules(rerun_small_wins=False)
    assert judge([0.998], [1.000], 0.006, rules).verdict is Verdict.KEEP


def test_the_best_stands_on_the_mean_of_its_runs():
    # best kept on two runs, 0.990 and 0.994: its value is 0.992
    assert judge([0.991], [0.990, 0.994], None, NO_GATE).verdict is Verdict.KEEP
    assert judge([0.993], [0.990, 0.994], None, NO_GATE).verdict is Verdict.DISCARD


@pytest.mark.parametrize("candidate, noise, why", [
    (0.94, None, "more than 5% of val_bpb"),
    (0.97, 0.001, "more than 20 noise floors"),
])
def test_an_unusually_large_win_is_confirmed_then_held_for_a_human(candidate, noise, why):
    first = judge([candidate], [1.0], noise, NO_GATE)
    assert first.verdict is Verdict.CONFIRM, why
    second = judge([candidate, candidate], [1.0], noise, NO_GATE)
    assert second.verdict is Verdict.HOLD, why
    assert second.reason.startswith("unusually large win: look before it becomes the best")


def test_a_large_win_that_shrinks_on_the_rerun_is_judged_as_a_normal_win():
    # 0.94 then 0.99: mean 0.965 is 3.5% better, under the 5% and under 20 floors of 0.002
    assert judge([0.94, 0.99], [1.0], 0.002, NO_GATE).verdict is Verdict.KEEP


def test_the_large_win_limits_are_settings():
    loose = JudgeRules(noise_gate=False, large_win_floors=None, large_win_fraction=0.5)
    assert judge([0.9], [1.0], 0.001, loose).verdict is Verdict.KEEP


def test_the_judge_needs_runs():
    with pytest.raises(ValueError):
        judge([], [1.0], None)
