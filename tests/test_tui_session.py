"""The app over the real engine: a real Session on a real workspace (git in a tmp dir,
SQLite journal, train.py in a subprocess) with the offline tuner agent and tiny runs."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_tui_support import pilot_test
from textual.widgets import Input

from engine.base.events import DecisionMade, RunFinished, RunStarted, StateChanged
from engine.base.records import DecisionKind, RunStatus
from engine.session import Session, SessionSettings
from engine.workspace.patch import PROTECTED_BEGIN
from pairlab.sessions import make_session, open_workspace
from tui.app import PairlabApp
from tui.screens.editor import EditorScreen, PythonTextArea
from tui.screens.main_layout import PANEL_NAMES
from tui.screens.modals import ConfirmStopScreen
from tui.widgets.diff import DiffPanel

# Each test trains train.py for real (two steps, tiny model): tens of seconds on 2 quiet
# CPUs, minutes on a loaded machine; the hang guard allows for that.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

SIZE = (120, 40)
HUMAN_LINE = "# the human was here: this version trains\n"


def open_session(tmp_path, dataset_dir, **settings) -> Session:
    options = dict(mode="review", budget_s=3.0, max_steps=2, noise_repeats=0,
                   data_dir=dataset_dir, first_start_check=False,
                   extra_env={"PAIRLAB_COMPILE": "0", "PAIRLAB_SEQ_LEN": "64",
                              "PAIRLAB_EVAL_TOKENS": "8192", "PAIRLAB_PRECISION": "fp32"})
    options.update(settings)
    return make_session(open_workspace(tmp_path / "ws"), "tuner", SessionSettings(**options))


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


async def stop_the_loop(pilot, app, session) -> None:
    """S stops the loop (q would only detach); it asks while a run is in flight."""
    await pilot.press("S")
    await pilot.pause(0.2)
    if isinstance(app.screen, ConfirmStopScreen):
        await pilot.press("y")
    await wait_for(pilot, lambda: not app.is_running or session.stopped, timeout=30)


@pilot_test
async def test_accept_trains_the_proposal_and_its_log_chart_and_row_appear(tmp_path, dataset_dir):
    # speculation off: the test follows the accepted run from its start (speculative runs
    # in the app: tests/test_speculation.py)
    session = open_session(tmp_path, dataset_dir, speculate=False)
    recorder = Recorder(session)
    app = PairlabApp(session)
    async with app.run_test(size=SIZE) as pilot:
        main = app.main
        await wait_for(pilot, lambda: main.diff.selected is not None, what="a proposal", recorder=recorder)
        # The baseline's finished row, in the app's own table (the proposal may come first).
        await wait_for(pilot, lambda: any(e.kind == "baseline" and e.finished_at is not None
                                          for e in main.table.rows.values()),
                       what="the baseline's row", recorder=recorder)
        judged = lambda: [e for e in main.table.rows.values()  # noqa: E731
                          if e.kind not in ("noise", "rerun")]   # the keep rule's re-runs apart
        rows_before = len(judged())
        proposal_id = main.diff.selected
        await pilot.press("a")
        await wait_for(pilot, lambda: any(r.proposal_id == proposal_id for r in recorder.of(RunStarted)),
                       what="the accepted run to start")
        run = next(r for r in recorder.of(RunStarted) if r.proposal_id == proposal_id)
        # Its own lines below its header, while it is the run shown (the keep rule may start
        # a re-run of the best as soon as it ends, and the panel follows the run in flight).
        await wait_for(pilot, lambda: main.log_panel.run_id == run.run_id
                       and main.log_panel.log.line_count > 1, what="the run's log lines")
        await wait_for(pilot, lambda: any(f.result.run_id == run.run_id
                                          for f in recorder.of(RunFinished)), what="the run to end")
        await pilot.pause(0.3)
        assert len(judged()) == rows_before + 1, [(e.run_id, e.kind, e.status.value)
                                                  for e in main.table.rows.values()]
        assert run.run_id in main.chart.experiments
        assert str(main.table.query_one("DataTable").get_cell(run.run_id, "status")) != "training"
        await stop_the_loop(pilot, app, session)


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
        # the edited version trains (a speculative run of the agent's version came first)
        edited_run = lambda r: r.proposal_id == edited and not r.speculative  # noqa: E731
        await wait_for(pilot, lambda: any(edited_run(r) for r in recorder.of(RunStarted)),
                       what="the edited run")
        run = next(r for r in recorder.of(RunStarted) if edited_run(r))
        assert session.workspace.file_at(run.commit, "train.py").startswith(HUMAN_LINE)
        decision = next(d.decision for d in recorder.of(DecisionMade)
                        if d.decision.proposal_id == edited)
        assert decision.kind == DecisionKind.EDIT
        await stop_the_loop(pilot, app, session)


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
        await stop_the_loop(pilot, app, session)


class Tmux:
    """One terminal running one command, as a person would see it: a tmux server of its own
    (no other session's sizes apply, and tests in parallel never meet), 140x42."""

    def __init__(self, name: str, command: str, env: dict[str, str]) -> None:
        self.name = name
        self.tmux = ["tmux", "-L", name]
        exports = " ".join(f"{key}={shlex.quote(value)}" for key, value in env.items())
        # -u: a tmux server started under pytest hands its COLUMNS/LINES (80x24) to the pane
        subprocess.run([*self.tmux, "new-session", "-d", "-s", name, "-x", "140", "-y", "42",
                        f"env -u COLUMNS -u LINES {exports} TERM=xterm-256color {command}"],
                       check=True)
        subprocess.run([*self.tmux, "set-option", "-t", name, "remain-on-exit", "on"],
                       capture_output=True)

    def screen(self) -> str:
        return subprocess.run([*self.tmux, "capture-pane", "-p", "-t", self.name],
                              capture_output=True, text=True).stdout

    def said(self) -> str:
        """What the terminal printed, wrapped lines joined and spaces collapsed."""
        text = subprocess.run([*self.tmux, "capture-pane", "-p", "-J", "-S", "-50", "-t",
                               self.name], capture_output=True, text=True).stdout
        return " ".join(text.split())

    def keys(self, *keys: str) -> None:
        subprocess.run([*self.tmux, "send-keys", "-t", self.name, *keys], check=True)

    def wait(self, condition, timeout: float, what: str) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.screen()
            if condition(text):
                return text
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}; the screen of {self.name}:\n"
                             f"{self.screen()}")

    def tab_to(self, visible: str, what: str) -> str:
        """Stacked panels show one at a time: tab on, one panel per key (each key waits for
        the panel in front to change), until `visible` shows. Wide, it shows already."""
        for _ in range(len(PANEL_NAMES)):
            screen = self.screen()
            if visible in screen:
                return screen
            before = _front_panel(screen)
            self.keys("Tab")
            self.wait(lambda s: _front_panel(s) != before, 10, f"the panel after {before}")
        return self.wait(lambda s: visible in s, 30, what)

    def close(self) -> None:
        subprocess.run([*self.tmux, "kill-server"], capture_output=True)


def _front_panel(screen: str) -> str:
    """The title of the first panel on the screen: in stacked mode, the one in front."""
    found = re.search(r"╭─ (.+?) ─", screen)
    return found.group(1) if found else ""


def _trainers(root: Path) -> list:
    import psutil
    found = []
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        try:
            if proc.info["cwd"] == str(root) and "train.py" in (proc.info["cmdline"] or []):
                found.append(proc)
        except psutil.Error:
            pass
    return found


@pytest.mark.timeout(1200)          # more real runs than the others
def test_pairlab_in_tmux_detach_reattach_two_windows_and_stop(tmp_path, dataset_dir,
                                                             tiny_workspace):
    """As a person would: `pairlab`, accept, `q` while it trains (the run goes on and its
    row reaches results.tsv), `pairlab` again shows the finished row, a second window sees a
    veto made in the first, `pairlab stop` ends it."""
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    cache = tmp_path / "cache"
    (cache / "datasets").mkdir(parents=True)
    (cache / "datasets" / "default").symlink_to(dataset_dir)
    root = tiny_workspace.root
    env = {"PAIRLAB_CACHE": str(cache), "PAIRLAB_COMPILE": "0", "PAIRLAB_SEQ_LEN": "64",
           "PAIRLAB_EVAL_TOKENS": "8192", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    pairlab = f"{shlex.quote(sys.executable)} -m pairlab"
    # speculation off: the test follows the accepted run from its start
    start = (f"{pairlab} --workspace {shlex.quote(str(root))} --agent tuner --budget 8"
             f" --noise-repeats 0 --no-speculate")
    exit_file = tmp_path / "exit-code"
    tag = f"pairlab-test-{os.getpid()}"
    first = Tmux(f"{tag}-1", f"{start}; echo $? > {shlex.quote(str(exit_file))}", env)
    windows = [first]
    try:
        results = root / "results.tsv"
        first.wait(lambda s: results.exists() and "pending" in s.splitlines()[0], 240,
                   "the baseline's row and a pending proposal")
        rows_before = results.read_text().count("\n")
        first.keys("a")
        trainers: list = []                               # the one seen, not a fresh look

        def training(screen: str) -> bool:
            trainers[:] = _trainers(root) if "── run " in screen else []
            return bool(trainers)
        first.wait(training, 120, "the accepted run training")
        trainer = trainers[0]
        first.keys("q")                                   # detach while it trains
        deadline = time.monotonic() + 30
        while not exit_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert exit_file.read_text().strip() == "0"
        # tmux may draw the last lines a moment after the shell wrote the exit file
        deadline = time.monotonic() + 10
        while "detached; the engine's loop goes on" not in (said := first.said()):
            assert time.monotonic() < deadline, said
            time.sleep(0.2)
        assert trainer.is_running(), "the run in flight died with the app"
        # A win within the noise is confirmed by re-runs first (the keep rule): several runs.
        deadline = time.monotonic() + 600
        while results.read_text().count("\n") == rows_before:
            assert time.monotonic() < deadline, "the detached run's row never reached results.tsv"
            time.sleep(0.5)
        finished = results.read_text().splitlines()[-1].split("\t")
        first.close()

        again = Tmux(f"{tag}-2", start, env)              # `pairlab` again: reattaches
        windows.append(again)
        again.wait(lambda s: "best " in s, 60, "the reattached app")
        again.tab_to(finished[0][:7], "the finished row after reattaching")
        watcher = Tmux(f"{tag}-3", f"{pairlab} attach --workspace {shlex.quote(str(root))}", env)
        windows.append(watcher)
        selected = re.compile(r"▶ (#\d+) base ")           # the diff panel's selected proposal
        again.tab_to(DiffPanel.TITLE, "the diff panel")     # where the next proposal shows
        screen = again.wait(selected.search, 240, "the next proposal")
        proposal = selected.search(screen).group(1)
        watcher.wait(lambda s: f"▶ {proposal} base " in s, 60, "the proposal in the second window")
        again.keys("v")
        again.wait(lambda s: "Why?" in s, 10, "the veto prompt")
        again.keys("not now", "Enter")
        vetoed_at = time.monotonic()
        watcher.wait(lambda s: f"▶ {proposal} base " not in s, 30, "the veto in the second window")
        print(f"the second window showed the veto {time.monotonic() - vetoed_at:.2f} s after "
              "Enter in the first (tmux polled every 0.2 s)")

        status = subprocess.run([sys.executable, "-m", "pairlab", "status", "--workspace",
                                 str(root)], capture_output=True, text=True,
                                env={**os.environ, **env}, timeout=60)
        assert status.returncode == 0, status.stderr
        assert f"workspace: {root}" in status.stdout and "best: " in status.stdout
        stop = subprocess.run([sys.executable, "-m", "pairlab", "stop", "--workspace", str(root)],
                              capture_output=True, text=True, env={**os.environ, **env},
                              timeout=120)
        assert stop.returncode == 0, stop.stderr
        assert stop.stdout.startswith("pairlab: engine stopped; ")
        for window in (again, watcher):
            window.wait(lambda s: "stopped" in s.splitlines()[0], 30, "the stop to show")
    finally:
        for window in windows:
            window.close()
        subprocess.run([sys.executable, "-m", "pairlab", "stop", "--workspace", str(root)],
                       capture_output=True, env={**os.environ, **env}, timeout=120)


# ---------------------------------------------------------------------- runs trained ahead

# Writes like autoresearch's train.py: a finished line, then a progress line rewritten with
# `\r`, until the test lets its run end (a file named after the run).
LOGGING_STANDIN = '''\
VALUE = 1.0  # the val_bpb this stand-in reports

import os
import time
from pathlib import Path

EXTRA = 0  # a second line a proposal can change

run_id = os.environ["PAIRLAB_RUN_ID"]
go = Path(os.environ["STANDIN_DIR"]) / f"{run_id}.go"
print(f"device: stand-in {run_id}", flush=True)
step = 0
while not go.exists():
    print(f"\\rstep {step:05d} | {run_id}", end="", flush=True)
    step += 1
    time.sleep(0.05)
print()
print("---")
print(f"val_bpb: {VALUE:.6f}")
'''


def logging_session(tmp_path, dataset_dir, **settings) -> Session:
    """Review mode with speculation over LOGGING_STANDIN runs (their metric: its summary)."""
    from tests.test_coordinator import ScriptedAgent, standin_workspace
    (tmp_path / "state").mkdir()
    workspace = standin_workspace(tmp_path, LOGGING_STANDIN, tag="ahead")
    options = dict(mode="review", budget_s=5.0, noise_repeats=0, device="cpu",
                   data_dir=dataset_dir, hard_timeout_s=300.0, speculate=True,
                   large_win_sigmas=None, large_win_fraction=None,
                   extra_env={"STANDIN_DIR": str(tmp_path / "state")})
    options.update(settings)
    agent = ScriptedAgent(("VALUE = 1.0", "VALUE = 0.9"), ("EXTRA = 0", "EXTRA = 1"))
    return Session(workspace, agent, SessionSettings(**options), monitor=False)


def shows_live(panel, run_id: str) -> bool:
    """The log panel shows the run: its own finished line, its `\\r` line as the last row."""
    return (panel.run_id == run_id and f"device: stand-in {run_id}" in panel.log.lines
            and panel.log.live.startswith("step ") and panel.log.live.endswith(run_id))


async def end_runs(pilot, app, session, tmp_path) -> None:
    for run in session.journal.run_rows():
        (tmp_path / "state" / f"{run['id']}.go").touch()
    await stop_the_loop(pilot, app, session)


@contextlib.asynccontextmanager
async def past_the_baseline(tmp_path, dataset_dir, **settings):
    """The app over a logging_session once the baseline (run-0001) tailed live in its log
    panel and was let end; afterwards every run ends and the loop stops."""
    session = logging_session(tmp_path, dataset_dir, **settings)
    recorder = Recorder(session)
    app = PairlabApp(session)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: shows_live(app.main.log_panel, "run-0001"),
                           what="the baseline's live line", recorder=recorder)
            (tmp_path / "state" / "run-0001.go").touch()
            yield pilot, app.main, recorder
            await end_runs(pilot, app, session, tmp_path)
    finally:
        session.stop()


@pilot_test
async def test_a_speculative_run_tails_live_in_the_log_panel_and_the_status_says_so(
        tmp_path, dataset_dir):
    async with past_the_baseline(tmp_path, dataset_dir) as (pilot, main, recorder):
        await wait_for(pilot, lambda: recorder.of(RunStarted)[-1].speculative,
                       what="a speculative run", recorder=recorder)
        ahead = recorder.of(RunStarted)[-1]
        await wait_for(pilot, lambda: shows_live(main.log_panel, ahead.run_id),
                       what="the speculative run's live line", recorder=recorder)
        status = str(main.status.render())
        assert f"#{ahead.proposal_id} trains speculatively" in status, status
        assert "waiting for review" not in status


@pilot_test
async def test_with_two_slots_l_tails_the_second_slots_run_live(tmp_path, dataset_dir):
    async with past_the_baseline(tmp_path, dataset_dir, slots=2,
                                 drafts_ahead=2) as (pilot, main, recorder):
        await wait_for(pilot, lambda: len(main.slot_runs) == 2, what="both slots busy",
                       recorder=recorder)
        second = main.slot_runs[1]
        await pilot.press("l")
        await wait_for(pilot, lambda: shows_live(main.log_panel, second.run_id),
                       what="the second slot's live line", recorder=recorder)
