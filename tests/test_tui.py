"""Pilot tests of the app's panels and keys, driven by a fixed event script through the
same subscriber path the engine uses (events posted from another thread)."""

from __future__ import annotations

import pytest
from textual.widgets import DataTable, Input, Log

from engine.events import (DeviceSample, LogLines, ReasoningDelta, RunFinished, RunStarted,
                           StateChanged)
from engine.records import KeepMeasure, RunResult, RunStatus
from test_tui_support import (T0, ScriptedSession, experiment, history_events, pilot_test,
                              proposal)
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
from tui.widgets.experiments import ExperimentsPanel
from tui.widgets.log import LogPanel
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
async def test_accept_refused_by_the_engine_is_shown_and_the_queue_resynced(session):
    app = PairlabApp(session)
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        session._pending.pop(7)                 # the engine already decided it elsewhere
        await pilot.press("a")
        await settle(pilot)
        assert list(app.main.diff.queue) == [8]
        assert any("accept #7" in n.message for n in app._notifications)


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
        assert "reason is needed" in str(app.screen.query_one("#veto-error").render())
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
        await pilot.pause()
        assert isinstance(app.screen, EditorScreen)
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
        log = app.main.query_one(LogPanel).query_one(Log)
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
        assert app.main.log_panel.query_one(Log).lines[-1].startswith("── keep · val_bpb 1.430000")


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
        assert app.screen.maximized is app.main.query_one(ReasoningPanel)
        await pilot.press("f")
        assert app.screen.maximized is None


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
        assert app.focused is app.main.log_panel.query_one(Log)


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
        assert app.screen.query_one(Log).lines[-1] == "past line 99"
        await pilot.press("escape")
        assert app.screen is app.main


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
    class Inbox:
        def __init__(self):
            self.messages = []

        def post_message(self, message):
            self.messages.append(message)
            return True

    inbox = Inbox()
    bridge = EventBridge(inbox, max_log_lines=100)
    for i in range(50):
        bridge(ReasoningDelta(1, "thinking", f"t{i} "))
    for i in range(500):
        bridge(LogLines("r1", [f"line {i}"]))
    bridge(StateChanged("training"))
    kinds = [type(m) for m in inbox.messages]
    assert kinds == [ReasoningBatch, LogBatch, EngineEvent]
    reasoning, log = inbox.messages[0], inbox.messages[1]
    assert reasoning.chunks == [("thinking", "".join(f"t{i} " for i in range(50)))]
    assert log.lines[-1] == "line 499" and len(log.lines) == 100 and log.dropped == 400
    assert bridge.lines_accepted == 500


def test_hunks_carry_line_numbers_and_prefixes():
    hunks = parse_hunks(proposal(1, "x", "0.03").diff)
    assert [(h.path, h.old_start, h.new_start, len(h.lines)) for h in hunks] == [
        ("train.py", 8, 8, 6), ("train.py", 40, 40, 4)]
    rendered = render_hunk(hunks[0]).plain.splitlines()
    assert rendered[2].split() == ["10", "-", "LEARNING_RATE", "=", "0.02", "#", "adam", "lr"]
    assert rendered[3].split()[:2] == ["10", "+"]
    assert rendered[5].split()[:1] == ["12"]
