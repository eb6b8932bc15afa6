"""The app's garbage collection schedule: between frames, every generation in its turn, and
the process's collector as it was once the app is gone."""

import gc

import pytest

from tui.collector import FULL_EVERY, MIDDLE_EVERY, ScheduledCollector


@pytest.fixture
def collections():
    seen: list[int] = []

    def record(phase, info):
        if phase == "start":
            seen.append(info["generation"])

    gc.callbacks.append(record)
    yield seen
    gc.callbacks.remove(record)


def test_ticks_collect_young_middle_and_full_generations_in_turn(collections):
    collector = ScheduledCollector()
    collector.start()
    try:
        assert not gc.isenabled() and gc.get_freeze_count() > 0
        for _ in range(FULL_EVERY):
            collector.tick()
    finally:
        collector.stop()
    assert collections.count(2) == 1 and collections[-1] == 2       # the 600th tick: all
    assert collections.count(1) == FULL_EVERY // MIDDLE_EVERY - 1   # every 10th but that one
    assert collections.count(0) == FULL_EVERY - FULL_EVERY // MIDDLE_EVERY


def test_stop_gives_back_the_collector_as_it_was_and_ticks_after_do_nothing(collections):
    collector = ScheduledCollector()
    gc.disable()                             # a process that had turned it off itself
    try:
        collector.start()
        collector.stop()
        assert not gc.isenabled() and gc.get_freeze_count() == 0
    finally:
        gc.enable()
    collector.start()
    collector.stop()
    assert gc.isenabled() and gc.get_freeze_count() == 0
    collector.tick()
    assert collections == []
