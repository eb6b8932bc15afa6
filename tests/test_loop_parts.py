"""The coordinator's parts on their own, each against a fake host (engine/loop/host.py): what
state a part owns, what it asks of its host, what it decides. No coordinator, no thread, no
training; the loop's tests (test_coordinator.py and beside it) run them inside the real one."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from engine.agents.base import AgentError
from engine.base.commands import CommandRefused, EditProgram
from engine.base.events import RunFinished
from engine.base.records import (Decision, DecisionKind, Proposal, ProposalState, RunResult,
                                 RunStatus)
from engine.loop import workers
from engine.loop.drafting import AGENT_FAILURES_BEFORE_FALLBACK, Drafting
from engine.loop.loop_state import LoopState, ProgramCommit, Snapshot
from engine.loop.lost_runs import LostRuns
from engine.loop.planner import RunPlan
from engine.loop.program_edits import PROGRAM_EDIT_STATE, ProgramEdits
from engine.loop.promoting import Promoting
from engine.loop.speculation import Speculation


class FakeJournal:
    def __init__(self, rows=()):
        self.rows = list(rows)
        self.state: dict = {}
        self.finished: list[tuple[RunResult, ProposalState | None]] = []
        self.statuses: list[tuple[str, RunStatus, str]] = []

    def run_rows(self):
        return self.rows

    def finish_run(self, result, proposal_state=None, **_):
        self.finished.append((result, proposal_state))
        return SimpleNamespace(run_id=result.run_id, status=result.status)

    def set_run_status(self, run_id, status, message):
        self.statuses.append((run_id, status, message))
        return SimpleNamespace(run_id=run_id, status=status)

    def set_state(self, key, value):
        self.state[key] = value

    def get_state(self, key, default=None):
        return self.state.get(key, default)


class FakeHost:
    """The services LoopHost names, recorded; anything a part asks beyond them fails."""

    def __init__(self, mode="review", journal=None, workspace=None, **settings):
        self.loop = LoopState(mode=mode)
        self.journal = journal or FakeJournal()
        self.workspace = workspace
        self.settings = SimpleNamespace(**{"speculate": True, "device": "cpu",
                                           "agent_backoff_s": 2.0, **settings})
        self.snapshot = Snapshot()
        self.events: list = []
        self.notices: list[tuple[str, str]] = []
        self.resets = 0
        self.paused: list[str] = []

    def emit(self, event):
        self.events.append(event)

    def notice(self, level, message, hint=""):
        self.notices.append((level, message))

    def reset_to_best(self):
        self.resets += 1

    def recorded_result(self, run_id, status, message):
        return RunResult(run_id, status, message=message or "")

    def pause(self, reason):
        self.paused.append(reason)


def proposal(proposal_id: int) -> Proposal:
    return Proposal(proposal_id, f"change {proposal_id}", "", "", "base", "tuner", {})


def lost(plan: RunPlan, run_id="r3") -> workers.RunDone:
    return workers.RunDone(plan, run_id, 3, "c0ffee",
                           RunResult(run_id, RunStatus.INTERRUPTED, message="the node died"))


# ---------------------------------------------------------------------- lost runs

def test_lost_runs_count_the_interrupted_runs_of_a_plan_in_a_row():
    plan = RunPlan("experiment", "", 4, "")
    rows = [{"kind": "experiment", "proposal_id": 4, "status": s}
            for s in ("interrupted", "keep", "interrupted", "interrupted")]
    rows.append({"kind": "noise", "proposal_id": None, "status": "interrupted"})
    assert LostRuns(FakeHost(journal=FakeJournal(rows))).lost_runs(plan) == 2


def test_a_lost_experiment_is_accepted_again_first_in_the_queue():
    host = FakeHost()
    host.loop.proposals[4] = proposal(4)
    host.loop.queue = [5]
    LostRuns(host).requeue_lost(lost(RunPlan("experiment", "", 4, "")))
    assert host.loop.queue == [4, 5]
    assert host.loop.proposals[4].state is ProposalState.ACCEPTED
    assert host.journal.finished[0][1] is ProposalState.ACCEPTED
    assert [type(e) for e in host.events] == [RunFinished] and host.resets == 1
    assert host.notices == [("warning", "run r3 (#4) was interrupted: the node died")]


def test_a_lost_noise_run_is_left_to_the_planner():
    host = FakeHost()
    LostRuns(host).requeue_lost(lost(RunPlan("noise", "c0ffee", None, "noise repeat")))
    assert host.loop.queue == [] and host.journal.finished[0][1] is None


# ---------------------------------------------------------------------- program edits

class ProgramWorkspace:
    def __init__(self, program="old\n"):
        self.text, self.commits = program, []

    def program(self):
        return self.text

    def write_program(self, text):
        self.text = text


def program_host(**kwargs):
    host = FakeHost(workspace=ProgramWorkspace(), **kwargs)
    host.drafting = SimpleNamespace(feedback=[])
    host.trains_aside = lambda plan: False
    return host


@pytest.mark.parametrize("text, refusal", [("  \n", "program.md cannot be empty"),
                                           ("old\n", "program.md is unchanged")])
def test_an_empty_or_unchanged_program_is_refused(text, refusal):
    with pytest.raises(CommandRefused, match=refusal):
        ProgramEdits(program_host()).edit(EditProgram(text))


def test_an_edit_waits_while_a_run_trains_in_the_checkout_and_the_agent_is_told():
    host = program_host()
    host.loop.runs[0] = SimpleNamespace(plan=RunPlan("experiment", "", 1, ""))
    program = ProgramEdits(host)
    assert program.edit(EditProgram("new\n")) is None          # committed when the run ends
    assert program.waiting_edit == "new\n" and host.workspace.text == "new\n"
    assert host.journal.state[PROGRAM_EDIT_STATE] == "new\n"
    assert "The human changed program.md" in host.drafting.feedback[0]
    assert "-old\n+new\n" in host.drafting.feedback[0]


def test_new_work_starts_on_the_program_commit_only_while_it_sits_on_the_best():
    host = program_host()
    program = ProgramEdits(host)
    host.snapshot = Snapshot(best=("best1", 1.0))
    assert program.best_commit() == "best1"
    program.committed = ProgramCommit(on="best1", commit="prog1")
    assert (program.measured_commit(), program.best_commit()) == ("best1", "prog1")
    assert program.is_best_base("prog1") and program.is_best_base("best1")
    host.snapshot = Snapshot(best=("best2", 0.9))           # the best moved without it
    assert program.best_commit() == "best2" and not program.is_best_base("prog1")


def test_a_restart_gives_the_part_its_program_commit_and_waiting_edit_back():
    host = program_host()
    host.journal.state = {"program_commit": {"on": "b", "commit": "p"}, PROGRAM_EDIT_STATE: "x"}
    program = ProgramEdits(host)
    program.restore_program()
    assert (program.committed, program.waiting_edit) == (ProgramCommit("b", "p"), "x")


# ---------------------------------------------------------------------- speculation

def test_speculation_is_review_mode_with_the_setting_on():
    assert Speculation(FakeHost(mode="review")).speculating
    assert not Speculation(FakeHost(mode="auto")).speculating
    assert not Speculation(FakeHost(mode="review", speculate=False)).speculating


def test_the_proposals_left_to_speculate_on_are_neither_trained_ahead_nor_training():
    host = FakeHost()
    host.loop.review = [1, 2, 3]
    host.loop.runs[0] = SimpleNamespace(plan=RunPlan("speculative", "", 2, ""), superseded="")
    speculation = Speculation(host)
    speculation.ahead[1] = "r1"
    assert speculation.unspeculated() == (3,)
    assert speculation.speculative_run(2) is host.loop.runs[0]


def test_a_veto_of_a_run_trained_ahead_records_it_as_vetoed_and_forgets_it():
    host = FakeHost()
    speculation = Speculation(host)
    speculation.ahead[7] = "r7"
    speculation.decided_speculation(Decision(7, DecisionKind.VETO, "human"))
    assert speculation.ahead == {}
    assert host.journal.statuses == [("r7", RunStatus.VETOED,
                                      "vetoed while it trained ahead of its review")]
    assert [e.result.status for e in host.events] == [RunStatus.VETOED]


def test_a_run_trained_ahead_waits_for_the_human():
    host = FakeHost()
    speculation = Speculation(host)
    result = RunResult("r2", RunStatus.MEASURED, val_bpb=0.9)
    speculation.trained_ahead(workers.RunDone(RunPlan("speculative", "", 2, ""), "r2", 2,
                                              "c2", result))
    assert speculation.ahead == {2: "r2"} and result.status is RunStatus.SPECULATIVE
    assert host.events[0].result is result


# ---------------------------------------------------------------------- drafting

def test_an_agent_failure_in_review_mode_pauses_for_the_human():
    host = FakeHost(mode="review")
    drafting = Drafting(host, SimpleNamespace(name="claude"))
    drafting.agent_failed(AgentError("the API is unreachable", "check the network"))
    assert host.paused == ["agent error: the API is unreachable"] and drafting.failures == 0


def test_agent_failures_in_auto_mode_back_off_then_fall_back_to_the_tuner(monkeypatch):
    monkeypatch.setattr("engine.loop.drafting.time.time", lambda: 1000.0)
    host = FakeHost(mode="auto")
    drafting = Drafting(host, SimpleNamespace(name="claude"))
    for failures in range(1, AGENT_FAILURES_BEFORE_FALLBACK):
        drafting.agent_failed(AgentError("overloaded"))
        assert (drafting.failures, drafting.allowed_at) == (failures,
                                                            1000.0 + 2.0 * 2 ** (failures - 1))
    drafting.agent_failed(AgentError("overloaded"))
    assert drafting.agent.name == "tuner" and (drafting.failures, drafting.allowed_at) == (0, 0.0)
    level, message = host.notices[-1]
    assert level == "warning" and "switched to the offline tuner" in message
    assert host.paused == []


# ---------------------------------------------------------------------- promoting

class CountingWorkspace:
    config = SimpleNamespace(targets=("train.py",))

    def __init__(self):
        self.reads = 0

    def parent_of(self, commit):
        self.reads += 1
        return f"parent-of-{commit}"

    def file_at(self, commit, path):
        self.reads += 1
        return "DEPTH = 4\n" if commit.startswith("parent") else "DEPTH = 6\n"


def test_the_git_facts_of_a_kept_change_are_read_once_and_kept_by_the_part():
    workspace = CountingWorkspace()
    promoting = Promoting(FakeHost(workspace=workspace))
    row = {"id": "r1", "experiment": 3, "commit_sha": "abc"}
    first = promoting.kept_change(row, "cpu")
    reads = workspace.reads
    assert promoting.kept_change(row, "cpu") == first and workspace.reads == reads
    assert (first.parent, first.depth, first.parent_depth) == ("parent-of-abc", 6, 4)
    assert promoting.kept_facts == {"abc": ("parent-of-abc", 6, 4)}
