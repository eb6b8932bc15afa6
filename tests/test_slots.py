"""K trainer slots (issue 11 item 1) with K=2 on this machine: stand-in runs that wait at a
FIFO gate named after their run id, so the test decides which run ends first; real git
worktrees, real SQLite, real subprocesses. And the engine killed with two runs in flight."""

from __future__ import annotations

import os
import signal

import psutil
import pytest

from engine.base.events import BestUpdated, ProposalReady, RunFinished, RunStarted
from engine.base.records import RunStatus
from engine.scale.slots import Worktrees, default_slot_count, make_slots, upcoming_slots
from engine.session import SessionSettings
from tests.faults.conftest import (assert_git_matches_journal, assert_nothing_lost,  # noqa: F401
                                   baselined_template, baselined_workspace, headless,
                                   journal_snapshot, results_rows, wait_for)
from tests.test_coordinator import WAIT_S, ScriptedAgent, run_kinds, standin_workspace, started
from tests.test_tui_support import ScriptedSession, pilot_test, proposal

STANDIN = '''\
VALUE = 1.0  # the val_bpb this stand-in reports

import os
from pathlib import Path

EXTRA = 0  # each unit of EXTRA lowers val_bpb by 0.05, far enough from VALUE to merge apart

run_id = os.environ["PAIRLAB_RUN_ID"]
state = Path(os.environ["STANDIN_DIR"])
gate = state / f"gate-{run_id}"
if gate.exists():
    gate.read_text()      # a FIFO: waits until the test lets this run through
jitter = 0.001 if run_id == os.environ.get("STANDIN_NOISY_RUN") else 0.0
print("---")
print(f"val_bpb: {VALUE - 0.05 * EXTRA + jitter:.6f}")
'''


@pytest.fixture
def standin(tmp_path):
    ws = standin_workspace(tmp_path, STANDIN, tag="slots")
    (tmp_path / "state").mkdir()
    return ws


def gate(tmp_path, run_id: str):
    os.mkfifo(tmp_path / "state" / f"gate-{run_id}")


def release(tmp_path, run_id: str) -> None:
    with open(tmp_path / "state" / f"gate-{run_id}", "w") as fifo:
        fifo.write("go")


def two_slots(dataset_dir, tmp_path, **overrides) -> SessionSettings:
    """Auto mode, two slots; the baseline (1.0) and its noise repeat (1.001) train at once
    and give the judge a noise estimate; large wins are not held here."""
    values = dict(mode="auto", slots=2, budget_s=5.0, noise_repeats=1, device="cpu",
                  data_dir=dataset_dir, hard_timeout_s=60.0, max_experiments=2,
                  large_win_sigmas=None, large_win_fraction=None)
    values.update(overrides)
    values["extra_env"] = {"STANDIN_DIR": str(tmp_path / "state"),
                           "STANDIN_NOISY_RUN": "run-0002"}
    return SessionSettings(**values)


def test_slot_counts_and_device_pins(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert default_slot_count() == 2 and default_slot_count("cpu") == 1
    assert [s.env for s in make_slots(2)] == [{"CUDA_VISIBLE_DEVICES": "3"},
                                              {"CUDA_VISIBLE_DEVICES": "5"}]
    assert [s.env for s in make_slots(2, device="cpu")] == [{}, {}]
    assert make_slots(1)[0].env == {}                 # one slot: the engine's own devices
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert default_slot_count() == 1
    with pytest.raises(ValueError, match="at least 1"):
        make_slots(0)


def test_the_review_queue_knows_which_slot_each_proposal_goes_to():
    def run(proposal_id, at):
        return RunStarted(f"run-{at}", at, proposal_id, "c" * 40, "", 5, "/x", at=float(at))
    assert upcoming_slots([4, 5, 6], 3, {1: run(None, 1)}) == {4: 0, 5: 2, 6: 1}
    busy = {0: run(None, 2), 1: run(7, 1)}          # slot 1 started first, ahead on #7
    assert upcoming_slots([7, 8, 9], 2, busy) == {7: 1, 8: 1, 9: 0}
    assert upcoming_slots([3], 1, {}) == {3: 0}


def test_two_slots_train_at_once_and_a_win_on_a_moved_best_is_merged_and_retrained(
        standin, dataset_dir, tmp_path):
    """#1 and #2 train at once on the baseline; #1's keep lands while #2 trains; #2 is a
    win against its base, so it is merged onto #1 and trains again there before it is kept."""
    gate(tmp_path, "run-0003")
    gate(tmp_path, "run-0004")
    agent = ScriptedAgent(("VALUE = 1.0", "VALUE = 0.9"), ("EXTRA = 0", "EXTRA = 1"))
    session, events = started(standin, agent, two_slots(dataset_dir, tmp_path))
    try:
        first = events.wait(RunStarted, run_id="run-0003")
        second = events.wait(RunStarted, run_id="run-0004")
        assert {first.slot, second.slot} == {0, 1}              # both slots busy at once
        assert len(events.of(RunFinished)) == 2                 # the baseline and its repeat
        trees = Worktrees(standin).listed()
        assert len(trees) == 2
        baseline = session.best[0]
        assert standin.head() == baseline                       # nothing kept yet

        release(tmp_path, first.run_id)                         # #1 lands first: kept
        assert events.wait(BestUpdated, count=2).val_bpb == pytest.approx(0.9)
        release(tmp_path, second.run_id)                        # #2 beat its base only
        retrained = events.wait(RunStarted, run_id="run-0005")
        assert retrained.proposal_id == second.proposal_id
        merged = standin.file_at(retrained.commit, "train.py")
        assert "VALUE = 0.9" in merged and "EXTRA = 1" in merged
        assert standin.parent_of(retrained.commit) == session.best[0]
        assert session.wait(WAIT_S)
    finally:
        session.stop()
    assert run_kinds(session) == [("baseline", "keep"), ("noise", "discard"),
                                  ("experiment", "keep"), ("experiment", "interrupted"),
                                  ("experiment", "keep")]
    moved = session.journal.run_rows()[3]
    assert "the best moved" in moved["message"] and "trains again there" in moved["message"]
    assert session.best == (retrained.commit, pytest.approx(0.85))
    assert session.journal.experiment_count() == 2             # #2 counted once
    assert Worktrees(standin).listed() == []                   # cleaned up at the stop
    assert not any(Worktrees(standin).root.iterdir())
    assert_git_matches_journal(standin)
    assert [row[3] for row in results_rows(standin)] == ["keep", "keep", "keep"]


def test_a_loss_against_its_base_is_discarded_when_the_best_moved(standin, dataset_dir,
                                                                   tmp_path):
    gate(tmp_path, "run-0003")
    gate(tmp_path, "run-0004")
    agent = ScriptedAgent(("VALUE = 1.0", "VALUE = 0.9"), ("EXTRA = 0", "EXTRA = -1"))
    session, events = started(standin, agent, two_slots(dataset_dir, tmp_path))
    try:
        events.wait(RunStarted, run_id="run-0004")
        release(tmp_path, "run-0003")
        events.wait(BestUpdated, count=2)
        release(tmp_path, "run-0004")
        assert session.wait(WAIT_S)
    finally:
        session.stop()
    assert run_kinds(session) == [("baseline", "keep"), ("noise", "discard"),
                                  ("experiment", "keep"), ("experiment", "discard")]
    assert session.best[1] == pytest.approx(0.9)
    assert_git_matches_journal(standin)


def _trainers_in(directory):
    found = []
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        try:
            if str(proc.info["cwd"] or "").startswith(str(directory)) \
                    and "train.py" in " ".join(proc.info["cmdline"] or []):
                found.append(proc)
        except psutil.Error:
            pass
    return found


def test_the_engine_killed_with_two_runs_in_flight_resumes_both(baselined_workspace,
                                                                 dataset_dir):
    root = baselined_workspace.root
    args = ("--mode", "auto", "--slots", "2", "--max-experiments", "2")
    engine = headless(root, dataset_dir, *args, max_steps=100000)   # runs last the budget
    running = lambda: [r for r in journal_snapshot(root).get("runs", [])  # noqa: E731
                       if r["status"] == "running"]
    wait_for(lambda: len(running()) == 2, what="two runs in flight")
    before = journal_snapshot(root)
    in_flight = running()
    assert {r["kind"] for r in in_flight} == {"experiment"}
    engine.send_signal(signal.SIGKILL)
    engine.communicate(timeout=10)
    wait_for(lambda: not _trainers_in(root), timeout=10, what="the orphaned runs to die")

    engine = headless(root, dataset_dir, *args)
    out, err = engine.communicate(timeout=240)
    assert engine.returncode == 0, err
    after = journal_snapshot(root)
    story = [(r["id"], r["kind"], r["proposal_id"], r["status"], r["message"][:90])
             for r in after["runs"]]
    for run in in_flight:
        row = next(r for r in after["runs"] if r["id"] == run["id"])
        assert row["status"] == RunStatus.INTERRUPTED.value
        assert any(r["proposal_id"] == run["proposal_id"] and r["kind"] == "experiment"
                   and r["status"] in ("keep", "discard") for r in after["runs"]), story
    known = {r["id"] for r in before["runs"]}
    assert_nothing_lost(before, after, new_runs=len([r for r in after["runs"]
                                                     if r["id"] not in known]))
    assert "stopped: reached --max-experiments 2" in out
    assert_git_matches_journal(root)
    assert Worktrees(baselined_workspace).listed() == []
    assert not _trainers_in(root)


# ---------------------------------------------------------------------- the app

@pilot_test
async def test_the_device_panel_shows_every_slot_and_l_switches_the_followed_log(tmp_path):
    from textual.widgets import Static

    from tui.app import PairlabApp
    log = tmp_path / "run-0004.log"
    log.write_text("step 1 of the second slot\n")
    events = [RunStarted("run-0003", 3, 1, "abc1234", "VALUE 1.0 -> 0.9", 5, "/x", slot=0,
                         slots=2, at=100.0),
              RunStarted("run-0004", 4, 2, "bcd2345", "EXTRA 0 -> 1", 5, str(log),
                         speculative=True, slot=1, slots=2, at=101.0),
              ProposalReady(proposal(2, "EXTRA 0 -> 1", "0.02")),
              ProposalReady(proposal(5, "lr down", "0.01"))]
    app = PairlabApp(ScriptedSession(tmp_path, events))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause(0.3)
        main = app.main
        slots = str(main.device.query_one("#device-slots", Static).render())
        assert "▸ slot 0 run-0003 #1" in slots and "slot 1 run-0004 #2 speculative" in slots
        assert main.log_panel.run_id == "run-0003"         # slot 0 keeps the panel
        queue = str(main.diff.query_one("#queue", Static).render())
        # #2 trains ahead in slot 1; #5 goes to the slot whose run started first
        assert "#2 → slot 1" in queue and "#5 → slot 0" in queue
        await pilot.press("l")
        await pilot.pause(0.1)
        assert main.log_panel.run_id == "run-0004" and main.followed_slot == 1
        assert "step 1 of the second slot" in "\n".join(main.log_panel.log.lines)
        assert "▸ slot 1" in str(main.device.query_one("#device-slots", Static).render())
        await pilot.press("l")
        assert main.log_panel.run_id == "run-0003"


def test_a_speculative_run_restarts_on_the_new_best_when_another_slots_keep_moves_it(
        standin, dataset_dir, tmp_path):
    """Review mode, two slots: #1 and #2 train ahead of their review; #1 is accepted and
    kept, so #2 is rebased onto it: its run is cut short and it trains again there."""
    gate(tmp_path, "run-0003")
    gate(tmp_path, "run-0004")
    agent = ScriptedAgent(("VALUE = 1.0", "VALUE = 0.9"), ("EXTRA = 0", "EXTRA = 1"))
    session, events = started(standin, agent, two_slots(dataset_dir, tmp_path, mode="review"))
    try:
        first = events.wait(RunStarted, run_id="run-0003")
        second = events.wait(RunStarted, run_id="run-0004")
        assert first.speculative and second.speculative
        by_proposal = {first.proposal_id: first, second.proposal_id: second}
        session.accept(1)
        release(tmp_path, by_proposal[1].run_id)
        events.wait(BestUpdated, count=2)
        cut = events.wait(RunFinished, count=4)            # gated: it ends only when cut
        assert cut.result.run_id == by_proposal[2].run_id
        assert (cut.result.status, cut.result.message) == (
            RunStatus.INTERRUPTED, "the best moved under it: it trains again on the new best")
        again = events.wait(RunStarted, run_id="run-0005")
        assert (again.proposal_id, again.speculative) == (2, True)
        assert standin.parent_of(again.commit) == session.best[0]
        ahead = events.wait(RunFinished, count=5)
        assert ahead.result.status is RunStatus.SPECULATIVE
        session.accept(2)                                   # trained already: judged now
        assert session.best[1] == pytest.approx(0.85)
        assert session.wait(WAIT_S)
    finally:
        session.stop()
    assert sorted(run_kinds(session)) == sorted([
        ("baseline", "keep"), ("noise", "discard"), ("experiment", "keep"),
        ("speculative", "interrupted"), ("experiment", "keep")])
    assert_git_matches_journal(standin)
    assert Worktrees(standin).listed() == []
