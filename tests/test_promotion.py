"""The promotion ladder: the pure decisions (engine/promotion.py, the planner's hook), then a
real change kept at depth 1 and trained at depth 2 with its baseline, shown by the journal,
the app and the report, and a restart in the middle of a promotion."""

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pytest

from engine import planner, promotion
from engine.keep_rule import KeepRuleSettings
from engine.planner import LoopView
from engine.promotion import KeptChange, LadderView, PromotionRecord
from engine.workspace import Config, WorkspaceError

TEMPLATE_LINE = "DEPTH = 4 if CPU else 8  # number of transformer layers\n"


def kept(run_id="run-0002", experiment=2, depth=4, parent_depth=4):
    return KeptChange(run_id, experiment, f"c{run_id}", f"p{run_id}", depth, parent_depth)


# ---------------------------------------------------------------------- depth and the ladder

def test_depth_is_read_and_set_on_the_runs_device_branch_only():
    source = "import os\n" + TEMPLATE_LINE + "X = 1\n"
    assert promotion.depth_of(source, "cpu") == 4
    assert promotion.depth_of(source, "cuda") == 8
    deeper = promotion.with_depth(source, "cpu", 8)
    assert deeper == source.replace("DEPTH = 4 if CPU", "DEPTH = 8 if CPU")
    assert promotion.depth_of(deeper, "cpu") == 8 and promotion.depth_of(deeper, "cuda") == 8
    assert promotion.depth_of("DEPTH = compute()\n", "cpu") is None
    with pytest.raises(ValueError, match="DEPTH is not a literal"):
        promotion.with_depth("WIDTH = 3\n", "cpu", 8)


def test_default_ladders_fit_the_template_and_bad_ladders_are_refused():
    assert promotion.ladder_for(None, "cpu") == (4, 8)
    assert promotion.ladder_for(None, "cuda") == (8, 16)
    assert promotion.ladder_for([12, 24], "cuda") == (12, 24)
    assert promotion.next_rung((4, 8, 16), 8) == 16
    assert promotion.next_rung((4, 8), 8) is None
    assert promotion.next_rung((4, 8), 6) is None          # not a rung: not promoted
    with pytest.raises(WorkspaceError, match="must go up"):
        Config(ladder=[8, 4])
    with pytest.raises(WorkspaceError, match="positive whole numbers"):
        Config(ladder=[4, "8"])
    assert Config(ladder=[4]).ladder == [4]                  # one rung: the ladder is off


# ---------------------------------------------------------------------- what runs next

def test_a_kept_change_trains_its_baseline_then_itself_at_the_next_rung():
    view = LadderView(ladder=(4, 8), kept=(kept(),))
    step = promotion.next_step(view)
    assert (step.side, step.depth, step.commit, step.promotion_id) == \
        ("baseline", 8, "prun-0002", None)
    assert step.label == "promotion of #2 to depth 8: its baseline"
    record = PromotionRecord(1, "run-0002", 8, baseline_runs=(1.0,))
    step = promotion.next_step(replace(view, promotions=(record,)))
    assert (step.side, step.commit, step.promotion_id) == ("change", "crun-0002", 1)


def test_no_promotion_off_the_ladder_for_depth_changes_or_with_one_rung():
    assert promotion.next_step(LadderView(ladder=(4,), kept=(kept(),))) is None
    assert promotion.next_step(LadderView(ladder=(4, 8), kept=(kept(depth=8),))) is None
    assert promotion.next_step(LadderView(ladder=(4, 8), kept=(kept(depth=1),))) is None
    # the change moved DEPTH itself: setting DEPTH on both sides would undo it
    assert promotion.next_step(LadderView(ladder=(4, 8),
                                          kept=(kept(depth=4, parent_depth=2),))) is None
    assert promotion.next_step(LadderView(ladder=(4, 8), kept=(kept(depth=None),))) is None


def test_the_keep_rule_at_that_scale_confirms_then_decides():
    # one run each, no noise at depth 8 yet: the baseline runs again (the keep rule's order)
    record = PromotionRecord(1, "run-0002", 8, baseline_runs=(1.00,), change_runs=(0.98,))
    view = LadderView(ladder=(4, 8), kept=(kept(),), promotions=(record,))
    assert promotion.verdict(view, record).action.value == "confirm"
    assert promotion.next_step(view).side == "baseline"
    # the baseline repeats within 0.001: a 0.02 win clears the margin, the win held
    record = replace(record, baseline_runs=(1.00, 1.001, 0.999))
    view = replace(view, promotions=(record,))
    decision = promotion.verdict(view, record)
    assert decision.action.value == "keep"
    assert promotion.describe(decision, 8).startswith("the win held at depth 8: better by")
    # worse at depth 8: the win did not hold
    lost = replace(record, change_runs=(1.01,))
    assert promotion.verdict(replace(view, promotions=(lost,)), lost).action.value == "discard"
    # the noise at a depth is its own: a noisy other promotion at depth 8 widens the margin
    noisy = PromotionRecord(2, "run-0009", 8, baseline_runs=(0.9, 1.1), change_runs=(1.0,))
    wide = replace(view, promotions=(record, noisy))
    assert promotion.verdict(wide, record).action.value == "confirm"
    assert promotion.noise_at(wide, 16).sigma is None


def test_a_win_that_held_climbs_one_that_did_not_stops_and_older_changes_go_first():
    ladder = (4, 8, 16)
    first, second = kept("run-0002", 2), kept("run-0005", 5)
    held = PromotionRecord(1, "run-0002", 8, (1.0,), (0.9,), held=True)
    view = LadderView(ladder=ladder, kept=(first, second), promotions=(held,))
    step = promotion.next_step(view)
    assert (step.run_id, step.depth, step.side) == ("run-0002", 16, "baseline")
    stopped = replace(held, held=False)
    step = promotion.next_step(replace(view, promotions=(stopped,)))
    assert (step.run_id, step.depth) == ("run-0005", 8)
    done = (stopped, PromotionRecord(2, "run-0005", 8, (1.0,), (1.1,), held=False))
    assert promotion.next_step(replace(view, promotions=done)) is None


# ---------------------------------------------------------------------- the planner's hook

def idle_view(**overrides):
    values = dict(data_ready=True, best_commit="b", has_baseline=True, noise_samples=1,
                  ladder=LadderView(ladder=(4, 8), kept=(kept(),)))
    values.update(overrides)
    return LoopView(**values)


def test_promotion_runs_only_when_the_main_loop_leaves_the_trainer_idle():
    plan = planner.next_run(idle_view())
    assert (plan.kind, plan.commit, plan.promotion.side) == ("promotion", "prun-0002",
                                                             "baseline")
    assert planner.next_run(idle_view(queue=(7,))).kind == "experiment"
    assert planner.next_run(idle_view(noise_repeats=2)).kind == "noise"
    awaiting = (planner.Awaiting(3, "x", "candidate"),)
    assert planner.next_run(idle_view(awaiting=awaiting)).kind == "rerun"
    assert planner.next_run(idle_view(has_baseline=False)).kind == "baseline"
    assert planner.next_run(idle_view(paused=True)) is None


def test_a_promotion_in_flight_yields_to_the_main_loop_and_the_cap_waits_for_the_ladder():
    training = dict(running=True, running_promotion=True)
    assert not planner.preempts(idle_view(**training))            # nothing else to run
    assert planner.preempts(idle_view(queue=(7,), **training))   # an accepted experiment
    assert not planner.preempts(idle_view(queue=(7,), running=True))   # a main-loop run
    capped = dict(max_experiments=1, experiments_done=1)
    assert not planner.cap_stop(idle_view(**capped))             # promote the keeps first
    assert planner.next_run(idle_view(queue=(7,), **capped)).kind == "promotion"
    assert planner.cap_stop(idle_view(ladder=LadderView(ladder=(4, 8)), **capped))
