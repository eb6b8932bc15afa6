"""The research loop with a human in it: draft -> validate -> review -> commit -> run -> judge.

One public API that the TUI, `pairlab headless` and the tests all drive. Two threads do the
work so the accelerator never waits for the agent or for a human who is awake:

- the trainer thread runs the baseline (and the noise-floor repeats), then trains accepted
  proposals in order, each committed on the research branch on top of the current best;
- the drafter thread keeps `drafts_ahead` proposals ahead of the trainer, so the next patch
  is drafted (and can be reviewed) while the current one trains.

Every state change is written to the journal before it is announced, so a killed engine
resumes where it stopped.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from engine import patch
from engine.agents.base import Agent, AgentError, DraftCancelled, DraftContext, HistoryItem
from engine.events import (BestUpdated, DecisionMade, DraftFailed, DraftStarted, Event,
                           LiveLine, LogLines, ModeChanged, NoiseFloor, Notice, Preparing,
                           ProposalReady, ProposalRebased, ProposalStale, ReasoningDelta,
                           RunFinished, RunProgress, RunStarted, SessionStopped, StateChanged)
from engine.journal import Journal
from engine.monitor import Monitor
from engine.records import (Decision, DecisionKind, Experiment, Proposal, ProposalState,
                            RunResult, RunStatus)
from engine.runner import Runner
from engine.workspace import Workspace

MODES = ("review", "auto")
# A result this much better than the best is a keep; equal within float noise is not.
MIN_IMPROVEMENT = 1e-9


@dataclass
class SessionSettings:
    mode: str = "review"                  # review: each patch waits for a human; auto: none do
    budget_s: float = 300.0               # training seconds per run
    max_experiments: int | None = None    # experiments after the baseline, then stop
    max_cost: float | None = None         # USD of agent tokens, then stop
    max_hours: float | None = None        # wall-clock hours, then stop
    drafts_ahead: int = 1                 # proposals kept ready ahead of the trainer
    noise_repeats: int = 2                # extra baseline runs to measure the noise floor
    rerun_small_wins: bool = True         # re-run a win smaller than the noise floor
    device: str | None = None             # cpu | cuda | mps; None: the harness decides
    max_steps: int | None = None          # fixed steps instead of the time budget
    hard_timeout_s: float | None = None   # None: budget * 2 + grace
    data_dir: Path | None = None          # prepared dataset; None: the default one
    extra_env: dict[str, str] = field(default_factory=dict)


class Session:
    def __init__(self, workspace: Workspace, agent: Agent, settings: SessionSettings,
                 journal: Journal | None = None, monitor: bool = True):
        if settings.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {settings.mode!r}")
        self.workspace = workspace
        self.agent = agent
        self.settings = settings
        self.journal = journal or Journal(workspace.pairlab_dir / "journal.db")
        self._subscribers: list[Callable[[Event], None]] = []
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._cancel_draft = threading.Event()
        self._threads: list[threading.Thread] = []
        self._mode = settings.mode
        self._paused = False
        self._pause_reason = ""
        self._state = "starting"
        self._proposals: dict[int, Proposal] = {}
        self._review: list[int] = []          # pending proposals, oldest first
        self._queue: list[int] = []           # accepted, waiting for the trainer
        self._drafting = False
        self._baseline_done = False
        self._runner: Runner | None = None
        self._current_run: RunStarted | None = None
        self._started_at = time.time()
        self._stop_reason = ""
        self._data_checksum: str | None = None
        self._feedback = ""                   # told to the agent with its next draft
        self._up_next: int | None = None      # taken from the queue, about to train
        self._start_commit = ""               # the branch head when the loop started
        self._monitor = Monitor(interval=1.0, on_sample=self._emit) if monitor else None

    # ------------------------------------------------------------------ construction

    @classmethod
    def open(cls, workspace_dir: Path | str | None, agent_name: str = "auto",
             settings: SessionSettings | None = None, model: str | None = None) -> "Session":
        """Open (or create) a workspace and make the session with the named agent."""
        from engine.agents import make_agent
        from engine.workspace import open_or_init
        workspace = open_or_init(workspace_dir)
        config = workspace.config
        settings = settings or SessionSettings(
            mode=config.mode, budget_s=config.budget_s, drafts_ahead=config.drafts_ahead,
            noise_repeats=config.noise_repeats, device=config.device)
        agent = make_agent(agent_name, device=settings.device or "cpu", model=model)
        return cls(workspace, agent, settings)

    # ------------------------------------------------------------------ events

    def subscribe(self, callback: Callable[[Event], None]) -> None:
        self._subscribers.append(callback)

    def _emit(self, event: Event) -> None:
        for callback in list(self._subscribers):
            try:
                callback(event)
            except Exception as exc:          # a broken subscriber must not stop the loop
                print(f"pairlab: event subscriber failed: {exc!r}", file=sys.stderr)

    def _set_state(self, state: str, detail: str = "") -> None:
        with self._lock:
            if self._state == state and not detail:
                return
            self._state = state
        self._emit(StateChanged(state, detail))

    def _notice(self, level: str, message: str, hint: str = "") -> None:
        self.journal.add_notice(level, message, hint)
        self._emit(Notice(level, message, hint))

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._started_at = time.time()
        self._restore()
        self._emit(ModeChanged(self._mode))
        if self._monitor:
            self._monitor.start()
        for name, target in (("trainer", self._trainer_loop), ("drafter", self._drafter_loop)):
            thread = threading.Thread(target=self._guarded(target), name=f"pairlab-{name}",
                                      daemon=True)
            self._threads.append(thread)
            thread.start()

    def _guarded(self, target: Callable[[], None]) -> Callable[[], None]:
        """An unexpected error in a loop thread pauses the loop with a message; never dies silently."""
        def run():
            try:
                target()
            except Exception as exc:
                full = _disk_full_error(exc)
                if full is not None:
                    self._stop_for_full_disk(full)
                    return
                import traceback
                self._notice("error", f"internal error in {threading.current_thread().name}: "
                             f"{type(exc).__name__}: {exc}",
                             "the loop is stopped; the journal keeps everything. Please report "
                             "this with .pairlab/engine.log")
                (self.workspace.pairlab_dir / "engine.log").open("a").write(
                    traceback.format_exc())
                self._request_stop("internal error")
        return run

    def _stop_for_full_disk(self, exc: Exception) -> None:
        """No space left: stop before anything half-written. Everything the journal holds
        stays; a run cut off here is marked interrupted and trains again on the next start."""
        message = (f"disk full: no space left on the device of {self.workspace.root} "
                   f"({exc}); pairlab stopped the loop")
        hint = ("free some space there, then start pairlab again: it resumes where it "
                "stopped, and nothing already recorded is lost")
        if self._stop_reason != "disk full":  # the other loop thread may have said it already
            try:
                self.journal.add_notice("error", message, hint)
            except Exception:                 # the journal is on the full disk too
                pass
            self._emit(Notice("error", message, hint))
        self._request_stop("disk full")
        if threading.current_thread().name == "pairlab-trainer":
            self._finish()                    # the trainer's loop ended before its _finish

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the loop stops by itself (a cap was reached). True if it stopped."""
        deadline = None if timeout is None else time.time() + timeout
        for thread in self._threads:
            remaining = None if deadline is None else max(0.0, deadline - time.time())
            thread.join(remaining)
        return not any(t.is_alive() for t in self._threads)

    def stop(self, timeout: float = 15.0) -> None:
        """Stop cleanly: kill the run in flight, cancel drafting, leave git matching the journal."""
        self._request_stop("stopped by the user")
        self.wait(timeout)
        if self._monitor:
            self._monitor.stop()

    def _request_stop(self, reason: str) -> None:
        with self._lock:
            if self._stopping.is_set():
                return
            self._stop_reason = reason
            self._stopping.set()
            self._cancel_draft.set()
            runner = self._runner
            self._wake.notify_all()
        if runner:
            runner.kill()

    @property
    def stopped(self) -> bool:
        return self._stopping.is_set()

    # ------------------------------------------------------------------ the user's controls

    def accept(self, proposal_id: int) -> None:
        self._decide(proposal_id, Decision(proposal_id, DecisionKind.ACCEPT, "human"))

    def veto(self, proposal_id: int, reason: str) -> None:
        reason = reason.strip()
        self._decide(proposal_id, Decision(proposal_id, DecisionKind.VETO, "human",
                                           reason=reason or "no reason given"))

    def edit(self, proposal_id: int, files: dict[str, str]) -> None:
        """The human's version of the files replaces the agent's; validated like any patch."""
        with self._lock:
            proposal = self._pending_proposal(proposal_id)
            base_files = self._base_files(proposal.base_commit)
            new_files = {**proposal.files, **files}
            diff = patch.validate_change(self.workspace, proposal.base_commit, base_files,
                                         new_files)
            # Against the agent's version of every target, so a target the agent left
            # alone shows only the human's lines, not the whole file as added.
            human_delta = patch.unified_diff({**base_files, **proposal.files}, new_files)
            proposal.files = {path: text for path, text in new_files.items()
                              if text != base_files.get(path)}
            proposal.diff = diff
            # The next draft is usually made while this one trains, before the journal's
            # history has its result: tell the agent about the edit now.
            self._add_feedback(f"the human edited your proposal {proposal_id} "
                               f"({proposal.description}) before it ran; it trains with "
                               f"their changes:\n```diff\n{human_delta}```")
        self._decide(proposal_id, Decision(proposal_id, DecisionKind.EDIT, "human",
                                           edited_diff=human_delta))

    def pause(self, reason: str = "paused by the user") -> None:
        with self._lock:
            self._paused = True
            self._pause_reason = reason
            self._wake.notify_all()
        self._set_state("paused", reason)

    def resume(self) -> None:
        with self._lock:
            self._paused = False
            self._pause_reason = ""
            self._wake.notify_all()
        self._refresh_state()

    def kill_run(self) -> bool:
        with self._lock:
            runner = self._runner
        if runner is None:
            return False
        runner.kill()
        return True

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        with self._lock:
            self._mode = mode
            self.journal.set_state("mode", mode)
            waiting = list(self._review) if mode == "auto" else []
        self._emit(ModeChanged(mode))
        for proposal_id in waiting:
            self._decide(proposal_id, Decision(proposal_id, DecisionKind.ACCEPT, "auto"))

    # ------------------------------------------------------------------ snapshots

    @property
    def state(self) -> str:
        return self._state

    @property
    def mode(self) -> str:
        return self._mode

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def best(self) -> tuple[str, float] | None:
        """(commit, val_bpb) of the best kept run: the commit the research branch stands on."""
        best = self.journal.best()
        return (best.commit, best.val_bpb) if best else None

    @property
    def noise_floor(self) -> float | None:
        return self.journal.get_state("noise_floor")

    @property
    def total_cost(self) -> float:
        return self.journal.total_cost()

    @property
    def current_run(self) -> RunStarted | None:
        return self._current_run

    def pending(self) -> list[Proposal]:
        with self._lock:
            return [self._proposals[i] for i in self._review]

    def queued(self) -> list[Proposal]:
        with self._lock:
            return [self._proposals[i] for i in self._queue]

    def proposal(self, proposal_id: int) -> Proposal:
        with self._lock:
            if proposal_id in self._proposals:
                return self._proposals[proposal_id]
        proposal = self.journal.get_proposal(proposal_id)
        if proposal is None:
            raise KeyError(f"no proposal {proposal_id}")
        return proposal

    def proposal_text(self, proposal_id: int, path: str) -> str:
        proposal = self.proposal(proposal_id)
        if path in proposal.files:
            return proposal.files[path]
        return self.workspace.file_at(proposal.base_commit, path)

    def experiments(self) -> list[Experiment]:
        return self.journal.experiments()

    def log_path(self, experiment_id: int) -> Path:
        for experiment in self.journal.experiments():
            if experiment.id == experiment_id:
                return Path(experiment.log_path)
        raise KeyError(f"no experiment {experiment_id}")

    # ------------------------------------------------------------------ decisions

    def _pending_proposal(self, proposal_id: int) -> Proposal:
        if proposal_id not in self._review:
            state = self._proposals[proposal_id].state.value if proposal_id in \
                self._proposals else "unknown"
            raise KeyError(f"proposal {proposal_id} is not waiting for review ({state})")
        return self._proposals[proposal_id]

    def _decide(self, proposal_id: int, decision: Decision) -> None:
        with self._lock:
            proposal = self._pending_proposal(proposal_id)
            decision.at = time.time()
            self.journal.record_decision(decision, proposal)   # sets the proposal's state
            self._review.remove(proposal_id)
            if decision.kind == DecisionKind.VETO:
                self._proposals.pop(proposal_id, None)
            else:
                self._queue.append(proposal_id)
            self._wake.notify_all()
        self._emit(DecisionMade(decision))
        self._refresh_state()

    # ------------------------------------------------------------------ restore after a crash

    def _restore(self) -> None:
        """Make git match the journal and pick up where a killed engine stopped."""
        for run in self.journal.interrupted_runs():
            again = "; it trains again now" if run.proposal_id is not None or \
                run.decided_by in ("baseline", "noise") else ""
            self._notice("warning", f"run {run.run_id} ({run.description}) was interrupted "
                         f"when the engine stopped{again}", "nothing recorded was lost")
        best = self.best
        if best:
            head = self.workspace.head()
            if head != best[0]:
                # e.g. the engine died between committing an experiment and starting its run
                self._notice(
                    "warning", f"the research branch stood at {head[:7]}, a commit with no "
                    f"result in the journal: pairlab reset it to the best kept commit "
                    f"{best[0][:7]}; an accepted proposal that had not trained yet trains now",
                    f"nothing recorded was lost; to keep that commit anyway: "
                    f"`git branch keep-{head[:7]} {head[:7]}`")
            self._protect_human_changes("pairlab restored the research branch")
            self.workspace.reset_to(best[0])
        # Read once here, before the loop threads exist: GitPython's Repo is not thread-safe
        # (two threads asking it at once can hang on its cat-file pipe).
        self._start_commit = self.workspace.head()
        self._baseline_done = len(self._baseline_values()) >= 1 + self.settings.noise_repeats
        mode = self.journal.get_state("mode")
        if mode in MODES and self.settings.mode == "review":
            self._mode = mode
        for proposal in self.journal.pending_proposals():
            self._proposals[proposal.id] = proposal
            if proposal.state is ProposalState.ACCEPTED:
                self._queue.append(proposal.id)
            else:
                self._review.append(proposal.id)
        if best:
            self._rebase_open_proposals(best[0])

    def _protect_human_changes(self, reason: str) -> None:
        saved = self.workspace.save_human_changes(reason)
        if saved:
            self._notice("warning", f"your uncommitted changes to {', '.join(saved.paths)} "
                         f"were saved as a git stash ({saved.commit[:7]}) before {reason}",
                         "get them back with `git stash pop` in the workspace")

    def _baseline_values(self) -> list[float]:
        return [r["val_bpb"] for r in self.journal.run_rows()
                if r["kind"] in ("baseline", "noise") and r["val_bpb"] is not None
                and r["status"] in (RunStatus.KEEP.value, RunStatus.DISCARD.value)]

    # ------------------------------------------------------------------ trainer

    def _trainer_loop(self) -> None:
        self._prepare_data()
        if not self._stopping.is_set() and not self._baseline_done:
            self._run_baseline()
        while not self._stopping.is_set():
            self._check_caps()
            with self._lock:
                while not self._stopping.is_set() and (self._paused or not self._queue):
                    self._wake.wait(0.5)
                    self._check_caps()
                if self._stopping.is_set():
                    break
                proposal = self._proposals[self._queue.pop(0)]
                self._up_next = proposal.id
            try:
                self._train_proposal(proposal)
            finally:
                with self._lock:
                    self._up_next = None
        self._finish()

    def _prepare_data(self) -> None:
        from nanochat import prepare
        if self.settings.data_dir is None and os.environ.get("PAIRLAB_DATA_DIR"):
            self.settings.data_dir = Path(os.environ["PAIRLAB_DATA_DIR"])
        if self.settings.data_dir is None:
            self._set_state("preparing", "data and tokenizer")
            try:
                self.settings.data_dir = prepare.prepare_dataset(
                    progress=lambda stage, fraction: self._emit(Preparing(stage, fraction)))
            except prepare.PrepareError as exc:
                self._notice("error", f"could not prepare the training data: {exc}",
                             "run `pairlab prepare` to see the details, or `pairlab prepare "
                             "--text FILE...` to use your own text")
                self._request_stop("no training data")
                return
        # Missing or corrupt data would crash every run, or worse, change the metric: pause
        # until the user rebuilds it, then check again.
        while not self._stopping.is_set():
            problem = _data_problem(Path(self.settings.data_dir))
            if problem is None:
                break
            self._notice("error", problem, "rebuild it with `pairlab prepare --force` (with "
                         "your own text: `pairlab prepare --text FILE... --force`), then "
                         "press p to resume")
            self.pause("the training data is missing or corrupt")
            with self._lock:
                while self._paused and not self._stopping.is_set():
                    self._wake.wait(0.5)
        meta = Path(self.settings.data_dir) / "meta.json"
        self._data_checksum = json.loads(meta.read_text())["checksum"] if meta.is_file() \
            else None

    def _run_baseline(self) -> None:
        """The unchanged train.py, once, then `noise_repeats` more times for the noise floor."""
        commit = self.best[0] if self.best else self._start_commit
        wanted = 1 + max(0, self.settings.noise_repeats)
        while not self._stopping.is_set():
            done = len(self._baseline_values())
            if done >= wanted:
                break
            if self._paused:
                with self._lock:
                    self._wake.wait(0.5)
                continue
            kind = "baseline" if done == 0 else "noise"
            label = "baseline" if done == 0 else f"noise repeat {done} of {wanted - 1}"
            result = self._run(commit, kind, None, label)
            if result is None:
                return
            if result.val_bpb is None:
                self._notice("error", f"the {label} did not train: {result.message}",
                             "read its log, fix train.py or the data, then press p to resume")
                self.pause(f"the {label} failed")
        samples = self._baseline_values()
        if len(samples) > 1 and self.journal.get_state("noise_floor") is None:
            spread = max(samples) - min(samples)
            self.journal.set_state("noise_floor", spread)
            self._emit(NoiseFloor(spread, samples))
        with self._lock:
            self._baseline_done = True
            self._wake.notify_all()

    def _train_proposal(self, proposal: Proposal) -> None:
        best_commit, best_bpb = self.best
        if proposal.base_commit != best_commit and not self._rebase(proposal, best_commit):
            return
        self._protect_human_changes("pairlab committed the next experiment")
        decisions = self.journal.decisions(proposal.id)
        decision = decisions[-1] if decisions else None
        commit = self.workspace.commit_change(
            proposal.files, _commit_message(proposal, decision), parent=best_commit,
            human=decision is not None and decision.kind == DecisionKind.EDIT)
        with self._lock:
            proposal.state = ProposalState.TRAINING
        self._run(commit, "experiment", proposal.id, proposal.description, best_bpb)
        with self._lock:
            self._proposals.pop(proposal.id, None)
            self._wake.notify_all()

    def _run(self, commit: str, kind: str, proposal_id: int | None, description: str,
             best_bpb: float | None = None) -> RunResult | None:
        """Train `commit`, judge it, record it. None when the session is stopping."""
        ws = self.workspace
        run_id = f"run-{self.journal.run_count() + 1:04d}"
        env = dict(self.settings.extra_env)
        if self.settings.max_steps:
            env["PAIRLAB_MAX_STEPS"] = str(self.settings.max_steps)
        fingerprint = self.journal.get_state("eval_tokens")
        runner = Runner(
            ws.root, run_id, self.settings.budget_s, command=ws.config.command(), env=env,
            device=self.settings.device, data_dir=self.settings.data_dir,
            log_path=ws.logs_dir / f"{run_id}.log",
            result_path=ws.pairlab_dir / "runs" / run_id / "result.json",
            hard_timeout_s=self.settings.hard_timeout_s, metric_source=ws.config.metric_source,
            expected_eval_tokens=fingerprint, expected_checksum=self._data_checksum)
        with self._lock:
            if self._stopping.is_set():
                return None
            experiment_id = self.journal.start_run(
                run_id, commit, kind, proposal_id=proposal_id, description=description,
                log_path=str(runner.log_path))
            started = RunStarted(run_id, experiment_id, proposal_id, commit, description,
                                 self.settings.budget_s, str(runner.log_path))
            self._runner = runner
            self._current_run = started
        self._emit(started)
        self._refresh_state()
        result = runner.run(on_lines=lambda lines: self._emit(LogLines(run_id, lines)),
                            on_progress=lambda *p: self._emit(RunProgress(run_id, *p)),
                            on_start=self._monitor.set_trainer_pid if self._monitor else None,
                            on_live=lambda text: self._emit(LiveLine(run_id, text)))
        if self._monitor:
            self._monitor.set_trainer_pid(None)
        with self._lock:
            self._runner = None
            self._current_run = None
        if self._stopping.is_set() and result.status is RunStatus.KILLED:
            # The user quit mid-run: not judged; the journal re-queues it on the next start.
            result.status = RunStatus.INTERRUPTED
            result.message = "the engine was stopped during this run; it trains again next time"
            self.journal.finish_run(result)
            if proposal_id is not None:
                self.journal.set_proposal_state(proposal_id, ProposalState.ACCEPTED)
            if self.best:
                ws.reset_to(self.best[0])
            return None
        if result.val_bpb is not None and fingerprint is None:
            self.journal.set_state("eval_tokens", result.metrics.get("eval_tokens"))
        if kind == "experiment":
            result = self._judge(commit, result, best_bpb)
        elif kind != "baseline" and result.status is RunStatus.KEEP:
            result.status = RunStatus.DISCARD     # noise repeats and re-runs only measure
        experiment = self.journal.finish_run(result)
        ws.write_results_tsv(self.journal)
        if kind == "experiment":
            if result.status is RunStatus.KEEP:
                self._emit(BestUpdated(commit, result.val_bpb, experiment.id))
                self._rebase_open_proposals(commit)
            else:
                self._protect_human_changes("pairlab reset the research branch")
                ws.reset_to(self.best[0])
        elif kind == "baseline" and result.status is RunStatus.KEEP:
            self._emit(BestUpdated(commit, result.val_bpb, experiment.id))
        self._emit(RunFinished(experiment, result))
        self._refresh_state()
        return result

    def _judge(self, commit: str, result: RunResult, best_bpb: float) -> RunResult:
        """keep if val_bpb beats the best; a win inside the noise floor must hold on a re-run."""
        if result.status is not RunStatus.KEEP:       # runner: KEEP means "produced a metric"
            return result
        improvement = best_bpb - result.val_bpb
        if improvement <= MIN_IMPROVEMENT:
            result.status = RunStatus.DISCARD
            return result
        floor = self.journal.get_state("noise_floor")
        if floor and improvement < floor and self.settings.rerun_small_wins:
            self._notice("info", f"a win of {improvement:.6f} is inside the noise floor "
                         f"({floor:.6f}): re-running it to confirm")
            rerun = self._run(commit, "rerun", None, "re-run to confirm a small win")
            if rerun is None or rerun.val_bpb is None:
                result.status = RunStatus.DISCARD
                result.message = "the re-run to confirm a small win did not produce a metric"
                return result
            mean = (result.val_bpb + rerun.val_bpb) / 2
            result.metrics["first_val_bpb"] = result.val_bpb
            result.metrics["rerun_val_bpb"] = rerun.val_bpb
            result.val_bpb = mean
            if best_bpb - mean <= MIN_IMPROVEMENT:
                result.status = RunStatus.DISCARD
                result.message = (f"the small win did not hold on a re-run "
                                  f"(mean {mean:.6f} vs best {best_bpb:.6f})")
        return result

    def _check_caps(self) -> None:
        s = self.settings
        reason = ""
        if s.max_experiments is not None and self.journal.experiment_count() >= s.max_experiments:
            reason = f"reached --max-experiments {s.max_experiments}"
        elif s.max_cost is not None and self.total_cost >= s.max_cost:
            reason = f"reached --max-cost ${s.max_cost:.2f}"
        elif s.max_hours is not None and time.time() - self._started_at >= s.max_hours * 3600:
            reason = f"reached --max-hours {s.max_hours:g}"
        if reason:
            self._request_stop(reason)

    def _finish(self) -> None:
        self._cancel_draft.set()
        with self._lock:
            self._wake.notify_all()
        self._set_state("stopped", self._stop_reason)
        self._emit(SessionStopped(self._stop_reason, self.summary()))

    def summary(self) -> str:
        totals = self.journal.totals()
        baseline = self._baseline_values()
        best = self.best
        parts = [f"{totals.experiments} experiments: {totals.kept} kept, "
                 f"{totals.discarded} discarded, {totals.crashed} crashed, "
                 f"{totals.vetoed} vetoed"]
        if best and baseline:
            parts.append(f"val_bpb {baseline[0]:.6f} -> {best[1]:.6f} "
                         f"({best[1] - baseline[0]:+.6f}) at {best[0][:7]}")
        parts.append(f"cost ${totals.usage.cost_usd:.2f}")
        return "; ".join(parts)

    # ------------------------------------------------------------------ drafter

    def _drafter_loop(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                while not self._stopping.is_set() and not self._should_draft():
                    self._wake.wait(0.5)
                if self._stopping.is_set():
                    return
                self._drafting = True
                self._cancel_draft.clear()
            with self._lock:
                feedback, self._feedback = self._feedback, ""
            try:
                self._draft_one(feedback)
            finally:
                with self._lock:
                    self._drafting = False
                    self._wake.notify_all()
                self._refresh_state()

    def _should_draft(self) -> bool:
        """Keep `drafts_ahead` proposals ahead of the trainer; 0 drafts only when it is idle."""
        if self._paused:
            return False
        ahead = len(self._review) + len(self._queue)
        training = self._up_next is not None
        if self.settings.drafts_ahead <= 0:
            if ahead or self._up_next is not None or self._current_run is not None \
                    or not self._baseline_done:
                return False                  # sequential, like autoresearch
        elif ahead >= self.settings.drafts_ahead:
            return False
        cap = self.settings.max_experiments
        if cap is not None and self.journal.experiment_count() + ahead + training >= cap:
            return False
        return True

    def _draft_one(self, feedback: str = "") -> None:
        best = self.best
        base_commit = best[0] if best else self._start_commit
        base_files = self._base_files(base_commit)
        draft_id = self.journal.next_proposal_id()
        self._set_state("drafting", self.agent.name)
        self._emit(DraftStarted(draft_id, self.agent.name, base_commit))
        ctx = DraftContext(
            workspace=self.workspace.root, targets=list(self.workspace.config.targets),
            files=base_files, base_commit=base_commit, program=self.workspace.program(),
            harness_source=_harness_source(), history=self.journal.history(limit=200),
            best_val_bpb=best[1] if best else None, noise_floor=self.noise_floor,
            validate=lambda files: self._validation_error(base_commit, base_files, files),
            feedback=feedback, in_flight=self._in_flight())
        emit = lambda kind, text: self._emit(ReasoningDelta(draft_id, kind, text))  # noqa: E731
        try:
            draft = self.agent.draft(ctx, emit, self._cancel_draft)
        except DraftCancelled:
            return
        except AgentError as exc:
            self._emit(DraftFailed(draft_id, exc.message))
            self._notice("error", exc.message, exc.hint or "press p to resume when fixed")
            self.pause(f"agent error: {exc.message}")
            return
        try:
            new_files = {**base_files, **draft.files}
            diff = patch.validate_change(self.workspace, base_commit, base_files, new_files)
        except patch.PatchRefused as exc:
            self._emit(DraftFailed(draft_id, str(exc)))
            self._notice("warning", f"the agent's patch was refused: {exc}")
            return
        proposal = Proposal(
            id=draft_id, description=draft.description, hypothesis=draft.hypothesis,
            diff=diff, base_commit=base_commit, agent=self.agent.name,
            files={p: t for p, t in new_files.items() if t != base_files.get(p)},
            reasoning=draft.reasoning, usage=draft.usage, created_at=time.time())
        with self._lock:
            self.journal.add_proposal(proposal)
            self._proposals[proposal.id] = proposal
            self._review.append(proposal.id)
            auto = self._mode == "auto"
            now_best = self.best
        if now_best and now_best[0] != base_commit and not self._rebase(proposal, now_best[0]):
            return
        self._emit(ProposalReady(copy.deepcopy(proposal)))   # a rebase changes the live one
        if auto and proposal.id in self._review:
            self._decide(proposal.id, Decision(proposal.id, DecisionKind.ACCEPT, "auto"))

    def _validation_error(self, base_commit: str, base_files: dict[str, str],
                          files: dict[str, str]) -> str | None:
        try:
            patch.validate_change(self.workspace, base_commit, base_files,
                                  {**base_files, **files})
        except patch.PatchRefused as exc:
            return str(exc)
        return None

    def _in_flight(self) -> list[HistoryItem]:
        """Proposals waiting, queued or training: the agent must not propose them again."""
        with self._lock:
            ids = list(self._review) + list(self._queue) + \
                ([self._up_next] if self._up_next is not None else [])
            return [HistoryItem(description=p.description, hypothesis=p.hypothesis,
                                status=p.state.value, diff=p.diff)
                    for p in (self._proposals[i] for i in ids if i in self._proposals)]

    def _add_feedback(self, note: str) -> None:
        """Queue a note for the agent's next draft; notes pile up until a draft takes them."""
        with self._lock:
            self._feedback = f"{self._feedback}\n\n{note}" if self._feedback else note

    # ------------------------------------------------------------------ rebasing

    def _base_files(self, commit: str) -> dict[str, str]:
        return {path: self.workspace.file_at(commit, path)
                for path in self.workspace.config.targets}

    def _rebase_open_proposals(self, new_best: str) -> None:
        with self._lock:
            open_ids = list(self._review) + list(self._queue)
        for proposal_id in open_ids:
            proposal = self._proposals.get(proposal_id)
            if proposal and proposal.base_commit != new_best:
                self._rebase(proposal, new_best)

    def _rebase(self, proposal: Proposal, new_base: str) -> bool:
        """Move a proposal onto the new best (3-way); if it no longer applies, it is stale."""
        old_files = self._base_files(proposal.base_commit)
        new_base_files = self._base_files(new_base)
        rebased = patch.rebase(proposal.files, old_files, new_base_files)
        if rebased is not None:
            try:
                diff = patch.validate_change(self.workspace, new_base, new_base_files,
                                             {**new_base_files, **rebased})
            except patch.PatchRefused:
                rebased = None
        with self._lock:
            if rebased is None:
                reason = "no longer applies to the new best (conflict); sent back for a redraft"
                self._add_feedback(f"Your proposal {proposal.id} ({proposal.description}) no "
                                   "longer applies: the best train.py changed under it. Draft "
                                   "again against the current train.py.")
                for queue in (self._review, self._queue):
                    if proposal.id in queue:
                        queue.remove(proposal.id)
                proposal.state = ProposalState.STALE
                self.journal.set_proposal_state(proposal.id, proposal.state)
                self._proposals.pop(proposal.id, None)
                self._wake.notify_all()
            else:
                proposal.files = rebased
                proposal.diff = diff
                proposal.base_commit = new_base
                self.journal.update_proposal(proposal)
        if rebased is None:
            self._emit(ProposalStale(proposal.id, reason))
            return False
        self._emit(ProposalRebased(proposal.id, new_base, proposal.diff))
        return True

    # ------------------------------------------------------------------ state in words

    def _refresh_state(self) -> None:
        with self._lock:
            if self._stopping.is_set():
                return
            if self._paused:
                state, detail = "paused", self._pause_reason
            elif self._current_run is not None:
                state = "training" if self._current_run.proposal_id is not None else "baseline"
                detail = self._current_run.description
            elif self._review:
                state, detail = "reviewing", f"{len(self._review)} waiting for review"
            elif self._drafting:
                state, detail = "drafting", self.agent.name
            else:
                state, detail = "idle", ""
        if (state, detail) != (self._state, getattr(self, "_detail", None)):
            self._detail = detail
            self._set_state(state, detail)


def _commit_message(proposal: Proposal, decision: Decision | None) -> str:
    lines = [proposal.description.strip().splitlines()[0][:72] if proposal.description.strip()
             else f"proposal {proposal.id}", ""]
    if proposal.hypothesis:
        lines += [f"Hypothesis: {proposal.hypothesis.strip()}", ""]
    lines.append(f"pairlab-proposal: {proposal.id}")
    lines.append(f"pairlab-agent: {proposal.agent}")
    if decision and decision.kind == DecisionKind.EDIT:
        lines.append("pairlab-edited-by: human")
    return "\n".join(lines) + "\n"


def _data_problem(directory: Path) -> str | None:
    """What is wrong with a prepared dataset dir (contracts §1), in words; None if it is whole.

    Sizes against meta.json first (a truncated file says which), then the checksum prepare
    wrote, which the harness recomputes for every result."""
    from nanochat import prepare
    if not directory.is_dir():
        return f"there is no prepared training data at {directory}"
    names = ("meta.json", "tokenizer.pkl", "token_bytes.npy", "train.bin", "val.bin")
    missing = [name for name in names if not (directory / name).is_file()]
    if missing:
        return f"the training data at {directory} is incomplete: {', '.join(missing)} missing"
    try:
        meta = json.loads((directory / "meta.json").read_text())
        expected = {"train.bin": 2 * int(meta["train_tokens"]),
                    "val.bin": 2 * int(meta["val_tokens"])}
        checksum, version = str(meta["checksum"]), meta.get("format")
    except (ValueError, KeyError, TypeError, OSError) as exc:
        return f"the training data at {directory} has an unreadable meta.json ({exc})"
    if version != prepare.FORMAT:
        return (f"the training data at {directory} has format {version}; this pairlab "
                f"reads format {prepare.FORMAT}")
    for name, size in expected.items():
        actual = (directory / name).stat().st_size
        if actual != size:
            return (f"the training data at {directory} is corrupt: {name} is {actual:,} "
                    f"bytes, meta.json says {size:,} (truncated or overwritten)")
    if prepare.dataset_checksum(directory) != checksum:
        *first, last = prepare.CHECKSUMMED
        return (f"the training data at {directory} is corrupt: {', '.join(first)} or {last} "
                f"changed since it was prepared (checksum mismatch)")
    return None


def _disk_full_error(exc: BaseException | None) -> BaseException | None:
    """The ENOSPC of a file write, SQLite's SQLITE_FULL or git failing for lack of space,
    also when it caused a later error (a failed ROLLBACK after a full COMMIT); else None."""
    import errno
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
