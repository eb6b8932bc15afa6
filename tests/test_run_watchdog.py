"""The run watchdog's deadlines, on times passed in (no processes)."""

from engine.run.watchdog import Watchdog


def test_a_run_that_prints_its_own_way_gets_the_fixed_deadline():
    dog = Watchdog(budget_s=10, started=0.0, grace_s=5, stall_s=None)
    assert dog.verdict(24.9, last_output_at=24.0) is None
    assert dog.verdict(25.1, last_output_at=25.0) == "no result after 25s (budget 10s): killed"


def test_a_silent_start_up_is_left_to_the_stall_limit():
    # a header at 2 s, then a torch.compile that prints nothing for minutes
    dog = Watchdog(budget_s=10, started=0.0, grace_s=5, stall_s=300)
    assert dog.verdict(250.0, last_output_at=2.0) is None
    assert dog.verdict(303.0, last_output_at=2.0).startswith("stalled: no output for 300s")
    dog.progress(280.0, percent=0.0, remaining_s=10)   # its first step: now it is warming up
    assert dog.verdict(290.0, last_output_at=280.0) is None


def test_warm_up_steps_keep_a_run_alive_until_it_stalls():
    dog = Watchdog(budget_s=10, started=0.0, grace_s=5, stall_s=30)
    for now in range(0, 200, 20):
        dog.progress(float(now), percent=0.0, remaining_s=10)
        assert dog.verdict(float(now), last_output_at=float(now)) is None
    assert dog.verdict(231.0, last_output_at=200.0).startswith("stalled: no output for 30s")


def test_the_timed_deadline_counts_from_when_its_own_clock_started():
    dog = Watchdog(budget_s=10, started=0.0, grace_s=5, stall_s=None)
    dog.progress(100.0, percent=0.0, remaining_s=300)    # warm-up
    dog.progress(130.0, percent=10.0, remaining_s=270)   # its own budget: 300 s
    assert dog.own_budget_s == 300 and dog.timed_since == 100.0
    assert dog.verdict(100.0 + 604.0, last_output_at=704.0) is None
    message = dog.verdict(100.0 + 606.0, last_output_at=706.0)
    assert message.startswith("still running 606s after its timed training began, far past "
                              "its budget of 300s")


def test_a_user_cap_is_absolute():
    dog = Watchdog(budget_s=10, started=0.0, grace_s=5, stall_s=None, hard_cap_s=50)
    dog.progress(1.0, percent=0.0, remaining_s=10)
    assert dog.verdict(49.0, last_output_at=49.0) is None
    assert dog.verdict(51.0, last_output_at=51.0) == "no result after 50s (budget 10s): killed"


def test_a_stated_budget_shorter_than_the_engines_does_not_shorten_the_deadline():
    # 15 s steps: the percent (before the step) lags the remaining (after it), so the line
    # says 30 s left at 25%: a stated 40 s, while the run's budget is 60 s
    dog = Watchdog(budget_s=60, started=0.0, grace_s=120, stall_s=None)
    dog.progress(200.0, percent=25.0, remaining_s=30)
    assert dog.own_budget_s == 60
