"""The coordinator: the one thread that owns the loop's state, git and the journal.

It takes messages from its inbox one at a time (client commands, worker results), applies
each, then asks the planner what to start and publishes an immutable snapshot for readers.
Nothing else changes proposals, moves the research branch or writes the journal, so no lock
guards the loop's state and no reader ever waits on git. Modelled on Ray Tune's controller:
decisions are objects (planner plans, judge verdicts) the loop applies.

Run outcomes and the judge's verdicts live in engine/loop/outcomes.py, the agent's drafts and
rebases in engine/loop/drafting.py, the user's commands in engine/loop/decisions.py, runs trained
ahead of their review in engine/loop/speculation.py, the trainer slots in engine/scale/slots.py.
"""

from __future__ import annotations

import copy
import queue
import threading
import time
import traceback
from concurrent.futures import Future
from dataclasses import replace
from enum import StrEnum
from typing import Callable

from engine.agents.base import Agent
from engine.base.commands import ClientsAttached, Command, CommandRefused
from engine.base.errors import disk_full_error
from engine.base.events import Event, Notice, SessionStopped, StateChanged
from engine.base.records import RunKind
from engine.journal import Journal
from engine.loop import keep_rule, planner, workers
from engine.loop.decisions import DecisionsMixin
from engine.loop.drafting import Drafting
from engine.loop.evidence import Evidence
from engine.loop.loop_state import LoopState, Snapshot, describe
from engine.loop.lost_runs import LostRuns
from engine.loop.moved_best import MovedBest
from engine.loop.outcomes import OutcomesMixin
from engine.loop.planner import Need
from engine.loop.program_edits import ProgramEdits
from engine.loop.promoting import Promoting
from engine.loop.restore import Restore
from engine.loop.speculation import Speculation
from engine.run import doctor
from engine.scale import slots
from engine.workspace import Workspace


class Failure(StrEnum):
    """Why the loop stopped when it could not go on: its stop reason, named once."""

    DISK_FULL = "disk full"
    INTERNAL = "internal error"


TICK_S = 1.0                         # how often caps and backoffs are looked at when idle


class Coordinator(DecisionsMixin, OutcomesMixin):
    """The loop's one owner. The user's commands (DecisionsMixin) and the runs' outcomes
    (OutcomesMixin) are its own methods; the rest is parts that own their state and reach
    the loop through this host (engine/loop/host.py)."""

    def __init__(self, workspace: Workspace, agent: Agent, settings, journal: Journal,
                 emit: Callable[[Event], None], on_trainer_pid=None):
        self.workspace = workspace
        self.settings = settings
        self.journal = journal
        self.emit_now = emit
        self._held_events: list[Event] | None = None
        self.on_trainer_pid = on_trainer_pid
        self.inbox: queue.Queue = queue.Queue()
        self.loop = LoopState(mode=settings.mode, data_dir=settings.data_dir)
        self.slots = slots.make_slots(settings.slots or slots.default_slot_count(settings.device),
                                      settings.device)
        self.worktrees = slots.Worktrees(workspace)
        self.evidence = Evidence(journal, settings)
        self.drafting = Drafting(self, agent)
        self.speculation = Speculation(self)
        self.program = ProgramEdits(self)
        self.promoting = Promoting(self)
        self.moved_best = MovedBest(self)
        self.lost = LostRuns(self)
        self.restorer = Restore(self)
        self.snapshot = Snapshot(mode=settings.mode, best=self.best(),
                                 noise_floor=journal.get_state("noise_floor"))
        self.thread: threading.Thread | None = None
        self.started_at = time.time()
        self._shown: tuple[str, str] | None = None

    # ------------------------------------------------------------------ the loop

    def restore_and_publish(self) -> None:
        """On the caller's thread, before the loop thread exists: git matches the journal."""
        self.started_at = time.time()
        self.restorer.restore()
        self.publish()

    def start(self) -> None:
        self.thread = threading.Thread(target=self._main, name="pairlab-coordinator",
                                       daemon=True)
        self.thread.start()

    def post(self, message: object) -> None:
        self.inbox.put(message)

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def on_own_thread(self) -> bool:
        return threading.current_thread() is self.thread

    def call(self, command: Command):
        """Apply a command on the coordinator thread and return its result (or raise)."""
        if self.thread is None:                  # not started yet: nothing to schedule
            answer = self.apply_command(command)
            self.publish()
            answer()
        elif self.on_own_thread():
            # From a subscriber, between steps (events wait until a step is published):
            # the command is a step of its own, never applied inside another.
            if self._held_events is not None:
                raise RuntimeError(f"{command.words()} from inside a step would re-enter it")
            self._step(command)
        elif not self.running:
            raise CommandRefused("the loop has stopped; start pairlab again to go on")
        else:
            self.post(command)
        reply: Future = command.reply
        while True:
            try:
                return reply.result(timeout=0.5)
            except TimeoutError:
                if not self.running:
                    raise CommandRefused("the loop stopped before it could apply that")

    def _main(self) -> None:
        try:
            self.schedule()
            while True:
                try:
                    message = self.inbox.get(timeout=TICK_S)
                except queue.Empty:
                    message = None
                self._step(message)
                # a data check in flight is left to finish on its own: nothing to record
                if self.loop.stopping and not self.loop.runs and self.drafting.active is None:
                    break
        finally:
            self._finish()

    def emit(self, event: Event) -> None:
        """Events of the loop's state wait until the snapshot shows their message applied,
        so a subscriber that reads a getter on an event never reads the state before it.
        Streaming events from workers (log lines, reasoning) go out at once."""
        if self._held_events is not None and self.on_own_thread():
            self._held_events.append(event)
        else:
            self.emit_now(event)

    def _step(self, message) -> None:
        answer = None
        self._held_events = []
        try:
            if isinstance(message, Command):
                answer = self.apply_command(message)
            elif message is not None:
                self._apply(message)
            self.schedule()
        except Exception as exc:
            self.fail(exc, traceback.format_exc())
        try:
            self.publish()
        finally:
            held, self._held_events = self._held_events, None
            for event in held:
                self.emit_now(event)
            if answer is not None:
                answer()

    def _apply(self, message) -> None:
        if isinstance(message, workers.DraftDone):
            self.drafting.on_draft(message)
        elif isinstance(message, workers.RunDone):
            self.on_run(message)
        elif isinstance(message, workers.DataChecked):
            self.on_data(message)
        elif isinstance(message, ClientsAttached):
            self.loop.deciding_clients = message.deciding
        elif isinstance(message, workers.WorkerFailed):
            if message.worker is workers.Worker.TRAINER:
                self.loop.runs.pop(message.slot, None)
            elif message.worker is workers.Worker.DRAFTER:
                self.drafting.active = None
            else:
                self.loop.checking_data = False
            self.fail(message.error, message.trace)

    def fail(self, exc: BaseException, trace: str) -> None:
        """An unexpected error stops the loop with a message; the journal keeps everything."""
        full = disk_full_error(exc)
        if full is not None:
            message = (f"disk full: no space left on the device of {self.workspace.root} "
                       f"({full}); pairlab stopped the loop")
            hint = ("free some space there, then start pairlab again: it resumes where it "
                    "stopped, and nothing already recorded is lost")
            reason = Failure.DISK_FULL
        else:
            message = f"internal error: {type(exc).__name__}: {exc}"
            hint = ("the loop is stopped; the journal keeps everything. Please report this "
                    "with .pairlab/engine.log")
            reason = Failure.INTERNAL
            try:
                with (self.workspace.pairlab_dir / "engine.log").open("a") as log:
                    log.write(trace)
            except OSError:
                pass
        if not isinstance(self.loop.stop_reason, Failure):   # told once
            try:
                self.journal.add_notice("error", message, hint)
            except Exception:                 # the journal may be on the full disk
                pass
            self.emit(Notice("error", message, hint))
        self.request_stop(reason, failed=True)

    def halt(self, reason: str, message: str, fix: str) -> None:
        """The loop cannot go on until the user does `fix`: an error notice, then a pause
        for the human, or, with nobody to press a key, a stop with a non-zero exit
        (planner.unattended). Nothing recorded is lost either way."""
        if planner.unattended(self.loop.mode, self.loop.deciding_clients):
            self.notice("error", message, f"{fix}, then start pairlab again: it resumes "
                                          "where it stopped")
            self.request_stop(f"{reason} (auto mode, no app attached: nobody to resume)",
                              failed=True)
        else:
            self.notice("error", message, f"{fix}, then press p to resume")
            self.pause(reason)

    def request_stop(self, reason: str, failed: bool = False) -> None:
        loop = self.loop
        loop.failed = loop.failed or failed
        if loop.stopping:
            if isinstance(reason, Failure):   # a failure outranks the stop it interrupts
                loop.stop_reason = reason
            return
        loop.stopping, loop.stop_reason = True, reason
        if self.drafting.active is not None:
            self.drafting.active.cancel.set()
        for active in loop.runs.values():
            active.runner.kill()

    def _finish(self) -> None:
        while True:                            # nobody may wait for a reply that never comes
            try:
                message = self.inbox.get_nowait()
            except queue.Empty:
                break
            if isinstance(message, Command) and not message.reply.done():
                message.reply.set_exception(CommandRefused("the loop has stopped"))
        try:
            summary = self.summary()
        except Exception as exc:
            summary = f"(no summary: {exc})"
        try:
            self.worktrees.remove_all()
        except Exception:                      # the next start removes what is left
            pass
        self._shown = None
        self.snapshot = replace(self.snapshot, state="stopped", detail=self.loop.stop_reason,
                                failed=self.loop.failed,
                                runs=(), best=self.best(), total_cost=self.journal.total_cost(),
                                noise_floor=self.journal.get_state("noise_floor"))
        self.emit(StateChanged("stopped", self.loop.stop_reason))
        self.emit(SessionStopped(self.loop.stop_reason, summary, failed=self.loop.failed))

    # ------------------------------------------------------------------ what to start

    def view(self) -> planner.LoopView:
        loop = self.loop
        rows = self.journal.run_rows()
        values = [r for r in rows if r["kind"] in (RunKind.BASELINE, RunKind.NOISE)
                  and r["val_bpb"] is not None and r["status"] in ("keep", "discard")]
        return planner.LoopView(
            stopping=loop.stopping, paused=loop.paused, data_ready=loop.data_ready,
            slots=len(self.slots),
            in_flight=tuple(active.plan for _, active in sorted(loop.runs.items())),
            drafting=self.drafting.active is not None,
            best_commit=self.program.measured_commit(),
            has_baseline=any(r["kind"] == RunKind.BASELINE for r in values),
            noise_samples=len(values), noise_repeats=max(0, self.settings.noise_repeats),
            awaiting=tuple(planner.Awaiting(j.proposal_id, j.commit, j.need)
                           for j in loop.judging.values() if j.need != Need.HUMAN),
            best_rerun_due=keep_rule.should_rerun_best(self.evidence.runs_since_best_ran(),
                                                       self.evidence.rules().keep),
            queue=tuple(loop.queue), pending=len(loop.review),
            speculate=self.speculation.speculating,
            unspeculated=self.speculation.unspeculated(),
            drafts_ahead=self.drafts_ahead(),
            experiments_done=self.journal.experiment_count(),
            max_experiments=self.settings.max_experiments,
            draft_allowed_at=self.drafting.allowed_at, now=time.time(),
            ladder=self.promoting.ladder_view())

    def drafts_ahead(self) -> int:
        """Proposals kept ready: the setting, and one more for each extra slot to feed."""
        ahead = self.settings.drafts_ahead
        return ahead + len(self.slots) - 1 if ahead > 0 else ahead

    def schedule(self) -> None:
        loop = self.loop
        if loop.stopping:
            return
        if not loop.data_ready and not loop.checking_data and not loop.paused:
            loop.checking_data = True
            data_dir = loop.data_dir
            first_check = self.first_start_check()
            workers.start(workers.Worker.DATA, self.post,
                          lambda: workers.check_data(data_dir, self.emit, first_check))
        self.check_caps()
        self.program.commit_program_edit()
        if planner.preempts(self.view()):
            self.promoting.preempt_promotion()
        for _ in range(8 + len(self.slots)):  # a stale proposal makes room for the next plan
            plan = planner.next_run(self.view())
            if plan is None:
                break
            self.start_run(plan)
        if planner.should_draft(self.view()):
            self.drafting.start_draft()

    def first_start_check(self):
        """`pairlab doctor`'s pipeline check, for a workspace that has trained nothing yet
        (its first start, or a restart after that check failed)."""
        if not self.settings.first_start_check or self.journal.run_count() > 0:
            return None
        workspace, settings = self.workspace, self.settings
        return lambda data_dir: doctor.pipeline_check(doctor.target_of(
            workspace, replace(settings, data_dir=data_dir)))

    def check_caps(self) -> None:
        s = self.settings
        if self.loop.runs:
            return
        reason = ""
        if planner.cap_stop(self.view()):
            reason = f"reached --max-experiments {s.max_experiments}"
        elif s.max_cost is not None and self.journal.total_cost() >= s.max_cost:
            reason = f"reached --max-cost ${s.max_cost:.2f}"
        elif s.max_hours is not None and time.time() - self.started_at >= s.max_hours * 3600:
            reason = f"reached --max-hours {s.max_hours:g}"
        if reason:
            self.request_stop(reason)

    # ------------------------------------------------------------------ what readers see

    def best(self) -> tuple[str, float] | None:
        best = self.journal.best()
        return (best.commit, best.val_bpb) if best else None

    def notice(self, level: str, message: str, hint: str = "") -> None:
        self.journal.add_notice(level, message, hint)
        self.emit(Notice(level, message, hint))

    def publish(self) -> None:
        loop = self.loop
        drafting = self.drafting.agent.name if self.drafting.active is not None else None
        state, detail = describe(self.loop, drafting)
        props = loop.proposals
        self.snapshot = Snapshot(
            state=state, detail=detail, mode=loop.mode, paused=loop.paused, best=self.best(),
            noise_floor=self.journal.get_state("noise_floor"),
            total_cost=self.journal.total_cost(),
            runs=tuple(copy.deepcopy(active.started) for _, active in sorted(loop.runs.items())),
            # Held wins wait for a human too: they are in the review queue, marked held.
            pending=tuple(copy.deepcopy(props[i]) for i in loop.review + [
                j.proposal_id for j in loop.judging.values() if j.need == Need.HUMAN]),
            queued=tuple(copy.deepcopy(props[i]) for i in loop.queue),
            open=tuple(copy.deepcopy(p) for p in props.values()))
        if (state, detail) != self._shown:
            self._shown = (state, detail)
            self.emit(StateChanged(state, detail))

    def summary(self) -> str:
        parts = [self.journal.summary_line()]
        baseline = next((r["val_bpb"] for r in self.journal.run_rows()
                         if r["kind"] == RunKind.BASELINE and r["val_bpb"] is not None), None)
        best = self.best()
        if best and baseline is not None:
            parts.append(f"val_bpb {baseline:.6f} -> {best[1]:.6f} "
                         f"({best[1] - baseline:+.6f}) at {best[0][:7]}")
        parts.append(f"cost ${self.journal.total_cost():.2f}")
        return "; ".join(parts)

