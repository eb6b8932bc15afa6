"""Shared by the TUI tests: a fixed sequence of engine events, and a stand-in session that
records the calls the app makes and answers like the engine does (from its own thread)."""

from __future__ import annotations

import asyncio
import functools
import sys
import threading
import time
import traceback
from pathlib import Path
from unittest import mock

from textual.pilot import Pilot, WaitForScreenTimeout

from engine.base.events import (BestUpdated, DecisionMade, DeviceSample, DraftStarted, LogLines,
                                ModeChanged, NoiseFloor, ProposalReady, ReasoningDelta, RunFinished,
                                RunProgress, RunStarted, StateChanged)
from engine.base.view import View
from engine.base.records import (Decision, DecisionKind, Experiment, Proposal, RunResult, RunStatus,
                                 Usage)
from engine.workspace.patch import PatchRefused

T0 = 1_700_000_000.0            # every event carries this time: nothing time-dependent on screen

TRAIN_PY = "".join(f"LINE_{i} = {i}\n" for i in range(1, 30))


STALL_S = 2.0      # the event loop running nothing else this long is worth a note


class LoopWatch:
    """Notes each stretch of STALL_S or more in which the event loop answered no ping, with
    the loop thread's stack taken during it, and the tasks left waiting when a pilot timed
    out: what a bare WaitForScreenTimeout cannot tell (a blocked loop, or a stuck handler)."""

    def __init__(self) -> None:
        self.stalls: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._thread = threading.Thread(target=self._watch, args=(loop, threading.get_ident()),
                                        daemon=True, name="loop-watch")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _watch(self, loop: asyncio.AbstractEventLoop, loop_thread: int) -> None:
        while not self._stop.wait(0.25):
            answered = threading.Event()
            try:
                loop.call_soon_threadsafe(answered.set)
            except RuntimeError:
                return                                  # the loop has closed
            started = time.monotonic()
            if answered.wait(STALL_S):
                continue
            frame = sys._current_frames().get(loop_thread)
            stack = "".join(traceback.format_stack(frame)) if frame else "(no frame)\n"
            while not answered.wait(1.0) and not self._stop.is_set():
                pass
            self.stalls.append(f"the event loop stalled {time.monotonic() - started:.1f} s "
                               f"in:\n{stack}")

    @staticmethod
    def waiting_tasks(app) -> str:
        """The widgets whose message loop has ended, and every task still waiting but for
        idle message pumps and timers."""
        ended = []
        for node in (app, *app.screen.walk_children(with_self=True)):
            task = node._task
            if task is not None and task.done():
                cause = ("cancelled" if task.cancelled() else
                         repr(task.exception()) if task.exception() else "returned")
                ended.append(f"the message loop of {node!r} has ended: {cause}")
        stacks = []
        for task in asyncio.all_tasks():
            frames, awaited = [], task.get_coro()       # the await chain, outermost first
            while awaited is not None:
                frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
                if frame is not None:
                    frames.append(frame)
                awaited = (getattr(awaited, "cr_await", None)
                           or getattr(awaited, "gi_yieldfrom", None))
            if any(f.f_code.co_name in ("_get_message", "_run_timer") for f in frames):
                continue                                # an idle message pump, a timer
            where = traceback.StackSummary.extract((f, f.f_lineno) for f in frames[-8:])
            stacks.append(f"task {task.get_name()}:\n{''.join(where.format())}")
        return "\n".join([*ended, "tasks waiting when the pilot timed out:", *stacks])


def pilot_test(test):
    """Run an async test with asyncio.run: no pytest async plugin needed. A failure carries
    the LoopWatch's notes."""
    @functools.wraps(test)
    def run(*args, **kwargs):
        watch = LoopWatch()

        async def watched():
            watch.start(asyncio.get_running_loop())
            return await test(*args, **kwargs)

        wait_for_screen = Pilot._wait_for_screen

        async def noted_wait_for_screen(pilot, *wait_args, **wait_kwargs):
            try:
                return await wait_for_screen(pilot, *wait_args, **wait_kwargs)
            except WaitForScreenTimeout as error:      # while the stuck tasks still wait
                error.add_note(watch.waiting_tasks(pilot.app))
                raise

        try:
            with mock.patch.object(Pilot, "_wait_for_screen", noted_wait_for_screen):
                return asyncio.run(watched())
        except BaseException as error:
            for stall in watch.stalls:
                error.add_note(stall)
            raise
        finally:
            watch.stop()
    return run


def lr_diff(old: str, new: str) -> str:
    return ("--- a/train.py\n+++ b/train.py\n"
            "@@ -8,5 +8,5 @@ # hyperparameters\n"
            " DEPTH = 4          # transformer layers\n"
            " WIDTH = 256\n"
            f"-LEARNING_RATE = {old}   # adam lr\n"
            f"+LEARNING_RATE = {new}   # adam lr\n"
            " WARMUP = 0.1\n"
            ' NAME = "nanochat"\n'
            "@@ -40,3 +40,4 @@ def train():\n"
            "     for step in range(steps):\n"
            "         loss = model(x, y)\n"
            "+        loss = loss * 1.0\n"
            "     return loss\n")


def proposal(pid: int, description: str, new_lr: str) -> Proposal:
    return Proposal(pid, description, f"lr {new_lr} converges faster in a 5 minute budget",
                    lr_diff("0.02", new_lr), "abc1234def5678", "tuner",
                    {"train.py": TRAIN_PY.replace("LINE_1 = 1", f"LR = {new_lr}")},
                    usage=Usage(input_tokens=1200, output_tokens=340, cost_usd=0.0123),
                    created_at=T0)


def experiment(eid: int, run_id: str, status: RunStatus, bpb: float | None,
               description: str, commit: str, by: str = "human") -> Experiment:
    return Experiment(eid, eid or None, commit, status, bpb, 0.4, description, by, run_id,
                      T0, T0 + 300, f"/nonexistent/{run_id}.log")


def history_events() -> list:
    """A baseline, two experiments (one kept, one discarded, one crash), a run in flight,
    two proposals waiting for review, a device reading: the whole main screen in use."""
    events = [
        ModeChanged("review", at=T0),
        DeviceSample("cpu", [], cpu_percent=63.0, ram_used_mb=3100, ram_total_mb=7900,
                     trainer_cpu_percent=181.0, trainer_rss_mb=1260, at=T0),
    ]
    runs = [
        (0, "r0", RunStatus.KEEP, 1.4521, "baseline", "abc1234", "auto"),
        (1, "r1", RunStatus.KEEP, 1.4388, "warmup 0.1 -> 0.05", "bcd2345", "human"),
        (2, "r2", RunStatus.DISCARD, 1.4610, "depth 4 -> 6", "cde3456", "auto"),
        (3, "r3", RunStatus.CRASH, None, "lr x10", "def4567", "human"),
    ]
    for eid, run_id, status, bpb, description, commit, by in runs:
        events.append(RunStarted(run_id, eid, eid or None, commit, description, 300.0,
                                 f"/nonexistent/{run_id}.log", at=T0))
        for step in range(0, 40, 4):
            events.append(RunProgress(run_id, step, 6.0 - step * 0.05 - eid * 0.02,
                                      step / 0.4, step * 7.5, 300 - step * 7.5, at=T0))
        exp = experiment(eid, run_id, status, bpb, description, commit, by)
        events.append(RunFinished(exp, RunResult(run_id, status, bpb), at=T0))
        if status == RunStatus.KEEP:
            events.append(BestUpdated(commit, bpb, eid, at=T0))
        if eid == 0:
            events.append(NoiseFloor(0.0021, [1.4521, 1.4500], at=T0))
    events += [
        StateChanged("training", "raise the learning rate", at=T0),
        RunStarted("r4", 4, 1, "efa5678", "raise the learning rate", 300.0,
                   "/nonexistent/r4.log", at=T0),
        LogLines("r4", [f"step {i:05d} | loss: {6 - i * 0.01:.6f}" for i in range(40)], at=T0),
    ]
    events += [RunProgress("r4", step, 5.9 - step * 0.06, step / 0.4, step * 7.5,
                           300 - step * 7.5, at=T0) for step in range(0, 20, 2)]
    events += [
        DraftStarted(7, "tuner", "bcd2345aa", at=T0),
        ReasoningDelta(7, "thinking", "The last win came from a shorter warmup. ", at=T0),
        ReasoningDelta(7, "thinking", "A higher learning rate may help too.", at=T0),
        ReasoningDelta(7, "text", "Proposing **LEARNING_RATE 0.02 -> 0.03**.", at=T0),
        ProposalReady(proposal(7, "raise the learning rate to 0.03", "0.03"), at=T0),
        ProposalReady(proposal(8, "raise the learning rate to 0.04", "0.04"), at=T0),
    ]
    return events


class ScriptedSession:
    """The Session API (contracts §6) over a script: answers come from an engine-like thread."""

    def __init__(self, tmp_path: Path, events: list | None = None) -> None:
        self.tmp_path = tmp_path
        self.events = events or []
        self.calls: list[tuple] = []
        self.callbacks = []
        self.state = "starting"
        self.mode = "review"
        self.best = None
        self.noise_floor = None
        self.total_cost = 0.0
        self.current_run = None
        self._pending: dict[int, Proposal] = {}
        self.stopped = threading.Event()
        self.edit_bases: list[str | None] = []     # the base each edit said it opened on
        self.delivered = threading.Event()         # the script has been emitted

    # --- driving the app ---------------------------------------------------------------
    def emit(self, event) -> None:
        if isinstance(event, ProposalReady):
            self._pending[event.proposal.id] = event.proposal
        if isinstance(event, StateChanged):
            self.state = event.state
        for callback in self.callbacks:
            callback(event)

    def emit_from_thread(self, events) -> None:
        thread = threading.Thread(target=lambda: [self.emit(e) for e in events])
        thread.start()
        thread.join()

    # --- the API -----------------------------------------------------------------------
    def subscribe(self, callback) -> None:
        self.callbacks.append(callback)

    def start(self) -> None:
        self.calls.append(("start",))
        self.emit_from_thread(self.events)
        self.delivered.set()

    def stop(self, timeout: float = 10) -> None:
        self.calls.append(("stop",))
        self.stopped.set()

    def _decide(self, proposal_id: int, kind: DecisionKind, reason: str = "") -> None:
        if proposal_id not in self._pending:
            raise KeyError(f"proposal {proposal_id} is not waiting for review")
        del self._pending[proposal_id]
        self.emit_from_thread([DecisionMade(Decision(proposal_id, kind, "human", reason), at=T0)])

    def accept(self, proposal_id: int) -> None:
        self.calls.append(("accept", proposal_id))
        self._decide(proposal_id, DecisionKind.ACCEPT)

    def veto(self, proposal_id: int, reason: str) -> None:
        self.calls.append(("veto", proposal_id, reason))
        self._decide(proposal_id, DecisionKind.VETO, reason)

    def edit(self, proposal_id: int, files: dict[str, str],
             base_commit: str | None = None) -> None:
        if any("PROTECTED" in text for text in files.values()):
            raise PatchRefused("protected", "train.py line 3: the protected block may not change")
        self.calls.append(("edit", proposal_id, files))
        self.edit_bases.append(base_commit)
        self._decide(proposal_id, DecisionKind.EDIT)

    def pause(self) -> None:
        self.calls.append(("pause",))
        self.emit_from_thread([StateChanged("paused", "paused by the user", at=T0)])

    def resume(self) -> None:
        self.calls.append(("resume",))
        self.emit_from_thread([StateChanged("training", "", at=T0)])

    def kill_run(self) -> bool:
        self.calls.append(("kill_run",))
        return True

    def set_mode(self, mode: str) -> None:
        self.calls.append(("set_mode", mode))
        self.mode = mode
        self.emit_from_thread([ModeChanged(mode, at=T0)])

    def pending(self) -> list[Proposal]:
        return list(self._pending.values())

    def experiments(self) -> list[Experiment]:
        return []

    def view(self) -> View:
        return View(state=self.state, mode=self.mode, best=self.best, noise_floor=self.noise_floor,
                    total_cost=self.total_cost, pending=tuple(self.pending()),
                    runs=(self.current_run,) if self.current_run else ())

    def proposal_text(self, proposal_id: int, path: str) -> str:
        return self._pending[proposal_id].files[path]

    def log_path(self, experiment_id: int) -> Path:
        return self.tmp_path / f"{experiment_id}.log"
