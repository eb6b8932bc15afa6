"""Pilot tests of the app's panels and keys, driven by a fixed event script through the
same subscriber path the engine uses (events posted from another thread)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from test_tui_support import T0, ScriptedSession, experiment, history_events, pilot_test, proposal
from textual.widgets import DataTable, Input
from textual.widgets.data_table import RowKey

from engine.base.events import (DecisionMade, DeviceSample, DraftStarted, ExperimentSettled, LiveLine, LogLines,
                                ProposalReady, ReasoningDelta, RunAccepted, RunFinished,
                                RunProgress, RunStarted, StateChanged)
from engine.base.records import Decision, DecisionKind, KeepMeasure, ProposalState, Revert, RunResult, RunStatus
from tui.app import PairlabApp
from tui.bridge import EventBridge
from tui.messages import EngineEvent, LogBatch, ReasoningBatch
from tui.screens.editor import EditorScreen, PythonTextArea
from tui.screens.log_viewer import LogViewerScreen
from tui.screens.main import MainScreen
from tui.screens.modals import ConfirmStopScreen, HelpScreen, VetoScreen
from tui.widgets.chart import ChartPanel
from tui.widgets.device import describe
from tui.widgets.diff import DiffPanel, HunkView, parse_hunks, render_hunk
from tui.widgets.experiments import ExperimentsPanel, why_lines
from tui.widgets.live_log import LiveLog, terminal_lines
from tui.widgets.panel import PanelGrid
from tui.widgets.reasoning import ReasoningPanel

WIDE = (120, 40)


async def settle(pilot, seconds: float = 0.15) -> None:
    """Let the bridge's 20 Hz flush deliver and the screen process what it posted."""
    await pilot.pause(seconds)
    await pilot.pause()


def footer_actions(app) -> set[str]:
    return {b.binding.action.split("(")[0] for b in app.screen.active_bindings.values()}


@pytest.fixture
def session(tmp_path):
    return ScriptedSession(tmp_path, history_events())


@pilot_test
async def test_a_proposal_appears_with_its_reasoning_diff_and_keys(session):
    app = PairlabApp(session)
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        diff = app.main.query_one(DiffPanel)
        assert list(diff.queue) == [7, 8] and diff.selected == 7
        hunks = list(diff.query(HunkView))
        assert len(hunks) == 2
        assert "LEARNING_RATE = 0.03" in str(hunks[0].render())
        reasoning = app.main.query_one(ReasoningPanel)
        assert "shorter warmup" in reasoning.text and "LEARNING_RATE 0.02 -> 0.03" in reasoning.text
        summary = str(app.main.query_one("#proposal-summary").render())
        assert "raise the learning rate to 0.03" in summary and "$0.0123" in summary
        assert {"accept", "edit", "veto", "step_proposal"} <= footer_actions(app)
        assert "2 pending" in str(app.main.status.render())


@pilot_test
async def test_accept_sends_the_selected_proposal_to_the_engine(session):
    app = PairlabApp(session)
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        await pilot.press("a")
        await settle(pilot)
        assert ("accept", 7) in session.calls
        assert list(app.main.diff.queue) == [8]
        assert "step_proposal" not in footer_actions(app)


@pilot_test
async def test_accept_refused_by_the_engine_is_shown_and_the_queue_is_the_engines(session):
    app = PairlabApp(session)
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        session._pending.pop(7)                 # the engine already decided it elsewhere:
        await pilot.press("a")                  # its decision is on its way
        await settle(pilot)
        assert any("accept #7" in n.message for n in app._notifications)
        assert list(app.main.diff.queue) == [7, 8]      # no edit of the app's own
        session.emit_from_thread([DecisionMade(Decision(7, DecisionKind.ACCEPT, "another client"))])
        await settle(pilot)
        assert list(app.main.diff.queue) == [8]


@pilot_test
async def test_next_and_previous_proposal_move_the_selection(session):
    app = PairlabApp(session)
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        await pilot.press("n")
        assert app.main.diff.selected == 8
        assert "0.04" in app.main.query_one("#proposal-summary").render().plain
        await pilot.press("N")
        assert app.main.diff.selected == 7


@pilot_test
async def test_veto_asks_for_a_reason_and_sends_it(session):
    app = PairlabApp(session)
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        await pilot.press("v")
        assert isinstance(app.screen, VetoScreen)
        await pilot.press("enter")              # an empty reason is not accepted
        assert isinstance(app.screen, VetoScreen)
        assert "reason is needed" in str(app.screen.query_one("#reason-error").render())
        app.screen.query_one(Input).value = "lr was already tuned"
        await pilot.press("enter")
        await settle(pilot)
        assert ("veto", 7, "lr was already tuned") in session.calls
        assert list(app.main.diff.queue) == [8]


@pilot_test
async def test_veto_cancelled_with_escape_changes_nothing(session):
    app = PairlabApp(session)
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        await pilot.press("v", "escape")
        await settle(pilot)
        assert not any(call[0] == "veto" for call in session.calls)
        assert list(app.main.diff.queue) == [7, 8]


@pilot_test
async def test_edit_shows_a_refusal_inline_then_saves_the_human_version(session):
    app = PairlabApp(session)
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        await pilot.press("e")
        await wait_until(pilot, lambda: isinstance(app.screen, EditorScreen))
        area = app.screen.query_one(PythonTextArea)
        assert area.text.startswith("LR = 0.03")
        assert any(name == "number" for row in area._highlights.values() for *_, name in row)
        area.load_text("PROTECTED = 1\n")
        await pilot.press("ctrl+s")
        await settle(pilot)
        assert isinstance(app.screen, EditorScreen)       # stays open, error shown inline
        assert "protected block may not change" in str(app.screen.query_one("#edit-error").render())
        area.load_text("LR = 0.025\n")
        await pilot.press("ctrl+s")
        await settle(pilot)
        assert not isinstance(app.screen, EditorScreen)
        assert ("edit", 7, {"train.py": "LR = 0.025\n"}) in session.calls
        assert session.edit_bases[-1] == "abc1234def5678"     # the base the editor opened on
        assert list(app.main.diff.queue) == [8]


@pilot_test
async def test_pause_and_resume_share_p_and_the_footer_follows_the_state(session):
    app = PairlabApp(session)
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        assert "pause" in footer_actions(app) and "resume" not in footer_actions(app)
        await pilot.press("p")
        await settle(pilot)
        assert ("pause",) in session.calls
        assert "paused" in str(app.main.status.render())
        assert "resume" in footer_actions(app) and "pause" not in footer_actions(app)
        await pilot.press("p")
        await settle(pilot)
        assert ("resume",) in session.calls


@pilot_test
async def test_kill_applies_only_while_a_run_is_in_flight(tmp_path):
    events = history_events()
    session = ScriptedSession(tmp_path, events[:events.index(next(
        e for e in events if isinstance(e, RunStarted) and e.run_id == "r4"))])
    app = PairlabApp(session)
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        assert "kill_run" not in footer_actions(app)
        await pilot.press("k")
        assert ("kill_run",) not in session.calls
        session.emit_from_thread([RunStarted("r9", 9, 1, "abc", "x", 300, "/x", at=T0)])
        await settle(pilot)
        await pilot.press("k")
        await settle(pilot)
        assert ("kill_run",) in session.calls


@pilot_test
async def test_mode_key_toggles_review_and_auto(session):
    app = PairlabApp(session)
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        await pilot.press("m")
        await settle(pilot)
        assert ("set_mode", "auto") in session.calls
        assert "mode auto" in str(app.main.status.render())
        await pilot.press("m")
        await settle(pilot)
        assert ("set_mode", "review") in session.calls


@pilot_test
async def test_log_follows_the_tail_unless_scrolled_up_and_stays_bounded(session):
    app = PairlabApp(session)
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        log = app.main.log_panel.log
        session.emit_from_thread([LogLines("r4", [f"line {i}" for i in range(8000)], at=T0)])
        await settle(pilot)
        assert log.line_count <= 5001                      # max_lines, plus the skip notice
        assert log.lines[-1] == "line 7999"
        assert log.is_vertical_scroll_end
        log.scroll_home(animate=False)
        await pilot.pause()
        session.emit_from_thread([LogLines("r4", ["more"], at=T0)])
        await settle(pilot)
        assert log.lines[-1] == "more" and log.scroll_y == 0
        session.emit_from_thread([LogLines("old-run", ["stale line"], at=T0)])
        await settle(pilot)
        assert "stale line" not in log.lines


def visible_rows(widget) -> list[str]:
    """What the widget shows on screen now, row by row."""
    return [strip.text.rstrip() for strip in widget.render_lines(widget.size.region)]


@pilot_test
async def test_the_live_line_is_the_last_row_and_is_rewritten_in_place(session):
    app = PairlabApp(session)
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        log = app.main.log_panel.log
        finished = log.line_count
        for step in range(1, 200):        # a fast writer: only the latest state matters
            session.emit(LiveLine("r4", f"step {step:05d} (1.0%) | loss: 4.2"))
        await settle(pilot)
        assert log.line_count == finished + 1 and log.live == "step 00199 (1.0%) | loss: 4.2"
        assert visible_rows(log)[log.line_count - 1 - log.scroll_offset.y].startswith("step 00199")
        session.emit(LiveLine("r4", "step 00200 (1.1%) | loss: 4.1"))
        await settle(pilot)
        assert log.line_count == finished + 1                   # rewritten, not appended
        assert log.lines[-1] == "step 00039 | loss: 5.610000"
        # the progress line ends: it scrolls up as a finished line, the next one is live
        session.emit_from_thread([LogLines("r4", ["step 00200 (1.1%) | loss: 4.1"], at=T0),
                                  LiveLine("r4", "", at=T0), LiveLine("r4", "eval…", at=T0)])
        await settle(pilot)
        assert log.lines[-1] == "step 00200 (1.1%) | loss: 4.1" and log.live == "eval…"
        assert log.is_vertical_scroll_end
        session.emit_from_thread([LiveLine("old-run", "stale", at=T0)])
        await settle(pilot)
        assert log.live == "eval…"


def test_raw_output_is_read_as_a_terminal_shows_it():
    text = "device: cpu\r\n\rstep 1\rstep 2\rstep 3   \nwarn\r\n50%\r60%\r"
    assert terminal_lines(text) == (["device: cpu", "step 3   ", "warn"], "60%")
    assert terminal_lines("plain\nopen") == (["plain"], "open")


@pilot_test
async def test_the_log_viewer_follows_the_run_in_flight_with_its_live_line(session, tmp_path):
    log_file = tmp_path / "r4.log"
    log_file.write_text("".join(f"old line {i}\n" for i in range(10)))
    app = PairlabApp(session)
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        panel = app.main.log_panel
        panel.log_path = str(log_file)                 # the run in flight writes this file
        session.emit_from_thread([LiveLine("r4", "step 00003 | loss: 4.0", at=T0)])
        await settle(pilot)
        app.push_screen(LogViewerScreen("run r4", log_file))
        await settle(pilot)
        viewer = app.screen.query_one(LiveLog)
        assert viewer.lines[-1] == "old line 9" and viewer.live == "step 00003 | loss: 4.0"
        with log_file.open("a") as handle:
            handle.write("step 00003 | loss: 4.0\n")
        session.emit_from_thread([LiveLine("r4", "step 00004 | loss: 3.9", at=T0)])
        await settle(pilot, 0.6)
        assert viewer.lines[-1] == "step 00003 | loss: 4.0"
        assert viewer.live == "step 00004 | loss: 3.9"


@pilot_test
async def test_run_finished_adds_a_table_row_and_a_chart_point(session):
    app = PairlabApp(session)
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        table = app.main.query_one(ExperimentsPanel)
        chart = app.main.query_one(ChartPanel)
        data = table.query_one(DataTable)
        assert data.row_count == 5 and len(chart.experiments) == 4
        assert str(data.get_cell("r4", "status")) == "training"
        assert str(data.get_cell("r1", "Δ best")) == "best"
        assert chart.live_run_id == "r4" and chart.best_run_id == "r1"
        done = experiment(4, "r4", RunStatus.KEEP, 1.4300, "raise the learning rate", "efa5678")
        done.measure = KeepMeasure(n_best=3, best_mean=1.4425, n_candidate=2,
                                   candidate_mean=1.43, sigma=0.0025, noise_dof=3,
                                   improvement=0.0125, margin=0.0081)
        session.emit_from_thread([RunFinished(done, RunResult("r4", RunStatus.KEEP, 1.43), at=T0)])
        await settle(pilot)
        assert data.row_count == 5 and len(chart.experiments) == 5
        assert str(data.get_cell("r4", "status")) == "keep 5.0σ"     # the win in pooled sigma
        assert chart.live_run_id is None
        assert app.main.log_panel.log.lines[-1].startswith("── keep · val_bpb 1.430000")


@pilot_test
async def test_device_panel_shows_na_for_missing_readings(session):
    assert "n/a" in describe(DeviceSample("gpu", [{"name": "H100", "util": None}])).plain
    gpu = describe(DeviceSample("gpu", [{"name": "H100", "util": 87.0, "mem_used_mb": 40960,
                                         "mem_total_mb": 81920, "temp_c": 71.0,
                                         "power_w": 305.0}])).plain
    assert "87%" in gpu and "40.0/80.0 GB" in gpu and "71°C" in gpu and "305 W" in gpu
    app = PairlabApp(session)
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        session.emit_from_thread([DeviceSample("cpu", [], at=T0)])
        await settle(pilot)
        assert "n/a" in str(app.main.query_one("#device-status").render())


@pilot_test
async def test_tab_cycles_panels_and_f_full_screens_the_focused_one(session):
    app = PairlabApp(session)
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        assert app.main.current_panel == "diff-panel"
        await pilot.press("tab")
        assert app.main.current_panel == "device-panel"
        await pilot.press("shift+tab", "shift+tab")
        assert app.main.current_panel == "reasoning-panel"
        await pilot.press("f")
        await pilot.pause()
        reasoning = app.main.query_one(ReasoningPanel)
        assert app.main.query_one(PanelGrid).full is reasoning
        assert [p.id for p in app.main.panels() if p.region.height] == ["reasoning-panel"]
        assert reasoning.region.width == WIDE[0]
        assert app.main.status.region.height == 1            # the status line stays
        await pilot.press("f")
        await pilot.pause()
        assert app.main.query_one(PanelGrid).full is None
        assert all(p.region.height for p in app.main.panels())
        await pilot.press("f", "tab")                         # tab leaves full screen
        await pilot.pause()
        assert app.main.query_one(PanelGrid).full is None and app.main.current_panel == "diff-panel"
        await pilot.press("f")
        await pilot.pause()
        assert app.main.query_one(PanelGrid).full is not None
        await pilot.press("escape")                           # and so does escape
        await pilot.pause()
        assert app.main.query_one(PanelGrid).full is None
        assert all(p.region.height for p in app.main.panels())


@pilot_test
async def test_narrow_terminal_shows_one_panel_at_a_time(session):
    app = PairlabApp(session)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert app.main.has_class("narrow")
        shown = [p.id for p in app.main.panels() if p.display and p.region.height > 0]
        assert shown == ["diff-panel"]
        await pilot.press("tab", "tab", "tab")
        shown = [p.id for p in app.main.panels() if p.region.height > 0]
        assert shown == ["log-panel"]
        assert app.focused is app.main.log_panel.log


@pilot_test
async def test_narrow_terminal_shows_the_review_while_one_waits_and_else_the_run(tmp_path):
    nothing_to_review = [e for e in history_events() if not isinstance(e, ProposalReady)]
    session = ScriptedSession(tmp_path, nothing_to_review)
    app = PairlabApp(session)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)

        def shown():
            return [p.id for p in app.main.panels() if p.display and p.region.height > 0]
        assert shown() == ["log-panel"]                   # a run trains, nothing waits
        waiting = next(e for e in history_events() if isinstance(e, ProposalReady))
        session.emit_from_thread([waiting])
        await settle(pilot)
        assert shown() == ["diff-panel"] and app.main.diff.selected == waiting.proposal.id
        await pilot.press("a")
        await settle(pilot)
        assert ("accept", waiting.proposal.id) in session.calls
        assert shown() == ["log-panel"]                   # reviewed: back to the run


@pilot_test
async def test_help_lists_every_key_as_remapped(session):
    app = PairlabApp(session)
    app.set_keymap({"accept": "y"})
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        await pilot.press("y")
        await settle(pilot)
        assert ("accept", 7) in session.calls
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        text = str(app.screen.query_one("#help-text").render())
        assert "accept" in text and "toggle-mode" in text and "kill-run" in text
        assert any(key == "y" and binding_id == "accept" for key, _, binding_id in app.screen.rows)
        await pilot.press("escape")
        assert app.screen is app.main


@pilot_test
async def test_o_opens_the_selected_runs_log(session, tmp_path):
    log_file = tmp_path / "r2.log"
    log_file.write_text("".join(f"past line {i}\n" for i in range(100)))
    app = PairlabApp(session)
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        table = app.main.table
        table.rows["r2"].log_path = str(log_file)
        table.query_one(DataTable).move_cursor(row=2)
        await pilot.press("o")
        await settle(pilot)
        assert isinstance(app.screen, LogViewerScreen)
        assert app.screen.query_one(LiveLog).lines[-1] == "past line 99"
        await pilot.press("escape")
        assert app.screen is app.main


@pilot_test
async def test_a_reverted_keep_reads_as_such_and_its_log_title_gives_the_recheck(session,
                                                                                tmp_path):
    log_file = tmp_path / "r1.log"
    log_file.write_text("trained\n")
    kept_on = KeepMeasure(n_best=3, best_mean=1.4521, n_candidate=1, candidate_mean=1.4388,
                          sigma=0.0021, noise_dof=2, improvement=0.0133, margin=0.0121,
                          drop_margin=-0.004)
    again = KeepMeasure(n_best=3, best_mean=1.4521, n_candidate=3, candidate_mean=1.4502,
                        sigma=0.0024, noise_dof=4, improvement=0.0019, margin=0.0068,
                        drop_margin=0.0021)
    reverted = replace(experiment(1, "r1", RunStatus.REVERTED, 1.4388, "warmup 0.1 -> 0.05",
                                  "bcd2345"), log_path=str(log_file), measure=kept_on,
                       revert=Revert(again, "abc1234" + "0" * 33, "r9", "reverted: ..."))
    app = PairlabApp(session)
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        data = app.main.table.query_one(DataTable)
        assert str(data.get_cell("r1", "status")) == "keep"
        session.emit_from_thread([ExperimentSettled(reverted, at=T0)])
        await settle(pilot)
        assert str(data.get_cell("r1", "status")) == "reverted"
        assert "1 reverted" in app.main.table.border_subtitle
        data.move_cursor(row=1)
        await pilot.press("o")
        await settle(pilot)
        assert isinstance(app.screen, LogViewerScreen)
        title = app.screen.title_text
        assert "n=1 mean 1.438800 vs best 1.452100 (n=3), sigma 0.002100 keep at 0.012100 " \
               "drop at -0.004000 (+6.3 sigma)" in title
        assert "reverted to abc1234: n=3 mean 1.450200" in title


@pilot_test
async def test_stop_asks_while_a_run_is_in_flight_then_stops_the_session(session):
    app = PairlabApp(session)
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        await pilot.press("S")
        assert isinstance(app.screen, ConfirmStopScreen)
        await pilot.press("n")
        assert app.screen is app.main and ("stop",) not in session.calls
        await pilot.press("S", "y")
        await settle(pilot, 0.3)
        assert ("stop",) in session.calls
    assert app.return_value == 0


@pilot_test
async def test_q_detaches_and_leaves_the_loop_running(session):
    """q while a run trains: the app exits at once and the engine is never told to stop."""
    app = PairlabApp(session)
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        assert app.main.run_in_flight is not None
        footer = {b.binding.description for b in app.screen.active_bindings.values()}
        assert "Detach (loop goes on)" in footer
        await pilot.press("q")
        await settle(pilot, 0.3)
    assert app.return_value == 0
    assert ("stop",) not in session.calls and not session.stopped.is_set()


@pilot_test
async def test_stop_without_a_run_stops_at_once(tmp_path):
    session = ScriptedSession(tmp_path, [StateChanged("reviewing", "", at=T0)])
    app = PairlabApp(session)
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        await pilot.press("S")
        await settle(pilot, 0.3)
        assert session.stopped.is_set()
    assert app.return_value == 0


@pilot_test
async def test_a_read_only_client_shows_no_decision_keys(session):
    app = PairlabApp(session, read_only=True)
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        assert app.main.diff.selected is not None          # a proposal is waiting
        actions = {b.binding.action for b in app.screen.active_bindings.values()
                   if app.screen.check_action(b.binding.action, ()) is not False}
        assert not actions & MainScreen.DECISION_ACTIONS, actions
        assert "detach" in actions
        await pilot.press("a", "p", "m", "k")
        await settle(pilot, 0.3)
        assert [c for c in session.calls if c[0] != "start"] == []


def test_bridge_batches_high_rate_events_and_keeps_their_order():
    posted = []
    bridge = EventBridge(posted.append, max_log_lines=100)
    for i in range(50):
        bridge(ReasoningDelta(1, "thinking", f"t{i} "))
    for i in range(500):
        bridge(LogLines("r1", [f"line {i}"]))
    bridge(StateChanged("training"))
    kinds = [type(m) for m in posted]
    assert kinds == [ReasoningBatch, LogBatch, EngineEvent]
    reasoning, log = posted[0], posted[1]
    assert reasoning.chunks == [("thinking", "".join(f"t{i} " for i in range(50)))]
    assert log.lines[-1] == "line 499" and len(log.lines) == 100 and log.dropped == 400
    assert bridge.lines_accepted == 500


def test_bridge_keeps_only_the_latest_live_line_and_sends_it_with_the_lines():
    posted = []
    bridge = EventBridge(posted.append, max_log_lines=100)
    bridge(LogLines("r1", ["device: cpu"]))
    for step in range(1000):
        bridge(LiveLine("r1", f"step {step}"))
    bridge.flush()
    bridge.flush()                                  # nothing new: nothing posted
    bridge(LiveLine("r2", "step 0 of the next run"))
    bridge.flush()
    assert [(m.run_id, m.lines, m.live) for m in posted] == [
        ("r1", ["device: cpu"], "step 999"), ("r2", [], "step 0 of the next run")]


def test_the_bridge_keeps_each_runs_open_line_while_two_slots_write_at_once():
    posted = []
    bridge = EventBridge(posted.append, max_log_lines=100)
    bridge(LiveLine("r1", "step 5 of r1"))
    bridge(LogLines("r2", ["a line of r2"]))          # the other slot writes in between
    bridge(LogLines("r1", ["a line of r1"]))
    bridge.flush()
    batches = {message.run_id: message for message in posted}
    assert (batches["r1"].lines, batches["r1"].live) == (["a line of r1"], "step 5 of r1")
    assert batches["r2"].lines == ["a line of r2"]


@pilot_test
async def test_a_flush_on_the_apps_thread_never_overtakes_an_event_posted_before_it(tmp_path):
    """An engine thread posts a run's start and buffers its first lines; the 20 Hz flush, on
    the app's thread, posts those lines before the loop has queued the start. The lines must
    still come after the start, or the log panel drops them as late lines of the run before."""
    import threading
    app = PairlabApp(ScriptedSession(tmp_path, history_events()))
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        assert app.main.log_panel.run_id == "r4"

        def engine() -> None:
            app.bridge(RunStarted("r5", 5, 8, "fab6789", "the next run", 300.0, "/x", at=T0))
            app.bridge(LogLines("r5", ["step 00000 | loss: 6.000000"], at=T0))
        thread = threading.Thread(target=engine)
        thread.start()
        thread.join()                    # the loop has not run meanwhile: the start waits in it
        app.bridge.flush()               # what the timer does, on the app's thread
        await settle(pilot)
        panel = app.main.log_panel
        assert panel.run_id == "r5"
        assert list(panel.log.lines) == ["── run r5 · experiment #5 · fab6789 · the next run",
                                         "step 00000 | loss: 6.000000"]


def test_hunks_carry_line_numbers_and_prefixes():
    hunks = parse_hunks(proposal(1, "x", "0.03").diff)
    assert [(h.path, h.old_start, h.new_start, len(h.lines)) for h in hunks] == [
        ("train.py", 8, 8, 6), ("train.py", 40, 40, 4)]
    rendered = render_hunk(hunks[0]).plain.splitlines()
    assert rendered[2].split() == ["10", "-", "LEARNING_RATE", "=", "0.02", "#", "adam", "lr"]
    assert rendered[3].split()[:2] == ["10", "+"]
    assert rendered[5].split()[:1] == ["12"]


@pytest.mark.e2e
def test_in_tmux_the_log_panels_last_line_is_the_live_step_line(tmp_path, dataset_dir):
    """The real command in a real terminal, training its baseline: the log panel's last row
    is train.py's `\\r` progress line, and it changes in place while the run trains."""
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    from conftest import tiny_train_py

    from engine import workspace
    ws = workspace.init(tmp_path / "ws", tag="live")
    train = ws.root / "train.py"
    ws.commit_change({"train.py": tiny_train_py(train.read_text())}, "tiny config",
                     parent=ws.head())
    cache = tmp_path / "cache"
    (cache / "datasets").mkdir(parents=True)
    (cache / "datasets" / "default").symlink_to(dataset_dir)
    env = {"PAIRLAB_CACHE": str(cache), "PAIRLAB_COMPILE": "0", "PAIRLAB_SEQ_LEN": "64",
           "PAIRLAB_EVAL_TOKENS": "4096", "PAIRLAB_DEVICE": "cpu", "TERM": "screen-256color",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    # -u: a tmux server started under pytest hands its COLUMNS/LINES (80x24) to the pane
    exports = " ".join(f"{key}={shlex.quote(value)}" for key, value in env.items())
    command = (f"env -u COLUMNS -u LINES {exports} "
               f"{shlex.quote(sys.executable)} -c 'from pairlab.cli import main; main()'"
               f" --workspace {shlex.quote(str(ws.root))} --agent tuner --budget 60"
               f" --noise-repeats 0")
    name = f"pairlab-live-{os.getpid()}"
    tmux = ["tmux", "-L", name]          # a server of its own: no other session's sizes apply
    subprocess.run([*tmux, "new-session", "-d", "-s", name, "-x", "100", "-y", "30", command],
                   check=True)
    subprocess.run([*tmux, "set-option", "-t", name, "remain-on-exit", "on"], check=True)

    def screen() -> str:
        return subprocess.run([*tmux, "capture-pane", "-p", "-t", name], capture_output=True,
                              text=True).stdout

    def last_log_row() -> str:
        """The last row with text inside the training log panel's border (not the scrollbar)."""
        rows = screen().splitlines()
        top = next((i for i, row in enumerate(rows) if "─ training log " in row), None)
        if top is None:
            return ""
        left = rows[top].rfind("╭", 0, rows[top].index("─ training log "))
        right = rows[top].index("╮", left)
        inside = []
        for row in rows[top + 1:]:
            if row[left:left + 1] == "╰":
                break
            inside.append(row[left + 1:right].strip())
        return next((text for text in reversed(inside) if any(c.isalnum() for c in text)), "")

    def wait_for_step_row(other_than: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            row = last_log_row()
            if row.startswith("step ") and row != other_than:
                return row
            time.sleep(0.5)
        raise AssertionError(f"the log's last row is {last_log_row()!r}, not a new step line;"
                             f" the screen:\n{screen()}")

    try:
        first = wait_for_step_row("", 180)
        time.sleep(3)
        second = wait_for_step_row(first, 30)
        assert first != second and first.startswith("step ") and second.startswith("step ")
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
        # `pairlab` started the engine detached: it outlives its window unless stopped
        subprocess.run([sys.executable, "-m", "pairlab", "stop", "--workspace", str(ws.root)],
                       capture_output=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": env["PYTHONPATH"]})


@pilot_test
async def test_runs_are_labelled_by_what_they_are_and_totalled(tmp_path):
    from dataclasses import replace
    base = experiment(0, "b0", RunStatus.KEEP, 1.45, "baseline", "abc1234", "baseline")
    noise = replace(experiment(1, "n1", RunStatus.DISCARD, 1.452, "noise repeat 1 of 1",
                               "abc1234", "noise"), kind="noise")
    rerun = replace(experiment(2, "c2", RunStatus.DISCARD, 1.44, "re-run to confirm",
                               "bcd2345", "rerun"), kind="rerun")
    quit_run = experiment(3, "i3", RunStatus.INTERRUPTED, None, "lr 0.03", "cde3456")
    events = [RunFinished(e, RunResult(e.run_id, e.status, e.val_bpb), at=T0)
              for e in (replace(base, kind="baseline"), noise, rerun, quit_run)]
    events.append(RunStarted("s4", 4, 9, "def4567", "speculative lr 0.05", 300, "/x", at=T0))
    events.append(RunStarted("n6", 6, None, "abc1234", "re-run of the best to judge #9", 300,
                             "/x", kind="noise", at=T0))
    app = PairlabApp(ScriptedSession(tmp_path, events))
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        table = app.main.table
        data = table.query_one(DataTable)
        labels = {run_id: str(data.get_cell(run_id, "status")) for run_id in table.rows}
        assert labels == {"b0": "keep", "n1": "noise repeat", "c2": "confirmation",
                          "i3": "interrupted", "s4": "training", "n6": "training"}
        # In flight, a re-run of the best is still a measurement, not a judged experiment.
        assert [table.rows[run_id].kind for run_id in ("s4", "n6")] == ["experiment", "noise"]
        assert table.border_subtitle == ("1 keep · 1 interrupted · 1 noise repeat"
                                         " · 1 confirmation")
        chart = app.main.chart
        assert chart.shown == ("history",)             # the interrupted run is not a crash
        table.upsert([replace(quit_run, run_id="s5", speculative=True)], training=True)
        assert str(data.get_cell("s5", "status")) == "speculative"


@pilot_test
async def test_the_status_bar_says_that_a_run_trains_speculatively_at_every_width(tmp_path):
    events = [
        RunStarted("s1", 1, 9, "def4567", "lr 0.05", 300, "/x", kind="speculative",
                   speculative=True, at=T0),
        RunProgress("s1", 12, 4.25, 10.0, 30.0, 270.0, at=T0),
        ProposalReady(proposal(9, "lr 0.05", "0.05"), at=T0),
        StateChanged("reviewing", "1 waiting for review; #9 trains speculatively", at=T0),
    ]
    for width in (80, 100, 120, 200):
        session = ScriptedSession(tmp_path, events)
        app = PairlabApp(session)
        async with app.run_test(size=(width, 30)) as pilot:
            await settle(pilot)
            status = app.main.status
            line = status.render()
            assert line.cell_length <= width, (width, line.plain)
            assert "#9 trains speculatively" in line.plain, (width, line.plain)
            assert "step 12" in line.plain and "1 pending" in line.plain, (width, line.plain)
            assert "waiting for review" not in line.plain
            if width == 120:                   # accepted while it trains: it is training now
                session.emit_from_thread([RunAccepted("s1", 9, at=T0)])
                await settle(pilot)
                line = status.render().plain
                assert "● training #9" in line and "speculatively" not in line, line
                session.emit_from_thread([StateChanged("training", "lr 0.05", at=T0)])
                await settle(pilot)
                assert "● training 4:30 left · step 12" in status.render().plain
                session.emit_from_thread([   # the engine says "baseline" for any run of its own
                    RunFinished(replace(experiment(1, "s1", RunStatus.KEEP, 1.4, "lr 0.05",
                                                   "def4567"), proposal_id=9),
                                RunResult("s1", RunStatus.KEEP, 1.4), at=T0),
                    RunStarted("n2", 2, None, "def4567", "noise repeat 1 of 2", 300, "/x",
                               kind="noise", at=T0),
                    StateChanged("baseline", "noise repeat 1 of 2", at=T0)])
                await settle(pilot)
                assert "● training a noise repeat" in status.render().plain


@pilot_test
async def test_the_table_shows_who_decided_whole_and_cuts_only_the_description(tmp_path):
    ahead = replace(experiment(2, "s2", RunStatus.INTERRUPTED, None, "a description long "
                               "enough to run past the edge of the table at this width",
                               "def4567", "speculative"), kind="speculative")
    events = [RunFinished(ahead, RunResult("s2", RunStatus.INTERRUPTED, None), at=T0)]
    app = PairlabApp(ScriptedSession(tmp_path, events))
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        data = app.main.table.query_one(DataTable)
        header, row = data.render_line(0).text, data.render_line(1).text
        assert header.index("by") < header.index("description")
        assert "speculative" in row and "a description long enough" in row, row
        assert not data.show_horizontal_scrollbar


@pilot_test
async def test_c_switches_charts_when_only_one_fits_and_small_panels_get_words(session):
    app = PairlabApp(session)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, 0.6)
        chart = app.main.chart
        assert chart.shown == ("history",)            # 100x30: room for one chart
        app.main.focus_panel("chart-panel")
        await pilot.press("c")
        assert chart.shown == ("loss",) and chart.border_title == "live loss"
        await pilot.press("c")
        assert chart.shown == ("history",)
    app = PairlabApp(ScriptedSession(session.tmp_path, history_events()))
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot, 0.6)
        assert app.main.chart.shown == ("history", "loss")
    app = PairlabApp(ScriptedSession(session.tmp_path, history_events()[:2]))
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot, 0.6)
        assert app.main.chart.shown == ()
        assert "no finished run yet" in str(app.main.query_one("#chart-note").render())


def test_y_ticks_carry_the_decimals_that_tell_them_apart():
    from tui.widgets.chart import integer_ticks, tick_labels
    assert tick_labels(1.4370, 1.4630, 3)[1] == ["1.437", "1.450", "1.463"]
    assert tick_labels(1.43001, 1.43004, 2)[1] == ["1.430010", "1.430040"]
    assert tick_labels(5.0, 8.0, 4)[1] == ["5.0", "6.0", "7.0", "8.0"]
    assert integer_ticks(1, 40, 30) == list(range(1, 41, 7))      # 6 labels of 2 digits + gaps


async def wait_until(pilot, condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await pilot.pause(0.05)


@pilot_test
async def test_a_proposal_waiting_unseen_rings_the_bell_once_until_a_key_is_pressed(
        session, monkeypatch):
    monkeypatch.setenv("PAIRLAB_NUDGE_MINUTES", "0.025")          # 1.5 s
    app = PairlabApp(session)
    async with app.run_test(size=WIDE) as pilot:
        nudge = app.main.diff.nudge
        await wait_until(pilot, lambda: nudge.rung == 1)
        assert nudge.waiting
        assert any("waited 0.025 min for your review" in n.message for n in app._notifications)
        await pilot.pause(2.0)
        assert nudge.rung == 1                                      # once per wait
        for _ in range(4):                                          # someone is looking
            await pilot.press("down")
            await pilot.pause(0.3)
        assert nudge.rung == 1
        await wait_until(pilot, lambda: nudge.rung == 2)            # and then looks away
        await pilot.press("a", "a")                                 # nothing waits any more
        await settle(pilot)
        assert not nudge.waiting
        await pilot.pause(2.0)
        assert nudge.rung == 2


@pilot_test
async def test_the_nudge_is_off_at_zero_and_a_bad_setting_is_named(session, monkeypatch):
    monkeypatch.setenv("PAIRLAB_NUDGE_MINUTES", "0")
    app = PairlabApp(session)
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        await pilot.pause(0.5)
        assert app.main.diff.nudge.rung == 0 and app.main.diff.nudge.minutes == 0
    monkeypatch.setenv("PAIRLAB_NUDGE_MINUTES", "soon")
    app = PairlabApp(ScriptedSession(session.tmp_path, history_events()))
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        assert app.main.diff.nudge.minutes == 5
        assert any("PAIRLAB_NUDGE_MINUTES='soon'" in n.message for n in app._notifications)


def test_the_nudge_is_a_bell_and_an_osc_9_wrapped_for_tmux():
    from tui.widgets.nudge import notification
    assert notification("look", in_tmux=False) == "\a\x1b]9;look\a"
    assert notification("look", in_tmux=True) == "\a\x1bPtmux;\x1b\x1b]9;look\a\x1b\\"


@pytest.mark.e2e
def test_the_log_throughput_bench_runs_quick():
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "bench" / "tui_log_throughput.py"), "--quick"],
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(root)})
    assert out.returncode == 0, out.stderr
    assert "f full" in out.stdout and "f back" in out.stdout
    row = next(line for line in out.stdout.splitlines() if line.strip().startswith("20,000"))
    assert len(row.split()) >= 11                 # rate, accepted, written, 2 figures per key


# ---------------------------------------------------------------------- what a human must look at

@pilot_test
async def test_a_held_win_waits_in_the_queue_with_its_diff_highlighted_and_no_edit(session):
    """Issue 9 item 5: an unusually large win comes back to the queue marked held."""
    app = PairlabApp(session)
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        held = replace(proposal(9, "lr x3", "0.06"), state=ProposalState.HELD)
        session.emit_from_thread([ProposalReady(held, at=T0)])
        await settle(pilot)
        diff = app.main.diff
        await pilot.press("n", "n")
        await settle(pilot)
        assert diff.selected == 9 and "#9 HELD base abc1234 lr x3" in diff.query_one("#queue").render().plain
        banner = diff.query_one(".held-banner", HunkView)
        assert banner.render().plain.startswith(
            "unusually large win: look before it becomes the best")
        hunks = list(diff.query(".hunk"))
        assert hunks and all(view.has_class("held") for view in hunks)
        assert "edit" not in footer_actions(app) and {"accept", "veto"} <= footer_actions(app)
        await pilot.press("n")                 # an ordinary proposal can be edited again
        await settle(pilot)
        assert diff.selected == 7 and "edit" in footer_actions(app)
        await pilot.press("N", "a")
        await settle(pilot)
        assert ("accept", 9) in session.calls


@pilot_test
async def test_a_run_without_a_verified_or_confined_metric_says_so_in_the_table(session):
    app = PairlabApp(session)
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        runs = [replace(experiment(5, "r5", RunStatus.DISCARD, 1.46, "adopted run", "f0f0f0f"),
                        metric_verified=False),
                replace(experiment(6, "r6", RunStatus.DISCARD, 1.47, "no landlock", "a1a1a1a"),
                        confined=False)]
        session.emit_from_thread([RunFinished(run, RunResult(run.run_id, run.status, run.val_bpb),
                                              at=T0) for run in runs])
        await settle(pilot)
        table = app.main.table.query_one(DataTable)
        assert str(table.get_cell("r5", "description")) == \
            "adopted run [metric reported by train.py (not verified)]"
        assert str(table.get_cell("r6", "description")) == "no landlock [unconfined]"
        assert str(table.get_cell("r2", "description")) == "depth 4 -> 6"


@pilot_test
async def test_drafts_started_back_to_back_leave_the_app_processing_messages(tmp_path):
    """Two drafts announced in one go (two slots, drafts ahead): the second stops the first's
    reasoning stream before that stream's task has ever run. Its cancellation must not
    escape the handler: it would end the app's message loop, and the app would freeze."""
    app = PairlabApp(ScriptedSession(tmp_path, history_events()))
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        for draft_id in (21, 22, 23):          # queued together: no step of the loop between
            app.post_message(EngineEvent(DraftStarted(draft_id, "tuner", "abc1234", at=T0)))
        app.post_message(ReasoningBatch(23, [("text", "the third draft's reasoning")]))
        await settle(pilot)
        reasoning = app.main.query_one(ReasoningPanel)
        assert reasoning.draft_id == 23
        assert reasoning.text == "the third draft's reasoning"
        assert "draft #23" in reasoning.border_subtitle


CRASH = ("nanochat.evaluate crashed: RuntimeError: Tensor dtype mismatch! Expected: BFloat16, "
         "Got: float (raised in the evaluator running the exported graph, long enough to be cut)")


@pilot_test
async def test_a_crash_reads_whole_in_its_table_row_and_the_log_panel(session):
    app = PairlabApp(session)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        data = app.main.table.query_one(DataTable)
        crashed = replace(experiment(4, "r4", RunStatus.CRASH, None, "raise the learning rate",
                                     "efa5678"), message=CRASH)
        session.emit_from_thread([RunFinished(crashed, RunResult("r4", RunStatus.CRASH, None,
                                                                 message=CRASH), at=T0)])
        await settle(pilot)
        # the row grew to hold the error, in its place (the runs after it stay after it)
        panel = app.main.table
        assert data.get_row_height(RowKey("r4")) == 1 + len(why_lines(crashed, panel.why_width)) >= 3
        assert [row.key.value for row in data.ordered_rows] == ["r0", "r1", "r2", "r3", "r4"]
        shown = " ".join(" ".join(data.render_line(y).text.split())
                         for y in range(data.virtual_size.height))
        assert f"raise the learning rate ↳ {CRASH}" in shown, shown
        # the log panel's last lines: the whole error, wrapped to the panel
        log = app.main.log_panel.log
        lines = list(log.lines)
        summary = lines[max(i for i, line in enumerate(lines) if line.startswith("── crash")):]
        assert " ".join(line.strip() for line in summary) == \
            f"── crash · val_bpb — · {CRASH}"
        assert len(summary) > 1
        assert max(len(line) for line in summary) < log.scrollable_content_region.width


@pilot_test
async def test_keys_answer_while_the_engine_holds_the_reply_the_editor_waits_for(session,
                                                                               monkeypatch):
    # `e` needs the proposal's files from the engine; an engine that takes its time must not
    # freeze the app (it did: the call ran on the UI thread, up to the client's 120 s).
    asked, released = threading.Event(), threading.Event()
    files = session.proposal_text

    def held_reply(proposal_id: int, path: str) -> str:
        asked.set()
        released.wait(5)
        return files(proposal_id, path)

    monkeypatch.setattr(session, "proposal_text", held_reply)
    app = PairlabApp(session)
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        await pilot.press("e")
        await wait_until(pilot, asked.is_set)
        before = app.focused
        pressed = time.monotonic()
        await pilot.press("tab")
        while app.focused is before:                        # as soon as it moved, not 50 ms on
            assert time.monotonic() - pressed < 20, "the key was never answered"
            await pilot.pause()
        print(f"tab moved the focus {1000 * (time.monotonic() - pressed):.0f} ms after the key, "
              "the engine's reply still held")
        assert not released.is_set() and not isinstance(app.screen, EditorScreen)
        released.set()
        await wait_until(pilot, lambda: isinstance(app.screen, EditorScreen))
        assert app.screen.query_one(PythonTextArea).text.startswith("LR = 0.03")
