"""Steering (issue 10 item 4): a note to the agent and the human's program.md, through the
engine (stand-in runs: real git, SQLite, subprocesses) and through the app on a real
engine service (Pilot)."""

from __future__ import annotations

import asyncio
import os
import subprocess

import pytest
from test_service_support import WAIT_S as SERVICE_WAIT_S
from test_service_support import Watch
from test_tui_support import pilot_test
from textual.widgets import Input, TextArea

from engine.base.commands import CommandRefused
from engine.base.events import (BestUpdated, Notice, ProposalReady, RunFinished, RunStarted,
                                SteeringNote)
from engine.base.records import RunStatus
from engine.report import markdown, summarize
from engine.service.client import connect
from engine.service.server import EngineService, socket_path
from tests.test_coordinator import WAIT_S, ScriptedAgent, settings, standin, started
from tui.app import PairlabApp
from tui.screens.steering import NoteScreen, ProgramEditorScreen

__all__ = ["standin"]                    # the fixture, used by name below

SIZE = (120, 40)
NEW_PROGRAM = "Lower VALUE. Leave EXTRA alone: the human says it is a dead end.\n"


def git(workspace, *args) -> str:
    return subprocess.run(["git", *args], cwd=workspace.root, capture_output=True, text=True,
                          check=True).stdout


def program_on_branch(workspace) -> str:
    return workspace.file_at(workspace.head(), "program.md")


# ---------------------------------------------------------------------- the engine: a note

def test_a_note_reaches_the_next_draft_and_the_proposal_it_influenced_names_it(standin,
                                                                              dataset_dir):
    agent = ScriptedAgent(("VALUE = 1.0", "VALUE = 1.1"), ("EXTRA = 0", "EXTRA = 3"))
    session, events = started(standin, agent, settings(dataset_dir, mode="review"))
    try:
        events.wait(ProposalReady)
        session.note("try the EXTRA knob")
        assert events.wait(SteeringNote).text == "try the EXTRA knob"
        session.veto(1, "no")
        influenced = events.wait(ProposalReady, count=2).proposal
        assert "A steering note from the human: try the EXTRA knob" in agent.contexts[1].feedback
        # the proposal carries the note it was drafted after, for every client to show
        assert influenced.id == 2 and influenced.notes == ["try the EXTRA knob"]
        assert session.pending()[0].notes == ["try the EXTRA knob"]
        assert session.journal.notes_for(2) == ["try the EXTRA knob"]
        assert session.proposal(1).notes == []
        session.note("and mind the memory")                 # not drafted from yet
        report = markdown(summarize(session.journal), "progress.png")
        assert ('- "try the EXTRA knob" → #2 EXTRA = 0 -> EXTRA = 3 (pending)\n'
                '- "and mind the memory" → no draft yet\n') in report
    finally:
        session.stop()


# ---------------------------------------------------------------------- the engine: program.md

def test_program_md_is_committed_as_a_human_change_and_the_agent_is_told(standin, dataset_dir):
    agent = ScriptedAgent(("VALUE = 1.0", "VALUE = 1.1"), ("EXTRA = 0", "EXTRA = 3"))
    # no speculation: its run of the waiting proposal would let the agent draft the next one
    # before the edit, and this test follows the first draft made after it
    session, events = started(standin, agent, settings(dataset_dir, mode="review",
                                                       speculate=False))
    try:
        waiting = events.wait(ProposalReady).proposal
        events.wait(RunFinished)                        # the baseline: nothing trains now
        best_before = session.best[0]
        commit = session.edit_program(NEW_PROGRAM)
        assert commit == standin.head()
        assert program_on_branch(standin) == NEW_PROGRAM
        assert (standin.root / "program.md").read_text() == NEW_PROGRAM
        assert git(standin, "rev-parse", f"{commit}^").strip() == best_before
        assert git(standin, "log", "-1", "--format=%an", commit).strip() == "pairlab-human"
        assert "pairlab-edited-by: human" in git(standin, "log", "-1", "--format=%B", commit)
        assert git(standin, "diff", "--name-only", best_before, commit).split() == ["program.md"]
        assert any("program.md is committed" in n.message for n in events.of(Notice))
        # the proposal that waited is not lost: it moved onto the program commit
        assert [p.id for p in session.pending()] == [waiting.id]
        assert session.pending()[0].base_commit == commit

        session.veto(waiting.id, "no")                  # the next draft hears of the program
        events.wait(ProposalReady, count=2)
        told = agent.contexts[1]
        assert told.program == NEW_PROGRAM and told.base_commit == commit
        assert "The human changed program.md" in told.feedback
        assert "+Lower VALUE. Leave EXTRA alone" in told.feedback
        assert "The human changed program.md" not in agent.contexts[0].feedback

        session.accept(2)                               # EXTRA = 3 measures the same: discard
        finished = events.wait(RunFinished, count=2)
        assert finished.result.status is RunStatus.DISCARD
        # a discard resets the branch to the best, and the best is the program on top of it
        assert standin.head() == commit and program_on_branch(standin) == NEW_PROGRAM
    finally:
        session.stop()


def test_a_new_best_drafted_before_the_edit_gets_the_program_on_top(standin, dataset_dir):
    """The run in flight keeps its checkout: the edit is committed once it ends, and the
    best it made carries the program."""
    gate = standin.pairlab_dir / "gate"
    os.mkfifo(gate)                                     # each run waits until let through
    agent = ScriptedAgent(("VALUE = 1.0", "VALUE = 0.5"))
    session, events = started(standin, agent, settings(
        dataset_dir, max_experiments=1, jitter="0,0,0.001,0,0", large_win_sigmas=None,
        large_win_fraction=None))
    try:
        with open(gate, "w") as fifo:                   # the baseline
            fifo.write("go")
        running = events.wait(RunStarted, count=2)
        assert running.proposal_id == 1
        assert session.edit_program(NEW_PROGRAM) is None    # waits for the run to end
        assert standin.head() == running.commit         # the run's checkout did not move
        assert (standin.root / "program.md").read_text() == NEW_PROGRAM
        with open(gate, "w") as fifo:                   # the experiment; no gate after it
            gate.unlink()
            fifo.write("go")
        assert session.wait(WAIT_S)
    finally:
        session.stop()
    best = events.of(BestUpdated)[-1]
    assert best.commit == running.commit and best.val_bpb == pytest.approx(0.5)
    head = standin.head()
    assert git(standin, "rev-parse", f"{head}^").strip() == running.commit
    assert program_on_branch(standin) == NEW_PROGRAM
    assert "VALUE = 0.5" in standin.file_at(head, "train.py")


def test_an_empty_or_unchanged_program_is_refused_with_the_reason(standin, dataset_dir):
    session, events = started(standin, ScriptedAgent(), settings(dataset_dir, mode="review"))
    try:
        events.wait(RunFinished)
        head = standin.head()
        with pytest.raises(CommandRefused, match="program.md cannot be empty"):
            session.edit_program("  \n\n")
        with pytest.raises(CommandRefused, match="program.md is unchanged"):
            session.edit_program(standin.program())
        assert standin.head() == head and standin.program() == "Lower VALUE.\n"
    finally:
        session.stop()



# ---------------------------------------------------------------------- the app: s and P

@pytest.fixture
def served(standin, dataset_dir):
    """A started engine (review mode, scripted agent, stand-in runs) behind a real service:
    yields the session, its events, an app's client, a second client watching, and a way
    to attach one more."""
    agent = ScriptedAgent(("VALUE = 1.0", "VALUE = 1.1"), ("EXTRA = 0", "EXTRA = 3"))
    # no speculation: these tests follow the one draft made after a note or an edit
    session, events = started(standin, agent, settings(dataset_dir, mode="review",
                                                       speculate=False))
    service = EngineService(session, socket_path(standin.pairlab_dir))
    service.start()
    clients = []

    def attach():
        clients.append(connect(service.path))
        return clients[-1]

    yield session, events, attach(), Watch(attach()), attach
    for client in clients:
        client.close()
    session.stop()
    service.close()
    session.journal.close()


async def until(pilot, condition, what: str, timeout: float = SERVICE_WAIT_S) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await pilot.pause(0.05)


def shown(widget) -> str:
    return str(widget.render())


@pilot_test
async def test_s_sends_a_note_every_client_sees_and_the_next_proposal_names_it(served):
    session, events, client, other, _ = served
    app = PairlabApp(client)
    async with app.run_test(size=SIZE) as pilot:
        main = app.main
        await until(pilot, lambda: main.diff.selected == 1, "the first proposal")
        await pilot.press("s")
        await until(pilot, lambda: isinstance(app.screen, NoteScreen), "the note input")
        await pilot.press("enter")                       # empty: not sent, says why
        assert "Write something" in shown(app.screen.query_one("#note-error"))
        app.screen.query_one(Input).value = "try the EXTRA knob"
        await pilot.press("enter")
        await until(pilot, lambda: main.reasoning.notes, "the note in the reasoning panel")
        marked = shown(main.reasoning.query_one("#steering-notes"))
        assert "human note #1" in marked and "try the EXTRA knob" in marked
        assert session.journal.open_notes() == [(1, "try the EXTRA knob")]
        assert other.wait_for(lambda e: isinstance(e, SteeringNote), "the note").text == \
            "try the EXTRA knob"                         # the other client got it too

        await pilot.press("v")
        app.screen.query_one(Input).value = "not VALUE"
        await pilot.press("enter")
        await until(pilot, lambda: main.diff.selected == 2, "the proposal drafted after it")
        banner = main.diff.query_one(".note-banner")
        assert "after your note: try the EXTRA knob" in shown(banner)
        assert "after your note: try the EXTRA knob" in shown(
            main.reasoning.query_one("#proposal-summary"))
        assert not main.reasoning.notes                  # taken: shown with its proposal
        assert session.journal.notes_for(2) == ["try the EXTRA knob"]
        await pilot.press("q")


@pilot_test
async def test_P_edits_program_md_and_saving_commits_it_or_says_why_not(served, standin):
    session, events, client, _, _ = served
    app = PairlabApp(client)
    async with app.run_test(size=SIZE) as pilot:
        main = app.main
        await until(pilot, lambda: main.diff.selected == 1, "the first proposal")
        await until(pilot, lambda: events.of(RunFinished), "the baseline to end")
        await pilot.press("P")
        # the screen is pushed before its editor is mounted: wait for the editor itself
        await until(pilot, lambda: isinstance(app.screen, ProgramEditorScreen)
                    and app.screen.query(TextArea), "the editor")
        area = app.screen.query_one(TextArea)
        assert area.text == "Lower VALUE.\n"
        area.load_text("   \n")
        await pilot.press("ctrl+s")
        error = app.screen.query_one("#edit-error")
        await until(pilot, lambda: "cannot be empty" in shown(error), "the refusal")
        assert isinstance(app.screen, ProgramEditorScreen)   # still open, text kept
        area.load_text(NEW_PROGRAM)
        await pilot.press("ctrl+s")
        await until(pilot, lambda: app.screen is main, "the editor to close")
        assert program_on_branch(standin) == NEW_PROGRAM
        assert git(standin, "log", "-1", "--format=%an%n%B").startswith(
            "pairlab-human\nprogram.md edited by the human")
        assert [p.base_commit for p in session.pending()] == [standin.head()]
        await pilot.press("q")


@pilot_test
async def test_an_app_attached_after_a_note_shows_it(served):
    session, events, _, _, attach = served
    events.wait(ProposalReady)
    session.note("mind the memory")
    app = PairlabApp(attach())
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.main.reasoning.notes, "the note from the snapshot")
        assert "human note #1" in shown(app.main.reasoning.query_one("#steering-notes"))
        await pilot.press("q")
