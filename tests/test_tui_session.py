"""The app over the real engine: a real Session on a real workspace (git in a tmp dir,
SQLite journal, train.py in a subprocess) with the offline tuner agent and tiny runs."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from textual.widgets import Input

from engine.events import DecisionMade, RunFinished, RunStarted, StateChanged
from engine.records import DecisionKind, RunStatus
from engine.session import Session, SessionSettings
from nanochat.harness import PROTECTED_BEGIN
from test_tui_support import pilot_test
from tui.app import PairlabApp
from tui.screens.editor import EditorScreen, PythonTextArea
from tui.widgets.log import LogPanel

# Each test trains train.py for real (two steps, tiny model): tens of seconds on 2 CPUs.
pytestmark = pytest.mark.slow

SIZE = (120, 40)
HUMAN_LINE = "# the human was here: this version trains\n"


def open_session(tmp_path, dataset_dir, **settings) -> Session:
    options = dict(mode="review", budget_s=3.0, max_steps=2, noise_repeats=0,
                   data_dir=dataset_dir,
                   extra_env={"PAIRLAB_COMPILE": "0", "PAIRLAB_SEQ_LEN": "64",
                              "PAIRLAB_EVAL_TOKENS": "8192"})
    options.update(settings)
    return Session.open(tmp_path / "ws", agent_name="tuner", settings=SessionSettings(**options))


class Recorder:
    """Subscribed next to the app: what the engine itself announced."""

    def __init__(self, session: Session) -> None:
        self.events = []
        session.subscribe(self.events.append)

    def of(self, kind):
        return [e for e in self.events if isinstance(e, kind)]

    def story(self) -> str:
        """The engine's low-rate events, for a failure message."""
        quiet = ("reasoning", "log", "progress", "device")
        return "\n".join(e.to_json()[:160] for e in self.events if e.type not in quiet)


async def wait_for(pilot, condition, timeout: float = 120.0, what: str = "",
                   recorder: Recorder | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            story = recorder.story() if recorder else ""
            raise AssertionError(f"timed out waiting for {what or condition}\n{story}")
        await pilot.pause(0.2)


@pilot_test
async def test_accept_trains_the_proposal_and_its_log_chart_and_row_appear(tmp_path, dataset_dir):
    session = open_session(tmp_path, dataset_dir)
    recorder = Recorder(session)
    app = PairlabApp(session)
    async with app.run_test(size=SIZE) as pilot:
        main = app.main
        await wait_for(pilot, lambda: main.diff.selected is not None, what="a proposal", recorder=recorder)
        await wait_for(pilot, lambda: not recorder.of(RunStarted) or recorder.of(RunFinished),
                       what="the baseline to finish")
        rows_before = len(main.table.rows)
        proposal_id = main.diff.selected
        await pilot.press("a")
        await wait_for(pilot, lambda: any(r.proposal_id == proposal_id for r in recorder.of(RunStarted)),
                       what="the accepted run to start")
        run = next(r for r in recorder.of(RunStarted) if r.proposal_id == proposal_id)
        await wait_for(pilot, lambda: main.log_panel.run_id == run.run_id
                       and main.log_panel.lines_written > 0, what="log lines")
        await wait_for(pilot, lambda: any(f.result.run_id == run.run_id
                                          for f in recorder.of(RunFinished)), what="the run to end")
        await pilot.pause(0.3)
        assert len(main.table.rows) == rows_before + 1
        assert run.run_id in main.chart.experiments
        assert str(main.table.query_one("DataTable").get_cell(run.run_id, "status")) != "training"
        assert main.query_one(LogPanel).log.line_count > 1
        await pilot.press("q")
        await wait_for(pilot, lambda: not app.is_running or session.stopped, timeout=30)


@pilot_test
async def test_veto_reason_reaches_the_engine_and_an_edit_is_what_trains(tmp_path, dataset_dir):
    session = open_session(tmp_path, dataset_dir)
    recorder = Recorder(session)
    app = PairlabApp(session)
    async with app.run_test(size=SIZE) as pilot:
        main = app.main
        await wait_for(pilot, lambda: main.diff.selected is not None, what="a proposal", recorder=recorder)
        vetoed = main.diff.selected
        await pilot.press("v")
        app.screen.query_one(Input).value = "the lr was tuned already"
        await pilot.press("enter")
        await wait_for(pilot, lambda: any(d.decision.proposal_id == vetoed
                                          for d in recorder.of(DecisionMade)), what="the veto")
        veto = next(d.decision for d in recorder.of(DecisionMade) if d.decision.proposal_id == vetoed)
        assert veto.kind == DecisionKind.VETO and veto.reason == "the lr was tuned already"

        await wait_for(pilot, lambda: main.diff.selected not in (None, vetoed), what="a redraft")
        edited = main.diff.selected
        await pilot.press("e")
        await wait_for(pilot, lambda: isinstance(app.screen, EditorScreen), timeout=10)
        area = app.screen.query_one(PythonTextArea)
        original = area.text
        area.load_text(original.replace(PROTECTED_BEGIN, PROTECTED_BEGIN + "\nx = 1", 1))
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: "Refused" in str(app.screen.query_one("#edit-error").render()),
                       timeout=20, what="the refusal")
        assert isinstance(app.screen, EditorScreen)
        area.load_text(HUMAN_LINE + original)
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: not isinstance(app.screen, EditorScreen), timeout=20)
        await wait_for(pilot, lambda: any(r.proposal_id == edited for r in recorder.of(RunStarted)),
                       what="the edited run")
        run = next(r for r in recorder.of(RunStarted) if r.proposal_id == edited)
        assert session.workspace.file_at(run.commit, "train.py").startswith(HUMAN_LINE)
        decision = next(d.decision for d in recorder.of(DecisionMade)
                        if d.decision.proposal_id == edited)
        assert decision.kind == DecisionKind.EDIT
        await pilot.press("q")
        if app.main.run_in_flight is not None:
            await pilot.press("y")


@pilot_test
async def test_pause_resume_and_kill_reach_the_engine(tmp_path, dataset_dir):
    # A long baseline, so there is a run to pause around and to kill.
    session = open_session(tmp_path, dataset_dir, budget_s=60.0, max_steps=None)
    recorder = Recorder(session)
    app = PairlabApp(session)
    async with app.run_test(size=SIZE) as pilot:
        main = app.main
        await wait_for(pilot, lambda: main.run_in_flight is not None and main.log_panel.lines_written,
                       what="the baseline to train")
        await pilot.press("p")
        await wait_for(pilot, lambda: session.paused and main.state == "paused", timeout=10)
        await pilot.press("p")
        await wait_for(pilot, lambda: not session.paused and main.state != "paused", timeout=10)
        await pilot.press("k")
        await wait_for(pilot, lambda: recorder.of(RunFinished), timeout=30, what="the killed run")
        assert recorder.of(RunFinished)[0].result.status is RunStatus.KILLED
        await wait_for(pilot, lambda: main.run_in_flight is None, timeout=10)
        assert "kill_run" not in {b.binding.action for b in app.screen.active_bindings.values()}
        assert any(e.state == "paused" for e in recorder.of(StateChanged))
        await pilot.press("q")


def test_pairlab_in_tmux_accept_then_quit(tmp_path, dataset_dir):
    """The real command in a real terminal: wait for a proposal, accept it, see the training
    log move, quit cleanly."""
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    cache = tmp_path / "cache"
    (cache / "datasets").mkdir(parents=True)
    (cache / "datasets" / "default").symlink_to(dataset_dir)
    exit_file = tmp_path / "exit-code"
    env = {"PAIRLAB_CACHE": str(cache), "PAIRLAB_COMPILE": "0", "PAIRLAB_MAX_STEPS": "2",
           "PAIRLAB_SEQ_LEN": "64", "PAIRLAB_EVAL_TOKENS": "8192",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    command = (f"{shlex.quote(sys.executable)} -c 'from engine.cli import main; raise SystemExit(main())'"
               f" --workspace {shlex.quote(str(tmp_path / 'ws'))} --agent tuner --budget 3"
               f" --noise-repeats 0; echo $? > {shlex.quote(str(exit_file))}")
    name = f"pairlab-test-{os.getpid()}"
    exports = " ".join(f"{key}={shlex.quote(value)}" for key, value in env.items())
    subprocess.run(["tmux", "new-session", "-d", "-s", name, "-x", "100", "-y", "30",
                    f"env {exports} TERM=xterm-256color {command}"], check=True)
    subprocess.run(["tmux", "resize-window", "-t", name, "-x", "100", "-y", "30"],
                   capture_output=True)

    def screen() -> str:
        return subprocess.run(["tmux", "capture-pane", "-p", "-t", name], capture_output=True,
                              text=True).stdout

    def wait_screen(condition, timeout: float, what: str) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = screen()
            if condition(text):
                return text
            time.sleep(0.5)
        raise AssertionError(f"timed out waiting for {what}; the screen:\n{screen()}")

    try:
        wait_screen(lambda s: "pending" in s.splitlines()[0] if s.strip() else False, 180,
                    "a pending proposal")
        before = screen()
        subprocess.run(["tmux", "send-keys", "-t", name, "a"], check=True)
        wait_screen(lambda s: s != before and "── run " in s
                    and ("step" in s or "val_bpb" in s), 120, "the accepted run's log")
        first = screen()
        wait_screen(lambda s: s != first, 60, "the log to move")
        subprocess.run(["tmux", "send-keys", "-t", name, "q"], check=True)
        time.sleep(1.0)
        if "Quit now?" in screen():
            subprocess.run(["tmux", "send-keys", "-t", name, "y"], check=True)
        deadline = time.monotonic() + 60
        while not exit_file.exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert exit_file.read_text().strip() == "0"
    finally:
        subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True)
