"""The research loop with a human in it: draft -> validate -> review -> commit -> run -> judge.

`Session` is the one public API that the CLI, the service and the tests drive: a thin facade
over the coordinator (engine/loop/coordinator.py), the one thread that owns proposals, git and
the journal. Commands go to it as messages and return once applied (a refusal raises
CommandRefused, a ValueError whose text is the user's message); getters read the immutable
snapshot it publishes, so they never wait on git or a run.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable

from engine.agents.base import Agent
from engine.base import commands
from engine.base.events import Event, ModeChanged, RunStarted, SteeringNote
from engine.base.records import Experiment, Proposal
from engine.base.view import View
from engine.journal import Journal
from engine.loop import keep_rule
from engine.loop.coordinator import Coordinator
from engine.loop.decisions import MODES
from engine.run.monitor import Monitor
from engine.workspace import Workspace


@dataclass
class SessionSettings:
    mode: str = "review"                  # review: each patch waits for a human; auto: none do
    budget_s: float = 300.0               # training seconds per run
    max_experiments: int | None = None    # experiments after the baseline, then stop
    max_cost: float | None = None         # USD of agent tokens, then stop
    max_hours: float | None = None        # wall-clock hours, then stop
    drafts_ahead: int = 1                 # proposals kept ready ahead of the trainer
    noise_repeats: int = 2                # baseline repeats run while the trainer is idle
    keep_rule: str = "margin"             # margin | sequential (engine/loop/keep_rule.py)
    keep_k: float = 2.0                   # margin: a keep clears k standard errors
    # None: the rule's own (margin 8, 6, 10; sequential 5, 4, 3)
    max_candidate_runs: int | None = None  # runs of one candidate, its confirmations included
    min_best_runs: int | None = None      # confirmations re-run the best up to this many runs
    best_rerun_every: int | None = None   # candidate runs between re-runs of the best (drift)
    large_win_sigmas: float | None = 20.0   # a win above this many sigma waits for a human
    large_win_fraction: float | None = 0.05  # ...as does one above this fraction of val_bpb
    agent_backoff_s: float = 5.0          # auto mode: first wait after an agent failure
    device: str | None = None             # cpu | cuda | mps; None: the harness decides
    max_steps: int | None = None          # fixed steps instead of the time budget
    hard_timeout_s: float | None = None   # None: budget * 2 + grace
    data_dir: Path | None = None          # prepared dataset; None: PAIRLAB_DATA_DIR or default
    extra_env: dict[str, str] = field(default_factory=dict)
    speculate: bool = True                # review mode: train the top proposal before review
    first_start_check: bool = True        # a new workspace: doctor's pipeline check first
    slots: int | None = None              # runs at once; None: one per visible GPU
    executor: str = "local"               # local | ray: each run a task on a Ray cluster
    ray_address: str | None = None        # None: the cluster this machine belongs to
    ray_resources: dict[str, float] | None = None   # per run; None: one GPU
    ray_data_dir: Path | None = None      # the data on a path the cluster shares; None: shipped


class Session(commands.Controls):
    def __init__(self, workspace: Workspace, agent: Agent, settings: SessionSettings,
                 journal: Journal | None = None, monitor: bool = True):
        if settings.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {settings.mode!r}")
        keep_rule.settings_for(settings.keep_rule)     # a bad rule name says so here
        if settings.data_dir is None:
            import os
            if os.environ.get("PAIRLAB_DATA_DIR"):
                settings.data_dir = Path(os.environ["PAIRLAB_DATA_DIR"])
        self.workspace = workspace
        self.settings = settings
        self.journal = journal or Journal(workspace.pairlab_dir / "journal.db")
        self._subscribers: list[Callable[[Event], None]] = []
        self._monitor = Monitor(interval=1.0, on_sample=self._emit) if monitor else None
        self._coordinator = Coordinator(
            workspace, agent, settings, self.journal, self._emit,
            on_trainer_pid=self._monitor.set_trainer_pid if self._monitor else None)

    @property
    def agent(self) -> Agent:
        return self._coordinator.drafting.agent

    # ------------------------------------------------------------------ events

    def subscribe(self, callback: Callable[[Event], None]) -> None:
        self._subscribers.append(callback)

    def _emit(self, event: Event) -> None:
        for callback in list(self._subscribers):
            try:
                callback(event)
            except Exception as exc:          # a broken subscriber must not stop the loop
                print(f"pairlab: event subscriber failed: {exc!r}", file=sys.stderr)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._coordinator.restore_and_publish()
        self._emit(ModeChanged(self._coordinator.loop.mode))
        self._coordinator.start()
        if self._monitor:
            self._monitor.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the loop has stopped (a cap was reached, or stop()). True if it has."""
        thread = self._coordinator.thread
        if thread is None:
            return False
        thread.join(timeout)
        return not thread.is_alive()

    def stop(self, timeout: float = 15.0) -> None:
        """Stop cleanly: kill the run in flight, cancel drafting, leave git matching the journal."""
        if self._coordinator.on_own_thread():       # from a subscriber: no waiting on itself
            self._coordinator.call(commands.Stop())
            return
        if self._coordinator.running:
            self._coordinator.post(commands.Stop())
            self.wait(timeout)
        if self._monitor:
            self._monitor.stop()

    @property
    def failed(self) -> bool:
        """Stopped because the loop could not go on (the engine's exit is non-zero)."""
        return self._snapshot.failed

    def clients_attached(self, deciding: int) -> None:
        """From the service: how many attached clients may decide."""
        self._coordinator.post(commands.ClientsAttached(deciding))

    @property
    def stopped(self) -> bool:
        coordinator = self._coordinator
        return coordinator.loop.stopping or (coordinator.thread is not None
                                             and not coordinator.running)

    # ------------------------------------------------------------------ commands

    def send(self, command: commands.Command):
        """Apply a command (the coordinator's, on its thread) or answer a query; its
        result, or the refusal raised."""
        query = QUERIES.get(type(command))
        if query is not None:
            return query(self, command)
        return self._coordinator.call(command)

    # ------------------------------------------------------------------ snapshots
    # The loop's state is read from the coordinator's snapshot: immutable, replaced whole
    # after every message, so a reader shares it and never waits on the loop. Records of
    # finished runs and of old proposals are the journal's.

    @property
    def _snapshot(self):
        return self._coordinator.snapshot

    @property
    def state(self) -> str:
        return self._snapshot.state

    @property
    def mode(self) -> str:
        return self._snapshot.mode

    @property
    def paused(self) -> bool:
        return self._snapshot.paused

    @property
    def best(self) -> tuple[str, float] | None:
        """(commit, val_bpb) of the best kept run: the commit the research branch stands on."""
        return self._snapshot.best

    @property
    def noise_floor(self) -> float | None:
        return self._snapshot.noise_floor

    @property
    def total_cost(self) -> float:
        return self._snapshot.total_cost

    @property
    def current_run(self) -> RunStarted | None:
        return self._snapshot.current_run

    def pending(self) -> list[Proposal]:
        return list(self._snapshot.pending)

    def queued(self) -> list[Proposal]:
        return list(self._snapshot.queued)

    def view(self) -> View:
        """The loop as a screen shows it, from this snapshot and the journal's records: what
        the app starts from, and what the service's snapshot for a new client rests on."""
        snapshot = self._snapshot
        return View(**{f.name: getattr(snapshot, f.name) for f in fields(View)}
                    | dict(stopped=self.stopped, experiments=tuple(self.journal.experiments()),
                           open_notes=tuple(SteeringNote(note_id, text)
                                            for note_id, text in self.journal.open_notes())))

    def proposal(self, proposal_id: int) -> Proposal:
        for proposal in self._snapshot.open:
            if proposal.id == proposal_id:
                return proposal
        proposal = self.journal.get_proposal(proposal_id)
        if proposal is None:
            raise KeyError(f"no proposal {proposal_id}")
        proposal.notes = self.journal.notes_for(proposal_id)
        return proposal

    def _proposal_text(self, command: commands.ProposalText) -> str:
        proposal = self.proposal(command.proposal_id)
        if command.path in proposal.files:
            return proposal.files[command.path]
        return self.workspace.file_at(proposal.base_commit, command.path)

    def experiments(self) -> list[Experiment]:
        return self.journal.experiments()

    def _log_path(self, command: commands.LogPath) -> Path:
        for experiment in self.journal.experiments():
            if experiment.id == command.experiment_id:
                return Path(experiment.log_path)
        raise KeyError(f"no experiment {command.experiment_id}")

    def _summary(self, command: commands.Summary) -> str:
        return self._coordinator.summary()


# The queries, answered from the session's reads rather than by the loop.
QUERIES = {commands.ProposalText: Session._proposal_text, commands.LogPath: Session._log_path,
           commands.Summary: Session._summary}
