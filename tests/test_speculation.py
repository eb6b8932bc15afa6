"""Speculative training (issue 10 item 5) through the Session, with stand-in runs: a real
git workspace, real SQLite, real subprocesses that report a constant val_bpb (plus a
scripted jitter) and wait at a FIFO gate the test opens, so each run ends when the test
says. A proposal waiting for review trains in a slot's worktree; the research branch and
the workspace's checkout stay where they were until a human accepts it."""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest

from engine.base.commands import CommandRefused
from engine.base.events import (BestUpdated, ExperimentSettled, ProposalStale, RunAccepted,
                                RunFinished, RunStarted, WinHeld)
from engine.base.records import ProposalState, RunStatus
from engine.scale.slots import Worktrees
from engine.session import Session, SessionSettings
from tests.faults.conftest import assert_git_matches_journal, journal_snapshot
from tests.test_coordinator import (WAIT_S, Events, ScriptedAgent, run_kinds, standin_workspace,
                                    started)
from tests.test_tui_support import pilot_test

STANDIN = '''\
VALUE = 1.0  # the val_bpb this stand-in reports

import os
from pathlib import Path

EXTRA = 0  # a second line a proposal can change

# runs share one counter and one gate wherever they train (a slot's worktree included)
state = Path(os.environ["STANDIN_DIR"])
counter = state / "runs"
count = int(counter.read_text()) if counter.exists() else 0
counter.write_text(str(count + 1))
jitter = [float(x) for x in os.environ.get("STANDIN_JITTER", "0").split(",")]
gate = state / "gate"
if gate.exists():
    gate.read_text()
print("---")
print(f"val_bpb: {VALUE + jitter[count % len(jitter)]:.6f}")
'''


TO_0_9 = ("VALUE = 1.0", "VALUE = 0.9")


@pytest.fixture
def standin(tmp_path):
    ws = standin_workspace(tmp_path, STANDIN)
    (tmp_path / "state").mkdir()
    os.mkfifo(tmp_path / "state" / "gate")
    return ws


def review(dataset_dir, tmp_path, **overrides) -> SessionSettings:
    """Review mode; a baseline and one noise repeat (1.0, 1.001) give the judge a noise
    estimate, so a clear win is kept at once; large wins are not held here."""
    values = dict(mode="review", budget_s=5.0, noise_repeats=1, device="cpu",
                  data_dir=dataset_dir, hard_timeout_s=60.0, max_experiments=1,
                  large_win_sigmas=None, large_win_fraction=None)
    values.update(overrides)
    values["extra_env"] = {"STANDIN_JITTER": "0,0.001,0,0",
                           "STANDIN_DIR": str(tmp_path / "state")}
    return SessionSettings(**values)


def release(tmp_path, runs: int = 1) -> None:
    """Let `runs` runs through the gate, one at a time (each open waits for a reader)."""
    for _ in range(runs):
        with open(tmp_path / "state" / "gate", "w") as fifo:
            fifo.write("go")


def releasing(tmp_path, events: Events, runs: int) -> threading.Thread:
    """In the background: let each of the first `runs` runs through once it started."""
    def go():
        for k in range(1, runs + 1):
            events.wait(RunStarted, count=k)
            release(tmp_path)
    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread


@contextmanager
def reviewing(standin, dataset_dir, tmp_path, *changes: tuple[str, str], runs: int = 2,
              **overrides):
    """A review-mode session whose agent drafts `changes` (default: VALUE 1.0 -> 0.9), with
    the first `runs` runs let through the gate as each starts; stopped on the way out."""
    events = Events()
    releasing(tmp_path, events, runs)
    session, events = started(standin, ScriptedAgent(*(changes or [TO_0_9])),
                              review(dataset_dir, tmp_path, **overrides), events)
    try:
        yield session, events
    finally:
        session.stop()


def test_a_waiting_proposal_trains_aside_and_counts_with_its_time_once_accepted(
        standin, dataset_dir, tmp_path):
    # the gate lets the baseline and the noise repeat through
    with reviewing(standin, dataset_dir, tmp_path) as (session, events):
        ahead = events.wait(RunStarted, speculative=True)
        baseline = session.best[0]
        assert ahead.proposal_id == 1 and ahead.commit != baseline
        # nothing moved for it: the branch, the checkout, the proposal's state
        assert standin.head() == baseline
        assert "VALUE = 1.0" in (standin.root / "train.py").read_text()
        assert standin.dirty_targets() == []
        worktree = Worktrees(standin).listed()
        assert worktree and "VALUE = 0.9" in (worktree[0] / "train.py").read_text()
        assert session.journal.get_proposal(1).state is ProposalState.PENDING
        assert session.current_run.speculative and session.state == "reviewing"

        session.accept(1)
        accepted = events.wait(RunAccepted)
        assert (accepted.run_id, accepted.proposal_id) == (ahead.run_id, 1)
        assert session.journal.get_run(ahead.run_id).kind == "experiment"
        # every reader says it trains as the experiment now, the engine's status line too
        assert session.current_run.kind == "experiment" and not session.current_run.speculative
        assert session.state == "training"
        assert session.journal.get_proposal(1).state is ProposalState.TRAINING
        release(tmp_path)
        assert session.wait(WAIT_S)
    assert run_kinds(session) == [("baseline", "keep"), ("noise", "discard"),
                                  ("experiment", "keep")]
    kept = session.experiments()[-1]
    assert kept.run_id == ahead.run_id and not kept.speculative   # the same run, its time
    assert session.best[1] == pytest.approx(0.9)
    assert len(events.of(RunStarted)) == 3
    assert Worktrees(standin).listed() == [] and not Worktrees(standin).root.exists() or \
        not any(Worktrees(standin).root.iterdir())
    assert_git_matches_journal(standin)


def test_a_speculative_run_that_finished_is_judged_at_once_when_accepted(
        standin, dataset_dir, tmp_path):
    with reviewing(standin, dataset_dir, tmp_path, runs=3) as (session, events):
        finished = events.wait(RunFinished, count=3)
        assert finished.result.status is RunStatus.SPECULATIVE
        assert finished.experiment.speculative and finished.experiment.val_bpb == 0.9
        baseline = session.best[0]
        assert standin.head() == baseline                 # trained, but not kept yet
        assert "speculative" not in standin.results_tsv_path.read_text()

        session.accept(1)                                 # returns once applied: judged
        assert session.best[1] == pytest.approx(0.9)
        assert events.of(BestUpdated)[-1].experiment_id == finished.experiment.id
        assert session.wait(WAIT_S)
    assert run_kinds(session) == [("baseline", "keep"), ("noise", "discard"),
                                  ("experiment", "keep")]
    assert_git_matches_journal(standin)


def test_a_veto_kills_the_speculative_run_at_once_and_records_it_vetoed(
        standin, dataset_dir, tmp_path):
    with reviewing(standin, dataset_dir, tmp_path) as (session, events):
        ahead = events.wait(RunStarted, speculative=True)
        session.veto(1, "not that knob")
        vetoed = events.wait(RunFinished, count=3)
        assert vetoed.result.run_id == ahead.run_id
        assert vetoed.result.status is RunStatus.VETOED
        assert "val_bpb" not in Path(ahead.log_path).read_text()      # it never finished
        with pytest.raises(CommandRefused, match="already vetoed"):
            session.accept(1)
    assert run_kinds(session) == [("baseline", "keep"), ("noise", "discard"),
                                  ("speculative", "vetoed")]
    totals = session.journal.totals()
    assert (totals.vetoed, totals.speculative, totals.experiments) == (1, 1, 1)
    assert session.journal.summary_line() == (
        "1 experiments: 0 kept, 0 discarded, 0 crashed, 1 vetoed; 1 noise repeats, "
        "0 confirmation re-runs; 1 speculative runs not accepted")
    assert session.journal.experiment_count() == 0      # the cap counts experiments only
    assert_git_matches_journal(standin)


def test_an_edit_restarts_the_speculative_run_with_the_edit(standin, dataset_dir, tmp_path):
    with reviewing(standin, dataset_dir, tmp_path) as (session, events):
        ahead = events.wait(RunStarted, speculative=True)
        text = session.proposal_text(1, "train.py").replace("VALUE = 0.9", "VALUE = 0.8")
        session.edit(1, {"train.py": text})
        cut = events.wait(RunFinished, count=3)
        assert (cut.result.run_id, cut.result.status) == (ahead.run_id, RunStatus.INTERRUPTED)
        assert "edited" in cut.result.message
        again = events.wait(RunStarted, count=4)
        assert (again.proposal_id, again.speculative) == (1, False)
        assert "VALUE = 0.8" in standin.file_at(again.commit, "train.py")
        release(tmp_path)
        assert session.wait(WAIT_S)
    assert run_kinds(session) == [("baseline", "keep"), ("noise", "discard"),
                                  ("speculative", "interrupted"), ("experiment", "keep")]
    assert session.best[1] == pytest.approx(0.8)
    assert_git_matches_journal(standin)


def test_switching_to_auto_accepts_the_speculative_run_in_flight(standin, dataset_dir,
                                                                  tmp_path):
    with reviewing(standin, dataset_dir, tmp_path, ("VALUE = 1.0", "VALUE = 1.1"),
                   runs=3) as (session, events):
        ahead = events.wait(RunStarted, speculative=True)
        session.set_mode("auto")
        assert events.wait(RunAccepted).run_id == ahead.run_id
        assert session.wait(WAIT_S)
    assert run_kinds(session)[-1] == ("experiment", "discard")
    assert_git_matches_journal(standin)


# ---------------------------------------------------------------------- one decision each
# Switching to auto decides every waiting proposal in one coordinator step: a speculative run
# judged and kept on the way moves the best under the proposals whose turn comes next.

TWO_AHEAD = dict(drafts_ahead=2, max_experiments=None)


def test_a_speculative_run_cut_short_by_a_rebase_is_not_taken_for_the_experiment(
        standin, dataset_dir, tmp_path):
    with reviewing(standin, dataset_dir, tmp_path, TO_0_9, ("EXTRA = 0", "EXTRA = 1"),
                   runs=3, **TWO_AHEAD) as (session, events):
        cut = events.wait(RunStarted, count=4)        # #1 trained ahead, #2 trains ahead
        assert (cut.proposal_id, cut.speculative) == (2, True)
        # #1 is kept, which merges #2 onto the new best and kills its run; #2 is accepted
        # while that run is still dying: it trains again, on the new best
        session.set_mode("auto")
        again = events.wait(RunStarted, count=5)
        assert (again.proposal_id, again.speculative) == (2, False)
        text = standin.file_at(again.commit, "train.py")
        assert "VALUE = 0.9" in text and "EXTRA = 1" in text
        cut_short = session.journal.get_run(cut.run_id)
        assert (cut_short.kind, cut_short.status) == ("speculative", RunStatus.INTERRUPTED)
        assert session.journal.get_proposal(2).state is ProposalState.TRAINING
    assert [d.proposal_id for d in session.journal.decisions()] == [1, 2]


def test_switching_to_auto_goes_on_past_a_proposal_that_went_stale_on_the_way(
        standin, dataset_dir, tmp_path):
    with reviewing(standin, dataset_dir, tmp_path, TO_0_9, ("VALUE = 1.0", "VALUE = 0.8"),
                   runs=3, **TWO_AHEAD) as (session, events):
        events.wait(RunStarted, count=4)
        session.set_mode("auto")                      # #1 kept: #2 no longer applies
        assert events.wait(ProposalStale).proposal_id == 2
        assert session.mode == "auto" and session.best[1] == pytest.approx(0.9)
        assert session.journal.get_proposal(2).state is ProposalState.STALE
    assert [d.proposal_id for d in session.journal.decisions()] == [1]


@pytest.mark.parametrize("decide", ["accept", "veto"])
def test_a_held_win_trained_ahead_takes_one_decision_then_a_settlement(
        standin, dataset_dir, tmp_path, decide):
    """The storm's "decided at most once": a large win is accepted (its one decision),
    confirmed, held, and the human's word on it is a settlement, not a second decision."""
    with reviewing(standin, dataset_dir, tmp_path, ("VALUE = 1.0", "VALUE = 0.5"), runs=4,
                   large_win_fraction=0.05, max_experiments=None) as (session, events):
        ahead = events.wait(RunFinished, count=3).experiment
        assert ahead.speculative
        session.accept(1)                             # judged at once: re-run, then held
        assert events.wait(WinHeld).proposal_id == 1
        if decide == "accept":
            session.accept(1)
        else:
            session.veto(1, "too good to be true")
        settled = events.wait(ExperimentSettled).experiment
        assert settled.run_id == ahead.run_id
    assert [(d.proposal_id, d.kind.value) for d in session.journal.decisions()] == [
        (1, "accept")]
    outcome = "keep" if decide == "accept" else "discard"
    rows = journal_snapshot(standin)["settlements"]
    assert [(s["run_id"], s["proposal_id"], s["outcome"]) for s in rows] == [
        (ahead.run_id, 1, outcome)]
    assert session.journal.totals().vetoed == 0       # it trained
    assert_git_matches_journal(standin)


def test_speculation_is_a_setting_and_a_flag(tmp_path):
    from engine.workspace import Config
    from pairlab.cli import build_parser, settings_from_args
    parser = build_parser()
    assert settings_from_args(parser.parse_args([]), Config()).speculate is True
    assert settings_from_args(parser.parse_args(["--no-speculate"]), Config()).speculate is False
    assert settings_from_args(parser.parse_args([]), Config(speculate=False)).speculate is False


# ---------------------------------------------------------------------- the app shows it

@pilot_test
async def test_the_app_shows_the_run_as_speculative_until_the_human_accepts_it(
        standin, dataset_dir, tmp_path):
    from textual.widgets import DataTable

    from tests.test_tui_session import wait_for
    from tui.app import PairlabApp
    events = Events()
    releasing(tmp_path, events, runs=2)
    session = Session(standin, ScriptedAgent(TO_0_9),
                      review(dataset_dir, tmp_path), monitor=False)
    session.subscribe(events)
    app = PairlabApp(session)
    async with app.run_test(size=(120, 40)) as pilot:
        main = app.main
        label = lambda run_id: str(main.table.query_one(DataTable).get_cell(  # noqa: E731
            run_id, "status")) if run_id in main.table.rows else ""
        await wait_for(pilot, lambda: events.of(RunStarted, speculative=True),
                       what="a speculative run")
        ahead = events.of(RunStarted, speculative=True)[0]
        await wait_for(pilot, lambda: label(ahead.run_id) == "speculative",
                       what="the row labelled speculative")
        await wait_for(pilot, lambda: main.diff.selected == 1, what="the proposal shown")
        await pilot.press("a")
        await wait_for(pilot, lambda: label(ahead.run_id) == "training",
                       what="the row labelled training once accepted")
        release(tmp_path)
        await wait_for(pilot, lambda: label(ahead.run_id).startswith("keep"),
                       what="the run kept")
        await pilot.press("S")
        await pilot.pause(0.2)
    session.stop()
