"""The promotion ladder: the pure decisions (engine/loop/promotion.py, the planner's hook), then a
real change kept at depth 1 and trained at depth 2 with its baseline, shown by the journal,
the app and the report, and a restart in the middle of a promotion."""

import asyncio
import os
import signal
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest
from test_tui_support import pilot_test

from engine.base.events import ExperimentSettled, Notice, RunFinished, RunStarted, SessionStopped
from engine.base.git import run_git
from engine.base.records import Experiment, PromotionRung, RunStatus
from engine.loop import planner, promotion
from engine.loop.planner import LoopView
from engine.loop.promoting import PREEMPTED
from engine.loop.promotion import KeptChange, LadderView, PromotionRecord
from engine.report import write_report
from engine.scale.slots import Worktrees
from engine.session import Session, SessionSettings
from engine.workspace import Config, Workspace, WorkspaceError
from tests.faults.conftest import (assert_git_matches_journal, assert_nothing_lost,
                                   journal_snapshot, wait_for)
from tests.test_coordinator import WAIT_S, ScriptedAgent, standin_workspace, started
from tui.app import PairlabApp
from tui.widgets.experiments import ladder_marks, run_label, totals

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
    promoting = planner.next_run(idle_view())
    training = dict(in_flight=(promoting,))
    assert planner.next_run(idle_view(**training)) is None        # one promotion at a time
    assert not planner.preempts(idle_view(**training))            # nothing else to run
    assert planner.preempts(idle_view(queue=(7,), **training))   # an accepted experiment
    assert planner.preempts(idle_view(noise_repeats=2, **training))   # the noise gate
    awaiting = (planner.Awaiting(3, "x", "candidate"),)
    assert planner.preempts(idle_view(awaiting=awaiting, **training))  # a confirmation
    experiment = planner.RunPlan("experiment", "c", 6, "")
    assert not planner.preempts(idle_view(queue=(7,), in_flight=(experiment,)))
    capped = dict(max_experiments=1, experiments_done=1)
    assert not planner.cap_stop(idle_view(**capped))             # promote the keeps first
    assert planner.next_run(idle_view(queue=(7,), **capped)).kind == "promotion"
    assert planner.cap_stop(idle_view(ladder=LadderView(ladder=(4, 8)), **capped))


def test_with_several_slots_a_promotion_takes_a_free_one_and_is_preempted_only_when_full():
    experiment = planner.RunPlan("experiment", "c", 6, "")
    promoting = planner.next_run(idle_view())
    # one slot trains an experiment: the free one promotes
    assert planner.next_run(idle_view(slots=2, in_flight=(experiment,))).kind == "promotion"
    # a free slot takes the main loop's next run: nothing to stop
    both = dict(slots=2, in_flight=(promoting,), queue=(7,))
    assert planner.next_run(idle_view(**both)).kind == "experiment"
    assert not planner.preempts(idle_view(**both))
    # both slots busy and a proposal accepted: the promotion gives its slot back
    full = dict(slots=2, in_flight=(experiment, promoting), queue=(7,))
    assert planner.next_run(idle_view(**full)) is None
    assert planner.preempts(idle_view(**full))


def test_speculation_goes_before_a_promotion_but_does_not_stop_one():
    review = dict(speculate=True, unspeculated=(7,), pending=1)
    assert planner.next_run(idle_view(**review)).kind == "speculative"
    promoting = planner.next_run(idle_view())
    training = idle_view(in_flight=(promoting,), **review)
    assert planner.next_run(training) is None
    assert not planner.preempts(training)     # a head start only: the ladder is not starved
    # accepted, the proposal is the main loop's experiment: the promotion yields
    assert planner.preempts(idle_view(in_flight=(promoting,), queue=(7,)))


def test_a_promotion_in_flight_does_not_hold_back_a_sequential_draft():
    promoting = planner.next_run(idle_view())
    sequential = dict(drafts_ahead=0)
    assert planner.should_draft(idle_view(in_flight=(promoting,), **sequential))
    experiment = planner.RunPlan("experiment", "c", 6, "")
    assert not planner.should_draft(idle_view(in_flight=(experiment,), **sequential))


# ---------------------------------------------------------------------- the loop, with stand-ins

STANDIN = '''\
DEPTH = 1  # layers: val_bpb falls with depth, as a real model's does
VALUE = 1.0  # the val_bpb this stand-in reports at depth 1
PENALTY = 0.0  # added per layer beyond the first: a win that does not transfer

import os
import time
from pathlib import Path

EXTRA = 0  # a line a second proposal changes, far enough from VALUE to merge apart

# a promotion run (DEPTH > 1) waits while the test's gate file exists
gate = os.environ.get("STANDIN_GATE", "")
while gate and DEPTH > 1 and Path(gate).exists():
    time.sleep(0.02)
print("---")
print(f"val_bpb: {VALUE / DEPTH + PENALTY * (DEPTH - 1):.6f}")
'''
WIN = ("VALUE = 1.0", "VALUE = 0.9")                       # 0.9 at depth 1, 0.45 at depth 2
LOCAL_WIN = ("VALUE = 1.0  # the val_bpb this stand-in reports at depth 1\nPENALTY = 0.0",
             "VALUE = 0.9\nPENALTY = 0.3")                  # 0.9 at depth 1, 0.75 at depth 2


@pytest.fixture
def ladder_standin(tmp_path):
    return standin_workspace(tmp_path, STANDIN, tag="ladder", ladder=[1, 2])


def standin_settings(dataset_dir, **overrides):
    values = dict(mode="auto", budget_s=5.0, noise_repeats=0, device="cpu",
                  data_dir=dataset_dir, hard_timeout_s=60.0, agent_backoff_s=0.0,
                  max_experiments=1, large_win_sigmas=None, large_win_fraction=None)
    values.update(overrides)
    return SessionSettings(**values)


def kinds(session):
    return [(r["kind"], r["status"]) for r in session.journal.run_rows()]


def test_a_kept_win_is_trained_at_the_next_depth_with_its_baseline_and_held(
        ladder_standin, dataset_dir):
    session, events = started(ladder_standin, ScriptedAgent(WIN),
                              standin_settings(dataset_dir))
    assert session.wait(WAIT_S)            # --max-experiments waits for the ladder
    assert kinds(session) == [("baseline", "keep"), ("experiment", "keep"),
                              ("noise", "discard"), ("promotion", "discard"),
                              ("promotion", "discard"), ("promotion", "discard")]
    started_runs = events.of(RunStarted)[3:]
    assert [(e.kind, e.description) for e in started_runs] == [
        ("promotion", "promotion of #2 to depth 2: its baseline"),
        ("promotion", "promotion of #2 to depth 2: the change"),
        ("promotion", "promotion of #2 to depth 2: its baseline")]
    ws = ladder_standin
    kept = session.experiments()[1]
    # the side commits set DEPTH = 2 on the change and on its parent, off the branch
    baseline_side, change_side = (e.commit for e in started_runs[:2])
    assert ws.parent_of(change_side) == kept.commit
    assert ws.parent_of(baseline_side) == ws.parent_of(kept.commit)
    assert "DEPTH = 2" in ws.file_at(change_side, "train.py")
    assert "VALUE = 0.9" in ws.file_at(change_side, "train.py")
    assert "VALUE = 1.0" in ws.file_at(baseline_side, "train.py")
    assert started_runs[2].commit == baseline_side        # a repeat of the same side
    assert ws.head() == kept.commit                       # the branch never moved
    assert Worktrees(ws).listed() == []                   # its slot's worktree: gone at the stop
    # the journal: the change, the depth, both sides' runs, n/mean/sigma, the win held
    [p] = session.journal.promotions()
    assert (p.experiment, p.from_depth, p.depth, p.held) == (2, 1, 2, True)
    assert (p.commit, p.parent) == (kept.commit, ws.parent_of(kept.commit))
    assert len(p.baseline_runs) == 2 and len(p.change_runs) == 1
    m = p.measure
    assert (m.n_best, m.best_mean, m.n_candidate, m.candidate_mean) == (2, 0.5, 1, 0.45)
    assert m.sigma == 0.0 and m.noise_dof == 1
    assert p.reason.startswith("the win held at depth 2: better by 0.050000")
    opened, settled = (e.experiment for e in events.of(ExperimentSettled))
    assert opened.run_id == settled.run_id == kept.run_id
    assert [(r.depth, r.held) for r in opened.promotions] == [(2, None)]      # "d2…"
    assert [(r.depth, r.held) for r in settled.promotions] == [(2, True)]     # "d2✓"
    # a promotion is another scale: neither the main loop's noise nor results.tsv see it
    assert session.noise_floor == 0.0
    assert_git_matches_journal(ws)
    assert session.journal.summary_line().endswith("; 3 promotion runs")


def test_a_win_that_does_not_transfer_is_recorded_as_such(ladder_standin, dataset_dir):
    session, events = started(ladder_standin, ScriptedAgent(LOCAL_WIN),
                              standin_settings(dataset_dir))
    assert session.wait(WAIT_S)
    [p] = session.journal.promotions()
    assert p.held is False and p.outcome == "did not hold"
    assert p.measure.candidate_mean == pytest.approx(0.75)
    assert p.reason.startswith("the win did not hold at depth 2: no better than the best")
    assert session.experiments()[1].promotions[0].held is False


def test_a_promotion_gives_the_trainer_back_to_an_accepted_experiment(
        ladder_standin, dataset_dir, tmp_path):
    gate = tmp_path / "gate"
    gate.touch()
    drafts = threading.Semaphore(1)       # the first draft at once, the second on release
    session, events = started(
        ladder_standin, ScriptedAgent(WIN, ("EXTRA = 0", "EXTRA = 1"), gate=drafts),
        standin_settings(dataset_dir, max_experiments=2,
                         extra_env={"STANDIN_GATE": str(gate)}))
    try:
        promoting = wait_for(lambda: next((e for e in events.of(RunStarted)
                                           if e.kind == "promotion"), None),
                             what="a promotion run")
        assert session.state == "promoting"
        drafts.release()                  # the agent's next proposal: auto mode accepts it
        preempted = wait_for(lambda: next((e for e in events.of(RunFinished)
                                           if e.result.run_id == promoting.run_id), None),
                             what="the promotion run to give the trainer back")
        assert preempted.result.status is RunStatus.INTERRUPTED
        assert preempted.result.message == PREEMPTED
        after = events.all[events.all.index(preempted) + 1:]
        following = next(e for e in after if isinstance(e, RunStarted))
        assert following.kind == "experiment" and following.proposal_id == 2
        gate.unlink()                     # the ladder may go on now
        assert session.wait(WAIT_S)
    finally:
        session.stop()
    [p] = session.journal.promotions()
    assert p.held is True
    # the interrupted run stays in the journal; its side trained again
    assert promoting.run_id in p.baseline_runs and len(p.baseline_runs) == 3


def test_with_two_slots_a_promotion_trains_beside_an_experiment_without_being_stopped(
        ladder_standin, dataset_dir, tmp_path):
    gate = tmp_path / "gate"
    gate.touch()
    drafts = threading.Semaphore(1)
    session, events = started(
        ladder_standin, ScriptedAgent(WIN, ("EXTRA = 0", "EXTRA = 1"), gate=drafts),
        standin_settings(dataset_dir, max_experiments=2, slots=2,
                         extra_env={"STANDIN_GATE": str(gate)}))
    try:
        promoting = wait_for(lambda: next((e for e in events.of(RunStarted)
                                           if e.kind == "promotion"), None),
                             what="a promotion run")
        drafts.release()
        experiment = wait_for(lambda: next((e for e in events.of(RunStarted)
                                            if e.proposal_id == 2), None),
                              what="the second experiment in the other slot")
        assert experiment.slot != promoting.slot
        wait_for(lambda: any(e.result.run_id == experiment.run_id
                             for e in events.of(RunFinished)), what="the experiment's result")
        # the promotion was never stopped: its slot was not needed
        assert not [e for e in events.of(RunFinished) if e.result.run_id == promoting.run_id]
        gate.unlink()
        assert session.wait(WAIT_S)
    finally:
        session.stop()
    [p] = session.journal.promotions()
    assert promoting.run_id in p.baseline_runs
    assert all(r["status"] != "interrupted" for r in session.journal.run_rows())


def test_a_stop_mid_promotion_leaves_it_queued_for_the_next_start(ladder_standin, dataset_dir,
                                                                  tmp_path):
    gate = tmp_path / "gate"
    gate.touch()
    session, events = started(ladder_standin, ScriptedAgent(WIN), standin_settings(
        dataset_dir, extra_env={"STANDIN_GATE": str(gate)}))
    try:
        promoting = wait_for(lambda: next((e for e in events.of(RunStarted)
                                           if e.kind == "promotion"), None),
                             what="a promotion run")
    finally:
        session.stop()
    row = next(r for r in session.journal.run_rows() if r["id"] == promoting.run_id)
    assert row["status"] == "interrupted"
    [p] = session.journal.promotions()
    assert p.held is None and p.outcome == "being measured"
    assert_git_matches_journal(ladder_standin)
    session.journal.close()

    gate.unlink()
    again, _ = started(Workspace.open(ladder_standin.root), ScriptedAgent(),
                       standin_settings(dataset_dir))
    assert again.wait(WAIT_S)
    [p] = again.journal.promotions()
    assert p.held is True and p.baseline_runs[0] == promoting.run_id
    assert len(p.baseline_runs) == 3 and len(p.change_runs) == 1

ENGINE = """
import sys
from pathlib import Path
from engine.session import Session
from engine.workspace import Workspace
from tests.test_coordinator import ScriptedAgent
from tests.test_promotion import WIN, standin_settings
settings = standin_settings(Path(sys.argv[2]), extra_env={"STANDIN_GATE": sys.argv[3]})
session = Session(Workspace.open(sys.argv[1]), ScriptedAgent(WIN), settings, monitor=False)
session.start()
session.wait()
"""
REPO = str(Path(__file__).resolve().parents[1])


@pytest.mark.e2e
def test_an_engine_killed_mid_promotion_trains_it_again_and_loses_nothing(
        ladder_standin, dataset_dir, tmp_path):
    root, gate = ladder_standin.root, tmp_path / "gate"
    gate.touch()
    paths = os.pathsep.join([REPO, str(Path(REPO) / "tests")])   # as pytest imports them
    engine = subprocess.Popen([sys.executable, "-c", ENGINE, str(root), str(dataset_dir),
                               str(gate)], cwd=REPO, env=dict(os.environ, PYTHONPATH=paths))
    try:
        wait_for(lambda: journal_snapshot(root).get("promotion_runs"),
                 what="a promotion run in flight")
        before = journal_snapshot(root)
        engine.send_signal(signal.SIGKILL)
        engine.wait(timeout=10)
    finally:
        if engine.poll() is None:
            engine.kill()
    [in_flight] = [r for r in before["runs"] if r["status"] == "running"]
    assert in_flight["kind"] == "promotion"
    assert Worktrees(ladder_standin).listed()             # its slot's, left behind by the kill

    gate.unlink()
    session, events = started(Workspace.open(root), ScriptedAgent(),
                              standin_settings(dataset_dir))
    assert session.wait(WAIT_S)
    after = journal_snapshot(root)
    # the baseline side trains again, then the change, then the baseline once more
    added = assert_nothing_lost(before, after, new_runs=3)
    assert [r["kind"] for r in added] == ["promotion"] * 3
    assert added[0]["commit_sha"] == in_flight["commit_sha"]      # the same side commit
    interrupted = next(r for r in after["runs"] if r["id"] == in_flight["id"])
    assert interrupted["status"] == "interrupted"
    [p] = session.journal.promotions()
    assert p.held is True and p.baseline_runs[0] == in_flight["id"]
    assert len(p.baseline_runs) == 3 and len(p.change_runs) == 1
    notices = [n["message"] for n in after["notices"]]
    assert any(f"run {in_flight['id']} (promotion of #2 to depth 2: its baseline) was "
               f"interrupted when the engine stopped; it trains again now" in n for n in notices)
    assert_git_matches_journal(root)
    assert Worktrees(ladder_standin).listed() == []
    worktrees = run_git(root, "worktree", "list", "--porcelain").decode()
    assert worktrees.count("worktree ") == 1                     # the workspace's own only


# ---------------------------------------------------------------------- real training, the app

@pytest.mark.e2e
@pytest.mark.timeout(900)                 # five to six tiny runs: minutes on 2 shared cores
def test_a_change_kept_at_depth_1_is_trained_at_depth_2_and_the_app_and_report_show_it(
        tiny_workspace, tiny_settings, tmp_path):
    ws = tiny_workspace
    # a baseline with slow embeddings, so restoring them is a clear win at depth 1
    slow = (ws.root / "train.py").read_text().replace("EMBEDDING_LR = 0.6",
                                                      "EMBEDDING_LR = 0.006")
    ws.commit_change({"train.py": slow}, "slow embeddings", parent=ws.head())
    ws.config.ladder = [1, 2]
    ws.config.save(ws.config_path)
    session = Session(ws, ScriptedAgent(("EMBEDDING_LR = 0.006", "EMBEDDING_LR = 0.6")),
                      tiny_settings(max_experiments=1, large_win_sigmas=None,
                                    large_win_fraction=None), monitor=False)
    said = []                                   # what the engine said, for a failure's message
    session.subscribe(lambda e: said.append(e) if isinstance(e, (Notice, SessionStopped))
                      else None)
    app = PairlabApp(session)

    @pilot_test
    async def drive():
        async with app.run_test(size=(120, 40)) as pilot:
            deadline = asyncio.get_running_loop().time() + 900
            while not session.stopped:                      # --max-experiments waits for it
                assert asyncio.get_running_loop().time() < deadline, "the ladder never ended"
                await pilot.pause(0.2)
            await pilot.pause(0.5)
            table = app.main.table
            grid = table.query_one("DataTable")
            return {run_id: (str(grid.get_cell(run_id, "status")),
                             str(grid.get_cell(run_id, "description")))
                    for run_id in table.rows}, set(app.main.chart.experiments)

    cells, charted = drive()
    promotions = session.journal.promotions()
    assert len(promotions) == 1, (promotions, said,
                                  [(r["id"], r["kind"], r["status"], r["val_bpb"])
                                   for r in session.journal.run_rows()])
    [p] = promotions
    kept = next(e for e in session.experiments() if e.kind == "experiment")
    assert kept.status.value == "keep" and (p.run_id, p.from_depth, p.depth) == \
        (kept.run_id, 1, 2)
    assert p.held is not None and p.measure is not None
    assert p.baseline_runs and p.change_runs
    rows = {r["id"]: r for r in session.journal.run_rows()}
    for run_id in p.baseline_runs + p.change_runs:
        assert rows[run_id]["kind"] == "promotion" and rows[run_id]["num_params"] > 0
        assert cells[run_id][0] == "promotion"               # shown as what it is
        assert run_id not in charted                          # another scale: off the chart
    # the side commits really train two layers, and the change's parent is its baseline
    change_side = rows[p.change_runs[0]]["commit_sha"]
    baseline_side = rows[p.baseline_runs[0]]["commit_sha"]
    assert "DEPTH = 2" in ws.file_at(change_side, "train.py")
    assert ws.parent_of(baseline_side) == ws.parent_of(kept.commit)
    assert rows[p.change_runs[0]]["num_params"] > rows[kept.run_id]["num_params"]
    mark = "d2✓" if p.held else "d2✗"
    assert cells[kept.run_id][1].startswith(f"{mark} ")
    _, md_path = write_report(session.journal, tmp_path / "report")
    report = md_path.read_text()
    assert "## Promotions" in report
    line = next(row for row in report.splitlines()
                if row.startswith(f"| {kept.id} | `{kept.commit[:7]}` | 1 → 2 |"))
    assert f"| {p.outcome} | {p.measure.best_mean:.6f} ({p.measure.n_best}) |" in line
    assert ws.head() == session.best[0] == kept.commit


def test_the_table_says_what_a_promotion_run_is_and_which_changes_transfer():
    def row(run_id, kind, status=RunStatus.DISCARD, promotions=()):
        return Experiment(1, None, "c", status, 1.0, 0.0, "d", kind, run_id, 0.0, 1.0, "",
                          kind=kind, promotions=list(promotions))
    promotion_run = row("run-0004", "promotion")
    assert run_label(promotion_run) == "promotion"
    assert run_label(promotion_run, training=True) == "promotion"
    assert run_label(row("run-0005", "promotion", RunStatus.CRASH)) == "crash"
    kept = row("run-0002", "experiment", RunStatus.KEEP,
               [PromotionRung(8, True), PromotionRung(16, False), PromotionRung(32)])
    assert [text for text, _ in ladder_marks(kept)] == ["d8✓ ", "d16✗ ", "d32… "]
    assert ladder_marks(row("run-0003", "experiment", RunStatus.KEEP)) == []
    assert totals([kept, promotion_run]) == "1 keep · 1 promotion"
