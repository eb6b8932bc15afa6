"""The one reducer (engine/base/view.py): the loop's view after each event, as the engine's
service, the client's mirror and the app all apply it. Pure: no engine, no thread."""

from __future__ import annotations

from dataclasses import replace

from engine.base.events import (BestUpdated, DecisionMade, DraftFailed, DraftStarted, LogLines,
                                ModeChanged, Notice, ProposalReady, ProposalRebased,
                                ProposalStale, ReasoningDelta, RunAccepted, RunFinished,
                                RunProgress, RunStarted, SessionStopped, StateChanged,
                                SteeringNote)
from engine.base.records import (Decision, DecisionKind, Experiment, Proposal, ProposalState,
                                 RunKind, RunResult, RunStatus, Usage)
from engine.base.view import LOG_TAIL_LINES, ReasoningChunk, View, reduce, running_row


def proposal(proposal_id: int, state=ProposalState.PENDING, cost=0.0, notes=()) -> Proposal:
    return Proposal(id=proposal_id, description=f"idea {proposal_id}", hypothesis="", diff="d",
                    base_commit="base", agent="tuner", files={}, usage=Usage(cost_usd=cost),
                    state=state, notes=list(notes))


def started(run_id: str, proposal_id: int | None, slot: int = 0, **fields) -> RunStarted:
    return RunStarted(run_id, int(run_id[1:]), proposal_id, "c" + run_id, f"run {run_id}", 60.0,
                      f"/tmp/{run_id}.log", slot=slot, slots=2, **fields)


def finished(run: RunStarted, val_bpb: float = 1.0) -> RunFinished:
    experiment = replace(running_row(run), status=RunStatus.KEEP, val_bpb=val_bpb,
                         finished_at=run.at + 60)
    return RunFinished(experiment, RunResult(run.run_id, RunStatus.KEEP, val_bpb))


def fold(events, view: View | None = None) -> View:
    view = view or View()
    for event in events:
        view = reduce(view, event)
    return view


def test_a_proposal_goes_from_review_to_the_queue_to_a_run_to_the_table():
    run = started("r1", 1)
    views = [View()]
    for event in (ProposalReady(proposal(1, cost=0.25)),
                  DecisionMade(Decision(1, DecisionKind.ACCEPT, "human")),
                  run, finished(run, 0.98)):
        views.append(reduce(views[-1], event))
    ready, accepted, training, done = views[1:]
    assert [p.id for p in ready.pending] == [1] and ready.total_cost == 0.25
    assert not accepted.pending and [p.state for p in accepted.queued] == [ProposalState.ACCEPTED]
    assert not training.queued and training.current_run is run
    assert not done.runs and [(e.run_id, e.val_bpb) for e in done.experiments] == [("r1", 0.98)]


def test_a_veto_and_a_held_win_leave_review_without_queueing():
    view = fold([ProposalReady(proposal(1)), ProposalReady(proposal(2, ProposalState.HELD)),
                 DecisionMade(Decision(1, DecisionKind.VETO, "human", reason="no")),
                 DecisionMade(Decision(2, DecisionKind.ACCEPT, "human"))])
    assert view.pending == () and view.queued == ()


def test_pending_stays_in_id_order_and_a_proposal_the_engine_sends_again_is_one_row():
    view = fold([ProposalReady(proposal(3)), ProposalReady(proposal(1)),
                 ProposalReady(proposal(3))])
    assert [p.id for p in view.pending] == [1, 3]


def test_a_rebase_moves_the_proposal_and_a_stale_one_leaves():
    view = fold([ProposalReady(proposal(1)), ProposalReady(proposal(2)),
                 ProposalRebased(1, "newbase", "d2"), ProposalStale(2, "conflicts")])
    assert [(p.id, p.base_commit, p.diff) for p in view.pending] == [(1, "newbase", "d2")]


def test_parts_an_event_does_not_touch_are_shared_so_readers_compare_with_is():
    before = fold([ProposalReady(proposal(1)), started("r1", None)])
    after = reduce(before, ModeChanged("auto"))
    assert after.mode == "auto"
    assert after.pending is before.pending and after.runs is before.runs
    assert after.experiments is before.experiments
    assert reduce(after, Notice("info", "hello")) is after   # nothing shown changed


def test_runs_are_kept_by_slot_and_the_lowest_is_followed():
    first, second = started("r1", 1, slot=1), started("r2", 2, slot=0, speculative=True)
    view = fold([first, second])
    assert [r.run_id for r in view.runs] == ["r2", "r1"] and view.current_run is second
    accepted = reduce(view, RunAccepted("r2", 2))
    assert not accepted.runs[0].speculative and accepted.runs[0].kind is RunKind.EXPERIMENT
    assert reduce(accepted, finished(accepted.runs[0])).current_run is first


def test_the_log_tail_and_progress_follow_the_followed_run_only_and_are_bounded():
    run, other = started("r1", None), started("r2", None, slot=1)
    lines = [f"line {i}" for i in range(LOG_TAIL_LINES + 50)]
    view = fold([run, other, LogLines("r1", lines), LogLines("r2", ["elsewhere"]),
                 RunProgress("r1", 1, 0.5, 1.0, 1.0, 59.0), RunProgress("r2", 1, 0.5, 1.0, 1.0, 59.0)])
    assert len(view.log_tail) == LOG_TAIL_LINES and view.log_tail[-1] == lines[-1]
    assert "elsewhere" not in view.log_tail and [p.run_id for p in view.progress] == ["r1"]
    restarted = reduce(reduce(view, finished(run)), started("r3", None))
    assert restarted.log_tail == () and restarted.progress == ()


def test_the_draft_gathers_its_reasoning_until_its_proposal_or_its_failure():
    view = fold([DraftStarted(5, "claude", "base"), ReasoningDelta(5, "thinking", "a"),
                 ReasoningDelta(5, "thinking", "b"), ReasoningDelta(5, "text", "c"),
                 ReasoningDelta(4, "text", "an old draft's")])
    assert view.draft.reasoning == (ReasoningChunk("thinking", "ab"), ReasoningChunk("text", "c"))
    assert reduce(view, ProposalReady(proposal(5))).draft is None
    assert reduce(view, DraftFailed(5, "API down")).draft is None
    assert reduce(view, DraftFailed(4, "old")).draft is view.draft


def test_an_error_stays_while_the_loop_is_held_and_goes_when_it_runs_again():
    view = fold([Notice("error", "disk full", "free space"), StateChanged("paused", "disk full")])
    assert view.error == "disk full (free space)" and view.paused
    going = reduce(view, StateChanged("training", "r1"))
    assert going.error == "" and not going.paused


def test_notes_wait_until_a_draft_takes_them():
    view = fold([SteeringNote(1, "try a wider MLP"), SteeringNote(2, "keep the LR")])
    taken = reduce(view, ProposalReady(proposal(3, notes=["try a wider MLP"])))
    assert [n.note_id for n in taken.open_notes] == [2]


def test_the_best_and_a_stop():
    view = fold([started("r1", None), BestUpdated("c1", 0.97, 1),
                 SessionStopped("max experiments", "summary")])
    assert view.best == ("c1", 0.97) and view.stopped and view.state == "stopped"
    assert view.runs == ()


def test_a_running_row_is_the_run_as_the_table_shows_it_while_it_trains():
    row = running_row(started("r7", 3, speculative=True))
    assert isinstance(row, Experiment) and (row.id, row.proposal_id, row.run_id) == (7, 3, "r7")
    assert row.finished_at is None and row.speculative
