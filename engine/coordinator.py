"""The coordinator: the one thread that owns the loop's state, git and the journal.

It takes messages from its inbox one at a time (client commands, worker results), applies
each, then asks the planner what to start and publishes an immutable snapshot for readers.
Nothing else changes proposals, moves the research branch or writes the journal, so no lock
guards the loop's state and no reader ever waits on git. Modelled on Ray Tune's controller:
decisions are objects (planner plans, judge verdicts) the loop applies.

Run outcomes and the judge live in engine/outcomes.py, commands in engine/decisions.py.
"""

from __future__ import annotations

import copy
import errno
import queue
import threading
import time
import traceback
from concurrent.futures import Future
from pathlib import Path
from typing import Callable

from engine import patch, planner, workers
from engine.agents import make_agent
from engine.agents.base import Agent, DraftContext, HistoryItem
from engine.commands import Command, CommandRefused
from engine.decisions import DecisionsMixin
from engine.events import (DraftFailed, DraftStarted, Event, Notice, ProposalReady,
                           ProposalRebased, ProposalStale, SessionStopped, StateChanged)
from engine.journal import Journal
from engine.loop_state import ActiveDraft, Judging, LoopState, Snapshot
from engine.outcomes import OutcomesMixin
from engine.records import Decision, DecisionKind, Proposal, ProposalState, RunStatus
from engine.workspace import Workspace

# Unattended: this many agent failures in a row and auto mode falls back to the tuner.
AGENT_FAILURES_BEFORE_FALLBACK = 3
MAX_AGENT_BACKOFF_S = 300.0
TICK_S = 1.0                         # how often caps and backoffs are looked at when idle


class Coordinator(DecisionsMixin, OutcomesMixin):
    def __init__(self, workspace: Workspace, agent: Agent, settings, journal: Journal,
                 emit: Callable[[Event], None], on_trainer_pid=None):
        self.workspace = workspace
        self.agent = agent
        self.settings = settings
        self.journal = journal
        self.emit_now = emit
        self._held_events: list[Event] | None = None
        self.on_trainer_pid = on_trainer_pid
        self.inbox: queue.Queue = queue.Queue()
        self.loop = LoopState(mode=settings.mode, data_dir=settings.data_dir)
        self.snapshot = Snapshot(mode=settings.mode, best=self._best(),
                                 noise_floor=journal.get_state("noise_floor"))
        self.thread: threading.Thread | None = None
        self.started_at = time.time()
        self._shown: tuple[str, str] | None = None

    # ------------------------------------------------------------------ the loop

    def restore_and_publish(self) -> None:
        """On the caller's thread, before the loop thread exists: git matches the journal."""
        self.started_at = time.time()
        self.restore()
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
        if self.thread is None or self.on_own_thread():
            answer = self.apply_command(command)  # not started yet, or from a subscriber
            self.publish()
            answer()
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
                if self.loop.stopping and self.loop.run is None and self.loop.draft is None \
                        and not self.loop.checking_data:
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
            self.on_draft(message)
        elif isinstance(message, workers.RunDone):
            self.on_run(message)
        elif isinstance(message, workers.DataChecked):
            self.on_data(message)
        elif isinstance(message, workers.WorkerFailed):
            if message.worker == "trainer":
                self.loop.run = None
            elif message.worker == "drafter":
                self.loop.draft = None
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
            reason = "disk full"
        else:
            message = f"internal error: {type(exc).__name__}: {exc}"
            hint = ("the loop is stopped; the journal keeps everything. Please report this "
                    "with .pairlab/engine.log")
            reason = "internal error"
            try:
                with (self.workspace.pairlab_dir / "engine.log").open("a") as log:
                    log.write(trace)
            except OSError:
                pass
        if self.loop.stop_reason not in ("disk full", "internal error"):
            try:
                self.journal.add_notice("error", message, hint)
            except Exception:                 # the journal may be on the full disk
                pass
            self.emit(Notice("error", message, hint))
        self.request_stop(reason)

    def request_stop(self, reason: str) -> None:
        loop = self.loop
        if loop.stopping:
            if reason in ("disk full", "internal error"):
                loop.stop_reason = reason
            return
        loop.stopping, loop.stop_reason = True, reason
        if loop.draft is not None:
            loop.draft.cancel.set()
        if loop.run is not None:
            loop.run.runner.kill()

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
        self._shown = None
        self.snapshot = Snapshot(state="stopped", detail=self.loop.stop_reason,
                                 mode=self.loop.mode, paused=self.loop.paused,
                                 best=self._best(),
                                 noise_floor=self.journal.get_state("noise_floor"))
        self.emit(StateChanged("stopped", self.loop.stop_reason))
        self.emit(SessionStopped(self.loop.stop_reason, summary))

    # ------------------------------------------------------------------ what to start

    def view(self) -> planner.LoopView:
        loop = self.loop
        rows = self.journal.run_rows()
        values = [r for r in rows if r["kind"] in ("baseline", "noise")
                  and r["val_bpb"] is not None and r["status"] in ("keep", "discard")]
        return planner.LoopView(
            stopping=loop.stopping, paused=loop.paused, data_ready=loop.data_ready,
            running=loop.run is not None,
            running_experiment=loop.run is not None and loop.run.plan.kind == "experiment",
            drafting=loop.draft is not None, best_commit=self.best_commit(),
            has_baseline=any(r["kind"] == "baseline" for r in values),
            noise_samples=len(values), noise_repeats=max(0, self.settings.noise_repeats),
            awaiting=tuple(planner.Awaiting(j.proposal_id, j.commit, j.need)
                           for j in loop.judging.values() if j.need != "human"),
            queue=tuple(loop.queue), pending=len(loop.review),
            drafts_ahead=self.settings.drafts_ahead,
            experiments_done=self.journal.experiment_count(),
            max_experiments=self.settings.max_experiments,
            draft_allowed_at=loop.draft_allowed_at, now=time.time())

    def schedule(self) -> None:
        loop = self.loop
        if loop.stopping:
            return
        if not loop.data_ready and not loop.checking_data and not loop.paused:
            loop.checking_data = True
            data_dir = loop.data_dir
            workers.start("data", self.post, lambda: workers.check_data(data_dir, self.emit))
        self.check_caps()
        for _ in range(8):                    # a stale proposal makes room for the next plan
            plan = planner.next_run(self.view())
            if plan is None or self.start_run(plan):
                break
        if planner.should_draft(self.view()):
            self.start_draft()

    def check_caps(self) -> None:
        s = self.settings
        if self.loop.run is not None:
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

    # ------------------------------------------------------------------ drafting

    def start_draft(self) -> None:
        loop = self.loop
        base_commit = self.best_commit()
        base_files = self.base_files(base_commit)
        draft_id = self.journal.next_proposal_id()
        notes = self.journal.open_notes()
        feedback, loop.feedback = loop.feedback, []
        steering = [f"A steering note from the human: {text}" for _, text in notes]
        best = self.snapshot.best
        ctx = DraftContext(
            workspace=self.workspace.root, targets=list(self.workspace.config.targets),
            files=base_files, base_commit=base_commit, program=self.workspace.program(),
            harness_source=_harness_source(), history=self.journal.history(limit=200),
            best_val_bpb=best[1] if best else None,
            noise_floor=self.journal.get_state("noise_floor"),
            validate=patch.validator(self.workspace, base_commit),
            feedback="\n\n".join(feedback + steering), in_flight=self.in_flight())
        cancel = threading.Event()
        loop.draft = ActiveDraft(draft_id, cancel, feedback)
        self.emit(DraftStarted(draft_id, self.agent.name, base_commit))
        agent, note_ids = self.agent, tuple(i for i, _ in notes)
        workers.start("drafter", self.post, lambda: workers.draft(
            agent, ctx, draft_id, cancel, self.workspace, self.emit, note_ids))

    def on_draft(self, done: workers.DraftDone) -> None:
        loop = self.loop
        active, loop.draft = loop.draft, None
        if done.cancelled or loop.stopping or done.draft is None and done.error is None:
            if active:
                loop.feedback = active.feedback + loop.feedback
            return
        if done.error is not None:
            loop.feedback = active.feedback + loop.feedback
            self.emit(DraftFailed(done.draft_id, done.error.message))
            self.agent_failed(done.error)
            return
        loop.agent_failures = 0
        if done.refused:
            loop.feedback = active.feedback + loop.feedback
            self.emit(DraftFailed(done.draft_id, done.refused))
            self.notice("warning", f"the agent's patch was refused: {done.refused}")
            return
        draft = done.draft
        new_files = {**done.base_files, **draft.files}
        proposal = Proposal(
            id=done.draft_id, description=draft.description, hypothesis=draft.hypothesis,
            diff=done.diff, base_commit=done.base_commit, agent=done.agent,
            files={p: t for p, t in new_files.items() if t != done.base_files.get(p)},
            reasoning=draft.reasoning, usage=draft.usage, created_at=time.time())
        self.journal.add_proposal(proposal, done.note_ids)
        loop.proposals[proposal.id] = proposal
        loop.review.append(proposal.id)
        best_commit = self.best_commit()
        if best_commit != proposal.base_commit and not self.rebase(proposal, best_commit):
            return
        self.emit(ProposalReady(copy.deepcopy(proposal)))
        # a client may have decided it already, from a subscriber of ProposalReady
        if loop.mode == "auto" and proposal.id in loop.review:
            self.decide(proposal.id, Decision(proposal.id, DecisionKind.ACCEPT, "auto"))

    def agent_failed(self, error) -> None:
        """Review mode pauses for the human; auto mode retries, then falls back to the tuner."""
        loop = self.loop
        if loop.mode != "auto":
            self.notice("error", error.message, error.hint or "press p to resume when fixed")
            self.pause(f"agent error: {error.message}")
            return
        loop.agent_failures += 1
        if loop.agent_failures >= AGENT_FAILURES_BEFORE_FALLBACK and self.agent.name != "tuner":
            failed = self.agent.name
            self.agent = make_agent("tuner", device=self.settings.device or "cpu")
            loop.agent_failures = 0
            loop.draft_allowed_at = 0.0
            self.notice("warning", f"the {failed} agent failed {AGENT_FAILURES_BEFORE_FALLBACK} "
                        f"times in a row (last: {error.message}); pairlab switched to the "
                        f"offline tuner so the loop goes on",
                        "restart pairlab to use that agent again once it is fixed")
            return
        backoff = min(MAX_AGENT_BACKOFF_S,
                      self.settings.agent_backoff_s * 2 ** (loop.agent_failures - 1))
        loop.draft_allowed_at = time.time() + backoff
        self.notice("warning", f"{error.message} (agent failure {loop.agent_failures} in a "
                    f"row); retrying in {backoff:g}s", error.hint)

    def in_flight(self) -> list[HistoryItem]:
        """Proposals waiting, queued, training or being judged: not to be proposed again."""
        loop = self.loop
        return [HistoryItem(description=p.description, hypothesis=p.hypothesis,
                            status=p.state.value, diff=p.diff)
                for p in loop.proposals.values()]

    # ------------------------------------------------------------------ rebasing

    def base_files(self, commit: str) -> dict[str, str]:
        return self.workspace.files_at(commit)

    def rebase_open_proposals(self, new_best: str) -> None:
        for proposal_id in self.loop.review + self.loop.queue:
            proposal = self.loop.proposals[proposal_id]
            if proposal.base_commit != new_best:
                self.rebase(proposal, new_best)

    def rebase(self, proposal: Proposal, new_base: str) -> bool:
        """Move a proposal onto the new best (3-way); if it no longer applies, it is stale."""
        new_base_files = self.base_files(new_base)
        rebased = patch.rebase(proposal.files, self.base_files(proposal.base_commit),
                               new_base_files)
        if rebased is not None:
            try:
                diff = patch.validate_change(self.workspace, new_base, new_base_files,
                                             {**new_base_files, **rebased})
            except patch.PatchRefused:
                rebased = None
        loop = self.loop
        if rebased is None:
            for waiting in (loop.review, loop.queue):
                if proposal.id in waiting:
                    waiting.remove(proposal.id)
            loop.proposals.pop(proposal.id, None)
            proposal.state = ProposalState.STALE
            self.journal.set_proposal_state(proposal.id, proposal.state)
            loop.feedback.append(f"Your proposal {proposal.id} ({proposal.description}) no "
                                 "longer applies: the best train.py changed under it. Draft "
                                 "again against the current train.py.")
            self.emit(ProposalStale(proposal.id, "no longer applies to the new best "
                                                 "(conflict); sent back for a redraft"))
            return False
        proposal.files, proposal.diff, proposal.base_commit = rebased, diff, new_base
        self.journal.update_proposal(proposal)
        self.emit(ProposalRebased(proposal.id, new_base, proposal.diff))
        return True

    # ------------------------------------------------------------------ restore after a crash

    def restore(self) -> None:
        """Make git match the journal and pick up where a killed engine stopped."""
        loop = self.loop
        for run in self.journal.interrupted_runs():
            again = "; it trains again now" if run.proposal_id is not None or \
                run.decided_by in ("baseline", "noise") else ""
            self.notice("warning", f"run {run.run_id} ({run.description}) was interrupted "
                        f"when the engine stopped{again}", "nothing recorded was lost")
        best = self._best()
        if best:
            head = self.workspace.head()
            if head != best[0]:
                # e.g. the engine died between committing an experiment and starting its run
                self.notice(
                    "warning", f"the research branch stood at {head[:7]}, a commit with no "
                    f"result in the journal: pairlab reset it to the best kept commit "
                    f"{best[0][:7]}; an accepted proposal that had not trained yet trains now",
                    f"nothing recorded was lost; to keep that commit anyway: "
                    f"`git branch keep-{head[:7]} {head[:7]}`")
            self.protect_human_changes("pairlab restored the research branch")
            self.workspace.reset_to(best[0])
        loop.start_commit = self.workspace.head()
        mode = self.journal.get_state("mode")
        if mode in ("review", "auto") and self.settings.mode == "review":
            loop.mode = mode
        for proposal in self.journal.pending_proposals():
            loop.proposals[proposal.id] = proposal
            (loop.queue if proposal.state is ProposalState.ACCEPTED else loop.review).append(
                proposal.id)
        for row in self.journal.run_rows():
            held = row["status"] == RunStatus.HELD.value
            if row["kind"] == "experiment" and (held or row["status"] ==
                                                RunStatus.CONFIRMING.value):
                proposal = self.journal.get_proposal(row["proposal_id"])
                loop.proposals[proposal.id] = proposal
                need = "human" if held else self.need_of(row["proposal_id"])
                loop.judging[proposal.id] = Judging(proposal.id, row["id"], row["commit_sha"],
                                                    need)
        if best:
            self.rebase_open_proposals(best[0])

    def protect_human_changes(self, reason: str) -> None:
        saved = self.workspace.save_human_changes(reason)
        if saved:
            self.notice("warning", f"your uncommitted changes to {', '.join(saved.paths)} "
                        f"were saved as a git stash ({saved.commit[:7]}) before {reason}",
                        "get them back with `git stash pop` in the workspace")

    # ------------------------------------------------------------------ what readers see

    def _best(self) -> tuple[str, float] | None:
        best = self.journal.best()
        return (best.commit, best.val_bpb) if best else None

    def best_commit(self) -> str:
        best = self.snapshot.best
        return best[0] if best else self.loop.start_commit

    def notice(self, level: str, message: str, hint: str = "") -> None:
        self.journal.add_notice(level, message, hint)
        self.emit(Notice(level, message, hint))

    def describe(self) -> tuple[str, str]:
        """The loop's state in words: what the status line shows."""
        loop = self.loop
        held = [j.proposal_id for j in loop.judging.values() if j.need == "human"]
        if loop.stopping:
            return "stopping", loop.stop_reason
        if loop.paused:
            return "paused", loop.pause_reason
        if loop.run is not None:
            started = loop.run.started
            return ("training" if started.proposal_id is not None else "baseline",
                    started.description)
        if loop.review or held:
            waiting = [f"{len(loop.review)} waiting for review"] if loop.review else []
            waiting += [f"#{i} held: unusually large win" for i in held]
            return "reviewing", ", ".join(waiting)
        if loop.draft is not None:
            return "drafting", self.agent.name
        if loop.checking_data:
            return "preparing", "checking the training data"
        return "idle", ""

    def publish(self) -> None:
        loop = self.loop
        state, detail = self.describe()
        props = loop.proposals
        self.snapshot = Snapshot(
            state=state, detail=detail, mode=loop.mode, paused=loop.paused, best=self._best(),
            noise_floor=self.journal.get_state("noise_floor"),
            current_run=copy.deepcopy(loop.run.started) if loop.run else None,
            pending=tuple(copy.deepcopy(props[i]) for i in loop.review),
            queued=tuple(copy.deepcopy(props[i]) for i in loop.queue),
            open=tuple(copy.deepcopy(p) for p in props.values()))
        if (state, detail) != self._shown:
            self._shown = (state, detail)
            self.emit(StateChanged(state, detail))

    def summary(self) -> str:
        parts = [self.journal.summary_line()]
        baseline = next((r["val_bpb"] for r in self.journal.run_rows()
                         if r["kind"] == "baseline" and r["val_bpb"] is not None), None)
        best = self._best()
        if best and baseline is not None:
            parts.append(f"val_bpb {baseline:.6f} -> {best[1]:.6f} "
                         f"({best[1] - baseline:+.6f}) at {best[0][:7]}")
        parts.append(f"cost ${self.journal.total_cost():.2f}")
        return "; ".join(parts)


def disk_full_error(exc: BaseException | None) -> BaseException | None:
    """The ENOSPC of a file write, SQLite's SQLITE_FULL or git failing for lack of space,
    also when it caused a later error (a failed ROLLBACK after a full COMMIT); else None."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return exc
        text = str(exc)
        if "database or disk is full" in text or "No space left on device" in text \
                or "Disk quota exceeded" in text:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _harness_source() -> str:
    from nanochat import harness
    return Path(harness.__file__).read_text()
