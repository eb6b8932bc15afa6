"""The loop's state as the coordinator holds it, the immutable snapshot readers get, and
that state in words."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from engine.base.events import RunStarted
from engine.base.records import Proposal, RunKind
from engine.base.view import View
from engine.loop.planner import Need, RunPlan
from engine.run.runner import Runner
from engine.scale.slots import Slot


@dataclass(frozen=True)
class Snapshot(View):
    """What readers see: the loop's view as its owner publishes it (the journal's records,
    the event stream's log tail and draft left empty), immutable, replaced whole after every
    message; with what only the owner's readers need."""

    open: tuple[Proposal, ...] = ()   # every proposal not yet done: pending to held
    failed: bool = False             # stopped because the loop could not go on


@dataclass
class ActiveRun:
    plan: RunPlan                    # a speculative run's becomes "experiment" on accept
    runner: Runner
    started: RunStarted
    slot: Slot
    superseded: str = ""             # a speculative run killed: vetoed | edited | rebased | stale


@dataclass
class ActiveDraft:
    draft_id: int
    cancel: threading.Event
    feedback: list[str]


@dataclass
class Judging:
    """A trained experiment the judge has not decided yet (or has held for a human)."""

    proposal_id: int
    run_id: str
    commit: str
    need: Need


@dataclass(frozen=True)
class ProgramCommit:
    """The human's program.md committed on top of the measured best: the branch's base
    until the best moves (a new best carries the program with it, engine/loop/program_edits.py)."""

    on: str                          # the measured best (or the start commit) it sits on
    commit: str


@dataclass
class LoopState:
    """Everything the coordinator owns in memory; the journal holds the durable part."""

    mode: str
    paused: bool = False
    pause_reason: str = ""
    stopping: bool = False
    stop_reason: str = ""
    proposals: dict[int, Proposal] = field(default_factory=dict)
    review: list[int] = field(default_factory=list)     # waiting for a human, oldest first
    queue: list[int] = field(default_factory=list)      # accepted, waiting for the trainer
    judging: dict[int, Judging] = field(default_factory=dict)
    runs: dict[int, ActiveRun] = field(default_factory=dict)   # by slot index
    checking_data: bool = False
    data_ready: bool = False
    data_dir: Path | None = None
    data_checksum: str | None = None
    start_commit: str = ""
    deciding_clients: int = 0        # attached clients that may decide (engine/service/server.py)
    failed: bool = False             # stopping because the loop cannot go on (non-zero exit)


def describe(loop: LoopState, drafting: str | None) -> tuple[str, str]:
    """The loop's state in words: what the status line shows. drafting: the name of the
    agent drafting now, None when none is."""
    held = [j.proposal_id for j in loop.judging.values() if j.need == Need.HUMAN]
    if loop.stopping:
        return "stopping", loop.stop_reason
    if loop.paused:
        return "paused", loop.pause_reason
    running = [active.started for _, active in sorted(loop.runs.items())]
    accepted = [started for started in running
                if started.kind not in (RunKind.SPECULATIVE, RunKind.PROMOTION)]
    speculative = [started for started in running if started.kind == RunKind.SPECULATIVE]
    promoting = [started for started in running if started.kind == RunKind.PROMOTION]
    if accepted:
        started = accepted[0]
        state = "training" if started.proposal_id is not None else "baseline"
        more = f" (+{len(running) - 1} more)" if len(running) > 1 else ""
        return state, started.description + more
    if speculative and loop.review:
        return "reviewing", (f"{len(loop.review)} waiting for review; "
                             f"#{speculative[0].proposal_id} trains speculatively")
    if promoting and not loop.review and not held:
        return "promoting", promoting[0].description
    if loop.review or held:
        waiting = [f"{len(loop.review)} waiting for review"] if loop.review else []
        waiting += [f"#{i} held: unusually large win" for i in held]
        return "reviewing", ", ".join(waiting)
    if drafting is not None:
        return "drafting", drafting
    if loop.checking_data:
        return "preparing", "checking the training data"
    return "idle", ""
