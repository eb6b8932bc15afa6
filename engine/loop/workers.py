"""Workers: the slow parts (agent drafting, training, preparing data), each on its own thread.

A worker gets everything it needs in its job, does the work and posts one result message to
the coordinator's inbox. Workers change neither git nor the journal: they read git objects
(a patch check) and emit streaming events (reasoning, log lines, progress) straight to the
subscribers, since those change no loop state.
"""

from __future__ import annotations

import json
import threading
import traceback
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Callable

from engine.agents.base import Agent, AgentError, DraftCancelled, DraftContext
from engine.base.events import Event, LiveLine, LogLines, Preparing, ReasoningDelta, RunProgress
from engine.base.records import Draft, RunResult
from engine.loop.planner import RunPlan
from engine.run.data import data_problem
from engine.run.doctor import Check
from engine.run.runner import Runner
from engine.workspace import Workspace, patch

Post = Callable[[object], None]
Emit = Callable[[Event], None]


@dataclass
class DraftDone:
    draft_id: int
    base_commit: str
    base_files: dict[str, str]
    agent: str
    draft: Draft | None = None
    diff: str = ""
    error: AgentError | None = None
    refused: str = ""                # the engine refused the agent's patch: why
    cancelled: bool = False
    note_ids: tuple[int, ...] = ()   # steering notes this draft was given


@dataclass
class RunDone:
    plan: RunPlan
    run_id: str
    experiment_id: int
    commit: str
    result: RunResult
    slot: int = 0


@dataclass
class DataChecked:
    data_dir: Path | None
    checksum: str | None = None
    problem: str = ""                # missing or corrupt data, in words
    prepare_error: str = ""          # the data could not be prepared at all
    first_check: Check | None = None   # a new workspace's pipeline check (engine/run/doctor.py)


class Worker(StrEnum):
    """The coordinator's workers, one thread each (the trainer: one per busy slot)."""

    TRAINER = "trainer"
    DRAFTER = "drafter"
    DATA = "data"


@dataclass
class WorkerFailed:
    """A worker died of an unexpected error: the coordinator decides what that means."""

    worker: Worker
    error: BaseException
    trace: str
    slot: int | None = None          # a trainer's slot


def start(name: Worker, post: Post, work: Callable[[], object],
          slot: int | None = None) -> threading.Thread:
    """Run work() on a daemon thread and post what it returns (or how it failed)."""
    def run():
        try:
            message = work()
        except Exception as exc:
            message = WorkerFailed(name, exc, traceback.format_exc(), slot)
        post(message)
    thread = threading.Thread(target=run, name=f"pairlab-{name}", daemon=True)
    thread.start()
    return thread


def draft(agent: Agent, ctx: DraftContext, draft_id: int, cancel: threading.Event,
          workspace: Workspace, emit: Emit, note_ids: tuple[int, ...]) -> DraftDone:
    """One draft by the agent, its patch checked against the base it was drafted on."""
    done = DraftDone(draft_id, ctx.base_commit, ctx.files, agent.name, note_ids=note_ids)
    try:
        done.draft = agent.draft(
            ctx, lambda kind, text: emit(ReasoningDelta(draft_id, kind, text)), cancel)
    except DraftCancelled:
        done.cancelled = True
        return done
    except AgentError as exc:
        done.error = exc
        return done
    try:
        done.diff = patch.validate_change(workspace, ctx.base_commit, ctx.files,
                                          {**ctx.files, **done.draft.files})
    except patch.PatchRefused as exc:
        done.refused = str(exc)
    return done


def train(plan: RunPlan, runner: Runner, experiment_id: int, commit: str, emit: Emit,
          on_pid: Callable[[int | None], None] | None, slot: int = 0) -> RunDone:
    run_id = runner.run_id
    result = runner.run(on_lines=lambda lines: emit(LogLines(run_id, lines)),
                        on_progress=lambda *p: emit(RunProgress(run_id, *p)), on_start=on_pid,
                        on_live=lambda text: emit(LiveLine(run_id, text)))
    if on_pid is not None:
        on_pid(None)
    return RunDone(plan, run_id, experiment_id, commit, result, slot)


def check_data(data_dir: Path | None, emit: Emit,
               first_check: Callable[[Path], Check] | None = None) -> DataChecked:
    """Prepare the default dataset when none is given, then check it is whole; then, for a
    new workspace, first_check(data_dir): a few steps through the hand-off and evaluator."""
    from nanochat import prepare
    if data_dir is None:
        try:
            data_dir = prepare.prepare_dataset(
                progress=lambda stage, fraction: emit(Preparing(stage, fraction)))
        except prepare.PrepareError as exc:
            return DataChecked(None, prepare_error=str(exc))
    problem = data_problem(Path(data_dir))
    if problem:
        return DataChecked(Path(data_dir), problem=problem)
    meta = Path(data_dir) / "meta.json"
    checksum = json.loads(meta.read_text())["checksum"] if meta.is_file() else None
    if first_check is not None:
        emit(Preparing("checking the pipeline: a few steps through the evaluator", 0.0))
    return DataChecked(Path(data_dir), checksum=checksum,
                       first_check=first_check(Path(data_dir)) if first_check else None)
