"""The coordinator through the Session facade, with stand-in experiments: a real git
workspace, real SQLite, real subprocesses whose val_bpb is a constant in train.py (plus a
scripted jitter per run), so every keep, discard, confirmation and hold is deterministic.
Tests wait on events and hooks, never on sleeps.
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from engine.agents.base import AgentError, DraftCancelled
from engine.base.commands import CommandRefused
from engine.base.events import (BestUpdated, DecisionMade, ExperimentSettled, Notice, ProposalReady,
                                ProposalRebased, ProposalStale, RunFinished, RunStarted,
                                SessionStopped, StateChanged, SteeringNote, WinHeld)
from engine.base.records import Draft, ProposalState, RunStatus
from engine.session import Session, SessionSettings
from engine.workspace import init
from tests.faults.conftest import assert_git_matches_journal

STANDIN = '''\
VALUE = 1.0  # the val_bpb this stand-in reports

import os
from pathlib import Path

EXTRA = 0  # a second line a proposal can change, far enough from VALUE to merge apart

# each run adds the next scripted jitter; a test can hold every run at a gate (a FIFO)
counter = Path(".pairlab/standin-runs")
count = int(counter.read_text()) if counter.exists() else 0
counter.write_text(str(count + 1))
jitter = [float(x) for x in os.environ.get("STANDIN_JITTER", "0").split(",")]
gate = Path(".pairlab/gate")
if gate.exists():
    gate.read_text()
print("---")
print(f"val_bpb: {VALUE + jitter[count % len(jitter)]:.6f}")
'''
WAIT_S = 60.0


class Events:
    """Events collected on the engine's threads; `wait` blocks until one matches."""

    def __init__(self):
        self.all = []
        self._changed = threading.Condition()

    def __call__(self, event) -> None:
        with self._changed:
            self.all.append(event)
            self._changed.notify_all()

    def of(self, kind, **fields) -> list:
        return [e for e in self.all if isinstance(e, kind)
                and all(getattr(e, k) == v for k, v in fields.items())]

    def wait(self, kind, count: int = 1, **fields):
        deadline = time.monotonic() + WAIT_S
        with self._changed:
            while len(self.of(kind, **fields)) < count:
                left = deadline - time.monotonic()
                assert left > 0, f"no {kind.__name__} {fields}; saw " + ", ".join(
                    type(e).__name__ for e in self.all)
                self._changed.wait(left)
        return self.of(kind, **fields)[count - 1]


class ScriptedAgent:
    """Drafts the scripted (old, new) replacements in train.py, one per draft, then waits
    until the session cancels it."""

    name = "scripted"

    def __init__(self, *changes: tuple[str, str], gate: threading.Semaphore | None = None):
        self.changes = list(changes)
        self.contexts = []
        self.gate = gate                 # when given, each draft waits for a release

    def draft(self, ctx, emit, cancel):
        self.contexts.append(ctx)
        while self.gate is not None and not self.gate.acquire(timeout=0.05):
            if cancel.is_set():
                raise DraftCancelled()
        if not self.changes:
            cancel.wait()
            raise DraftCancelled()
        old, new = self.changes.pop(0)
        text = ctx.files["train.py"]
        assert old in text, f"{old!r} not in train.py"
        return Draft(description=f"{old} -> {new}", hypothesis="scripted",
                     files={"train.py": text.replace(old, new)})


class FailingAgent:
    name = "flaky-api"

    def draft(self, ctx, emit, cancel):
        raise AgentError("the API answered badly", "check the API status")


def standin_workspace(tmp_path, script: str = STANDIN, tag: str = "standin", **config):
    """A fresh workspace whose train.py is the stand-in `script` (its summary line is the
    metric), with `config` settings saved."""
    source = tmp_path / "standin.py"
    source.write_text(script)
    program = tmp_path / "program.md"
    program.write_text("Lower VALUE.\n")
    ws = init(tmp_path / "ws", tag=tag, templates={"train.py": source, "program.md": program})
    ws.config.metric_source = "summary_line"
    for name, value in config.items():
        setattr(ws.config, name, value)
    ws.config.save(ws.config_path)
    return ws


@pytest.fixture
def standin(tmp_path):
    return standin_workspace(tmp_path)


def settings(dataset_dir, **overrides) -> SessionSettings:
    values = dict(mode="auto", budget_s=5.0, noise_repeats=0, device="cpu",
                  data_dir=dataset_dir, hard_timeout_s=60.0, agent_backoff_s=0.0)
    values.update(overrides)
    jitter = values.pop("jitter", "0")
    values["extra_env"] = {"STANDIN_JITTER": jitter}
    return SessionSettings(**values)


def started(workspace, agent, config, events: Events | None = None
            ) -> tuple[Session, Events]:
    session = Session(workspace, agent, config, monitor=False)
    events = events or Events()
    session.subscribe(events)
    session.start()
    return session, events


def run_kinds(session) -> list[tuple[str, str]]:
    return [(r["kind"], r["status"]) for r in session.journal.run_rows()]


# ---------------------------------------------------------------------- the first result fast

def test_the_first_judged_experiment_comes_after_two_runs(standin, dataset_dir):
    """Issue 12: a loss needs no noise floor; the noise repeats come after it."""
    session, events = started(standin, ScriptedAgent(("VALUE = 1.0", "VALUE = 1.1")),
                              settings(dataset_dir, noise_repeats=2, max_experiments=1))
    assert session.wait(WAIT_S)
    first_two = [(e.experiment_id, e.proposal_id) for e in events.of(RunStarted)][:2]
    assert first_two == [(1, None), (2, 1)]
    assert run_kinds(session)[:2] == [("baseline", "keep"), ("experiment", "discard")]
    assert session.journal.summary_line().startswith(
        "1 experiments: 0 kept, 1 discarded, 0 crashed, 0 vetoed")


def test_a_small_win_is_confirmed_by_runs_of_the_best_and_of_itself_then_kept(standin,
                                                                             dataset_dir):
    """Issue 12 item 2: no noise estimate yet, so the best runs again (which measures the
    noise); inside the margin, the candidate runs again; then it clears k sigma."""
    # runs: baseline 1.0, experiment 0.998, the best again 1.001, the experiment again 0.998
    session, events = started(standin, ScriptedAgent(("VALUE = 1.0", "VALUE = 0.998")),
                              settings(dataset_dir, max_experiments=1, jitter="0,0,0.001,0,0"))
    assert session.wait(WAIT_S)
    assert run_kinds(session) == [("baseline", "keep"), ("experiment", "keep"),
                                  ("noise", "discard"), ("rerun", "discard")]
    assert [e.description for e in events.of(RunStarted)][2:] == [
        "re-run of the best to judge #1", "re-run of #1 to confirm a win"]
    notices = [n.message for n in events.of(Notice, level="info")]
    assert notices[0] == ("#1: better by 0.002000 but no noise estimate yet: running the best "
                          "again (run 2)")
    assert notices[1].startswith("#1: better by 0.002500 = 3.54 sigma, inside the margin")
    kept = session.experiments()[1]
    m = kept.measure
    assert (m.n_best, m.n_candidate, m.noise_dof) == (2, 2, 2)
    assert (m.best_mean, m.candidate_mean) == pytest.approx((1.0005, 0.998))
    assert m.sigma == pytest.approx(0.0005) and m.margin == pytest.approx(0.0022442, abs=1e-6)
    assert kept.val_bpb == pytest.approx(0.998)
    assert events.of(BestUpdated)[-1].val_bpb == pytest.approx(0.998)
    assert session.journal.summary_line() == (
        "1 experiments: 1 kept, 0 discarded, 0 crashed, 0 vetoed; 1 noise repeats, "
        "1 confirmation re-runs")
    assert_git_matches_journal(standin)


def test_a_win_inside_the_margin_is_discarded_at_the_run_limit(standin, dataset_dir):
    # best 1.0, 1.002, 0.999 against the candidate's 0.999, 1.0, 0.999: 0.87 sigma after 3
    session, events = started(standin, ScriptedAgent(("VALUE = 1.0", "VALUE = 0.999")),
                              settings(dataset_dir, max_experiments=1, max_candidate_runs=3,
                                       jitter="0,0,0.002,0.001,-0.001"))
    assert session.wait(WAIT_S)
    assert run_kinds(session) == [("baseline", "keep"), ("experiment", "discard"),
                                  ("noise", "discard"), ("rerun", "discard"),
                                  ("noise", "discard"), ("rerun", "discard")]
    judged = session.experiments()[1]
    assert judged.val_bpb == pytest.approx(0.999333, abs=1e-6)       # the mean of its runs
    assert (judged.measure.n_best, judged.measure.n_candidate) == (3, 3)
    row = session.journal.run_rows()[1]
    assert row["message"].endswith("after 3 runs: not distinguishable from noise")
    assert session.best[1] == pytest.approx(1.0)
    assert session.journal.summary_line() == (
        "1 experiments: 0 kept, 1 discarded, 0 crashed, 0 vetoed; 2 noise repeats, "
        "2 confirmation re-runs")


def test_the_best_runs_again_to_follow_drift(standin, dataset_dir):
    agent = ScriptedAgent(("VALUE = 1.0", "VALUE = 1.1"), ("EXTRA = 0", "EXTRA = 1"))
    session, events = started(standin, agent, settings(dataset_dir, max_experiments=2,
                                                       best_rerun_every=1))
    assert session.wait(WAIT_S)
    assert [k for k, _ in run_kinds(session)] == ["baseline", "experiment", "noise",
                                                  "experiment"]
    assert events.of(RunStarted)[2].description == "re-run of the best to follow drift"


def test_a_keep_the_bests_rerun_shows_was_noise_is_reverted_in_git_and_the_journal(
        standin, dataset_dir):
    """Issue 22: the sequential rule keeps #1 on two lucky runs; the best's drift re-run
    puts its mean back above the baseline's, so the keep is reverted: the branch goes back
    to the baseline, the journal records why, and #3 trains on the baseline."""
    agent = ScriptedAgent(("EXTRA = 0", "EXTRA = 1"), ("VALUE = 1.0", "VALUE = 1.1"),
                          ("VALUE = 1.0", "VALUE = 1.2"))
    # runs: baseline 1.0; #1 0.990; the best again 1.004; #1 again 0.991 (kept); #2 1.1
    # (discarded); the best (#1) again for drift 1.03: reverted; the baseline again for
    # drift (two candidate runs since it ran); #3 1.2 on the baseline
    session, events = started(standin, agent, settings(
        dataset_dir, keep_rule="sequential", max_experiments=3, best_rerun_every=1,
        jitter="0,-0.010,0.004,-0.009,0,0.03,0"))
    assert session.wait(WAIT_S)
    baseline, first = session.experiments()[0], session.experiments()[1]
    assert run_kinds(session) == [("baseline", "keep"), ("experiment", "reverted"),
                                  ("noise", "discard"), ("rerun", "discard"),
                                  ("experiment", "discard"), ("noise", "discard"),
                                  ("noise", "discard"), ("experiment", "discard")]
    assert first.measure.n_candidate == 2 and first.measure.drop_margin is not None
    revert = first.revert
    assert revert.back_to == baseline.commit
    assert revert.run_id == session.journal.run_rows()[5]["id"]
    assert (revert.measure.n_best, revert.measure.n_candidate) == (2, 3)
    assert revert.measure.improvement < 0 and revert.reason.startswith("reverted: over 3 runs")
    settled = events.wait(ExperimentSettled)
    assert settled.experiment.status is RunStatus.REVERTED
    assert [e.commit for e in events.of(BestUpdated)] == [baseline.commit, first.commit,
                                                          baseline.commit]
    warning = next(n for n in events.of(Notice, level="warning") if "reverted" in n.message)
    assert warning.message.startswith(f"experiment #{first.id} (EXTRA = 0 -> EXTRA = 1) "
                                      f"reverted: over 3 runs")
    assert warning.message.endswith(f"the research branch went back to {baseline.commit[:7]}")
    third = session.experiments()[-1]
    assert standin.parent_of(third.commit) == baseline.commit
    assert session.best == (baseline.commit, baseline.val_bpb)
    assert session.journal.summary_line().startswith(
        "3 experiments: 0 kept, 1 reverted, 2 discarded")
    assert_git_matches_journal(standin)


def _hold_runs_at_a_gate(workspace, events: Events, releases: int) -> threading.Thread:
    """Every run waits at a FIFO; let the first `releases` runs through, one at a time: the
    k-th release waits for the k-th run to start (so the run before it has exited)."""
    gate = workspace.pairlab_dir / "gate"
    os.mkfifo(gate)

    def release():
        for k in range(1, releases + 1):
            events.wait(RunStarted, count=k)
            with open(gate, "w") as fifo:        # blocks until that run opens the gate
                fifo.write("go")
    thread = threading.Thread(target=release, daemon=True)
    thread.start()
    return thread


def test_quitting_during_a_confirmation_rerun_requeues_it(standin, dataset_dir):
    """Issue 8: the stop used to record the experiment as discarded for good."""
    config = dict(max_experiments=1, jitter="0,0,0.001,0,0")
    events = Events()
    _hold_runs_at_a_gate(standin, events, releases=3)  # baseline, experiment, the best again
    session, events = started(standin, ScriptedAgent(("VALUE = 1.0", "VALUE = 0.998")),
                              settings(dataset_dir, **config), events)
    rerun = events.wait(RunStarted, proposal_id=1, count=2)
    assert "re-run" in rerun.description
    session.stop()
    assert run_kinds(session)[1:] == [("experiment", "confirming"), ("noise", "discard"),
                                      ("rerun", "interrupted")]
    session.journal.close()
    assert_git_matches_journal(standin)

    (standin.pairlab_dir / "gate").unlink()
    again, events = started(standin, ScriptedAgent(), settings(dataset_dir, **config))
    assert again.wait(WAIT_S)
    assert [k for k in run_kinds(again)] == [
        ("baseline", "keep"), ("experiment", "keep"), ("noise", "discard"),
        ("rerun", "interrupted"), ("rerun", "discard")]
    assert again.best[1] == pytest.approx(0.998)
    again.journal.close()
    assert_git_matches_journal(standin)


# ---------------------------------------------------------------------- an unusually large win

@pytest.mark.parametrize("decide", ["accept", "veto"])
def test_an_unusually_large_win_is_held_for_a_human_even_in_auto_mode(standin, dataset_dir,
                                                                      decide):
    """Issue 9 item 5: 50% better is confirmed by a re-run, then waits for a human."""
    session, events = started(standin, ScriptedAgent(("VALUE = 1.0", "VALUE = 0.5")),
                              settings(dataset_dir))
    try:
        held = events.wait(WinHeld)
        baseline = events.of(BestUpdated)[0]
        assert (held.proposal_id, held.val_bpb, held.best_val_bpb) == (1, 0.5, 1.0)
        assert "+VALUE = 0.5" in held.diff
        notice = next(n for n in events.of(Notice) if n.message.startswith("unusually large"))
        assert notice.message.startswith("unusually large win: look before it becomes the best")
        assert session.best == (baseline.commit, 1.0)         # not kept automatically
        assert session.proposal(1).state is ProposalState.HELD
        assert run_kinds(session) == [("baseline", "keep"), ("experiment", "held"),
                                      ("rerun", "discard")]
        # Back in the review queue, marked held, for the app to show with its diff.
        assert session.state == "reviewing"
        assert [(p.id, p.state) for p in session.pending()] == [(1, ProposalState.HELD)]
        assert events.of(ProposalReady)[-1].proposal.state is ProposalState.HELD
        if decide == "accept":
            session.accept(1)
            kept = events.wait(BestUpdated, count=2)
            assert session.best == (kept.commit, 0.5) and standin.head() == kept.commit
            assert run_kinds(session)[1] == ("experiment", "keep")
        else:
            session.veto(1, "too good to be true")
            assert session.best == (baseline.commit, 1.0)
            assert run_kinds(session)[1] == ("experiment", "discard")
            assert session.journal.totals().vetoed == 0     # it trained: a discard
        settled = events.wait(ExperimentSettled).experiment
        assert settled.status is (RunStatus.KEEP if decide == "accept" else RunStatus.DISCARD)
        assert session.pending() == []
        with pytest.raises(CommandRefused, match="#1 has already trained"):
            session.accept(1)
    finally:
        session.stop()
    session.journal.close()
    assert_git_matches_journal(standin)


def test_the_large_win_limits_are_settings(standin, dataset_dir):
    session, events = started(standin, ScriptedAgent(("VALUE = 1.0", "VALUE = 0.5")),
                              settings(dataset_dir, max_experiments=1, large_win_sigmas=None,
                                       large_win_fraction=None))
    assert session.wait(WAIT_S)
    # no noise estimate: the best runs again; the stand-in repeats exactly (sigma 0)
    assert run_kinds(session) == [("baseline", "keep"), ("experiment", "keep"),
                                  ("noise", "discard")]
    assert not events.of(WinHeld)


# ---------------------------------------------------------------------- edits carry their base

def test_an_edit_opened_before_the_best_moved_merges_onto_the_new_best(standin, dataset_dir):
    """Issue 8: saving an edit opened on the old best used to revert the kept change."""
    agent = ScriptedAgent(("VALUE = 1.0", "VALUE = 0.99"), ("EXTRA = 0", "EXTRA = 1"))
    session, events = started(standin, agent, settings(dataset_dir, mode="review",
                                                       drafts_ahead=2))
    try:
        events.wait(ProposalReady, count=2)
        opened_on = session.proposal(2).base_commit
        opened = session.proposal_text(2, "train.py")       # what the editor shows
        session.accept(1)
        kept = events.wait(BestUpdated, count=2)
        events.wait(ProposalRebased, proposal_id=2)
        assert session.proposal(2).base_commit == kept.commit != opened_on

        conflicting = opened.replace("VALUE = 1.0", "VALUE = 0.8")
        with pytest.raises(CommandRefused, match="it reopens on the new base"):
            session.edit(2, {"train.py": conflicting}, base_commit=opened_on)
        assert [p.id for p in session.pending()] == [2]     # still waiting, nothing lost

        human = opened.replace("# a second line", "# a second line, set by hand")
        session.edit(2, {"train.py": human}, base_commit=opened_on)
        trained = session.proposal(2).files["train.py"]
        assert "VALUE = 0.99" in trained                    # the kept change stays
        assert "EXTRA = 1  # a second line, set by hand" in trained
        assert len(events.of(ProposalRebased, proposal_id=2)) == 1   # rebased once
    finally:
        session.stop()


# ---------------------------------------------------------------------- decisions never race

def test_an_auto_accept_racing_a_human_accept_is_refused_not_an_internal_error(standin,
                                                                              dataset_dir):
    """Issue 8: a human decision made as the proposal arrived used to raise KeyError in the
    drafter and stop the loop. Now one decision wins and the other is refused in words."""
    session = Session(standin, ScriptedAgent(("VALUE = 1.0", "VALUE = 1.1")),
                      settings(dataset_dir, max_experiments=1), monitor=False)
    events, refusals = Events(), []

    def human_accepts(event):
        if isinstance(event, ProposalReady):
            try:
                session.accept(event.proposal.id)
            except CommandRefused as refusal:
                refusals.append(str(refusal))
    session.subscribe(events)
    session.subscribe(human_accepts)
    session.start()
    assert session.wait(WAIT_S)
    decisions = [(e.decision.kind.value, e.decision.who) for e in events.of(DecisionMade)]
    assert decisions == [("accept", "auto")]
    assert refusals == ["#1 was already accepted and waits to train"] or \
        refusals == ["#1 was already accepted and is training"]
    assert not events.of(Notice, level="error")
    assert events.of(SessionStopped)[0].reason == "reached --max-experiments 1"
    with pytest.raises(CommandRefused, match="the loop has stopped"):
        session.accept(1)


def test_a_second_decision_on_a_proposal_is_refused_with_what_happened(standin, dataset_dir):
    session, events = started(standin, ScriptedAgent(("VALUE = 1.0", "VALUE = 1.1")),
                              settings(dataset_dir, mode="review"))
    try:
        events.wait(ProposalReady)
        session.pause()                                  # decided, but not trained yet
        session.accept(1)
        with pytest.raises(CommandRefused, match="#1 was already accepted and waits to train"):
            session.veto(1, "too late")
        with pytest.raises(CommandRefused, match="there is no proposal #9"):
            session.accept(9)
    finally:
        session.stop()


def test_a_reader_never_reaches_the_loops_own_proposals(standin, dataset_dir):
    """Readers share the published snapshot (one copy, made by the owner): whatever a
    reader does to it, the loop's own proposals and the next snapshot are untouched."""
    session, events = started(standin, ScriptedAgent(("VALUE = 1.0", "VALUE = 0.99")),
                              settings(dataset_dir, mode="review"))
    try:
        events.wait(ProposalReady)
        mine = session.pending()[0]
        assert session.pending()[0] is mine                  # no copy per read
        mine.files["train.py"] = "garbage"
        mine.description = "changed by a reader"
        session.proposal(1).diff = "garbage"
        session.pause()                                      # a message: a new snapshot
        fresh = session.pending()[0]
        assert fresh is not mine
        assert fresh.description == "VALUE = 1.0 -> VALUE = 0.99"
        assert "VALUE = 0.99" in fresh.files["train.py"] and "+VALUE = 0.99" in fresh.diff
    finally:
        session.stop()


def test_readers_never_wait_while_the_coordinator_writes(standin, dataset_dir):
    """Issue 8: journal writes ran under the lock the UI's getters take."""
    session, events = started(standin, ScriptedAgent(("VALUE = 1.0", "VALUE = 0.99")),
                              settings(dataset_dir, mode="review"))
    writing, release = threading.Event(), threading.Event()
    record = session.journal.record_decision

    def slow_record(*args, **kwargs):
        writing.set()
        release.wait(WAIT_S)
        return record(*args, **kwargs)
    try:
        events.wait(ProposalReady)
        session.journal.record_decision = slow_record
        accepting = threading.Thread(target=session.accept, args=(1,), daemon=True)
        accepting.start()
        assert writing.wait(WAIT_S)
        read = {}
        reader = threading.Thread(target=lambda: read.update(
            pending=session.pending(), state=session.state, best=session.best,
            proposal=session.proposal(1)), daemon=True)
        reader.start()
        reader.join(WAIT_S)
        assert not reader.is_alive(), "a getter waited for the coordinator's write"
        assert [p.id for p in read["pending"]] == [1]
        release.set()
        accepting.join(WAIT_S)
        assert not accepting.is_alive()
    finally:
        release.set()
        session.stop()


def test_detail_only_state_changes_reach_subscribers(standin, dataset_dir):
    gate = threading.Semaphore(0)
    agent = ScriptedAgent(("VALUE = 1.0", "VALUE = 1.1"), ("EXTRA = 0", "EXTRA = 2"),
                          gate=gate)
    session, events = started(standin, agent, settings(dataset_dir, mode="review",
                                                       drafts_ahead=2))
    try:
        events.wait(RunFinished)                             # the baseline: trainer idle
        gate.release()
        events.wait(StateChanged, state="reviewing", detail="1 waiting for review")
        gate.release()
        events.wait(StateChanged, state="reviewing", detail="2 waiting for review")
        session.veto(1, "no")
        events.wait(StateChanged, state="reviewing", detail="1 waiting for review", count=2)
    finally:
        session.stop()


# ---------------------------------------------------------------------- failures

def test_a_trainer_that_dies_stops_the_loop_and_says_so(standin, dataset_dir, monkeypatch):
    """Issue 8: a trainer dying of anything but a full disk never emitted SessionStopped."""
    from engine.run.runner import Runner

    def broken(self, *args, **kwargs):
        raise RuntimeError("the accelerator fell off the bus")
    monkeypatch.setattr(Runner, "run", broken)
    session, events = started(standin, ScriptedAgent(), settings(dataset_dir))
    assert session.wait(WAIT_S)
    stopped = events.wait(SessionStopped)
    assert stopped.reason == "internal error"
    error = events.of(Notice, level="error")[0]
    assert error.message == "internal error: RuntimeError: the accelerator fell off the bus"
    assert "accelerator fell off" in (standin.pairlab_dir / "engine.log").read_text()
    assert session.stopped and session.state == "stopped"


def test_unattended_agent_failures_fall_back_to_the_tuner_and_never_pause(tiny_workspace,
                                                                        dataset_dir):
    """Issue 8 item 5: a headless auto loop whose API failed sat paused until killed."""
    from tests.conftest import TINY_ENV
    config = SessionSettings(mode="auto", budget_s=5.0, max_steps=2, noise_repeats=0,
                             device="cpu", data_dir=dataset_dir, extra_env=dict(TINY_ENV),
                             hard_timeout_s=60.0, agent_backoff_s=0.0)
    session, events = started(tiny_workspace, FailingAgent(), config)
    try:
        ready = events.wait(ProposalReady)
        assert ready.proposal.agent == "tuner"
        warnings = [n.message for n in events.of(Notice, level="warning")]
        assert warnings[:2] == [
            "the API answered badly (agent failure 1 in a row); retrying in 0s",
            "the API answered badly (agent failure 2 in a row); retrying in 0s"]
        assert warnings[2] == ("the flaky-api agent failed 3 times in a row (last: the API "
                               "answered badly); pairlab switched to the offline tuner so the "
                               "loop goes on")
        assert not events.of(StateChanged, state="paused") and not session.paused
    finally:
        session.stop()


# ---------------------------------------------------------------------- steering notes

def test_a_steering_note_goes_into_the_next_draft_and_the_journal(standin, dataset_dir):
    agent = ScriptedAgent(("VALUE = 1.0", "VALUE = 1.1"), ("EXTRA = 0", "EXTRA = 3"))
    session, events = started(standin, agent, settings(dataset_dir, mode="review"))
    try:
        events.wait(ProposalReady)
        note_id = session.note("  try the EXTRA knob  ")
        assert events.wait(SteeringNote).text == "try the EXTRA knob"
        with pytest.raises(CommandRefused, match="needs some text"):
            session.note("   ")
        session.veto(1, "no")
        events.wait(ProposalReady, count=2)
        assert "A steering note from the human: try the EXTRA knob" in agent.contexts[1].feedback
        assert "EXTRA knob" not in agent.contexts[0].feedback
        assert session.journal.notes_for(2) == ["try the EXTRA knob"]
        assert session.journal.notes_for(1) == [] and session.journal.open_notes() == []
        assert note_id == 1
    finally:
        session.stop()


def test_stale_marking_and_rebasing_happen_once(standin, dataset_dir):
    """A proposal that conflicts with the new best is marked stale once, and the agent told."""
    agent = ScriptedAgent(("VALUE = 1.0", "VALUE = 0.99"), ("VALUE = 1.0", "VALUE = 0.98"))
    session, events = started(standin, agent, settings(dataset_dir, mode="review",
                                                       drafts_ahead=2))
    try:
        events.wait(ProposalReady, count=2)
        session.accept(1)
        events.wait(BestUpdated, count=2)
        assert session.journal.get_proposal(2).state is ProposalState.STALE
        assert [p.id for p in session.pending()] == []
        with pytest.raises(CommandRefused, match="#2 no longer applies to the best"):
            session.accept(2)
    finally:
        session.stop()
    assert len(events.of(ProposalStale, proposal_id=2)) == 1
    assert run_kinds(session) == [("baseline", "keep"), ("experiment", "keep"),
                                  ("noise", "discard")]
