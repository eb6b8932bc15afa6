"""Events the Session emits. Plain dataclasses; each serializes to one JSON line.

Subscribers (the TUI, `pairlab headless`, tests) receive them on engine threads and must
not block: the TUI forwards them with post_message, headless prints them.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import ClassVar

from engine.base.records import Decision, Experiment, Proposal, RunKind, RunResult


@dataclass
class Event:
    type: ClassVar[str] = "event"
    at: float = field(default_factory=time.time, kw_only=True)

    def to_dict(self) -> dict:
        d = {"type": self.type}
        d.update(_plain(asdict(self)))
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, allow_nan=False, default=str)


def _plain(value):
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and value != value:   # NaN is not JSON
        return None
    return value


@dataclass
class StateChanged(Event):
    """The loop's state in words: idle, drafting, reviewing, training, paused, stopped."""

    type: ClassVar[str] = "state"
    state: str
    detail: str = ""


@dataclass
class Preparing(Event):
    """Data and tokenizer preparation on a first run: what it is doing, overall fraction done."""

    type: ClassVar[str] = "preparing"
    stage: str
    fraction: float


@dataclass
class ModeChanged(Event):
    type: ClassVar[str] = "mode"
    mode: str                        # "review" | "auto"


@dataclass
class DraftStarted(Event):
    type: ClassVar[str] = "draft_started"
    draft_id: int
    agent: str
    base_commit: str


@dataclass
class ReasoningDelta(Event):
    type: ClassVar[str] = "reasoning"
    draft_id: int
    kind: str                        # "thinking" | "text" | "tool"
    text: str


@dataclass
class DraftFailed(Event):
    type: ClassVar[str] = "draft_failed"
    draft_id: int
    message: str


@dataclass
class ProposalReady(Event):
    type: ClassVar[str] = "proposal"
    proposal: Proposal


@dataclass
class ProposalRebased(Event):
    type: ClassVar[str] = "proposal_rebased"
    proposal_id: int
    base_commit: str
    diff: str


@dataclass
class ProposalStale(Event):
    type: ClassVar[str] = "proposal_stale"
    proposal_id: int
    reason: str


@dataclass
class DecisionMade(Event):
    type: ClassVar[str] = "decision"
    decision: Decision


@dataclass
class RunStarted(Event):
    type: ClassVar[str] = "run_started"
    run_id: str
    experiment_id: int
    proposal_id: int | None
    commit: str
    description: str
    budget_s: float
    log_path: str
    kind: RunKind = RunKind.EXPERIMENT  # what the run is for
    speculative: bool = False        # trains a proposal no human has accepted yet
    slot: int = 0                    # the trainer slot it trains in
    slots: int = 1                   # the loop's trainer slots


@dataclass
class RunAccepted(Event):
    """A speculative run became its proposal's experiment: a human accepted it while it
    trained, and it goes on with the time it already had."""

    type: ClassVar[str] = "run_accepted"
    run_id: str
    proposal_id: int


@dataclass
class LogLines(Event):
    """A batch of finished log lines; `\\r` progress updates never arrive here."""

    type: ClassVar[str] = "log"
    run_id: str
    lines: list[str]


@dataclass
class LiveLine(Event):
    """The run's open output line as it stands: a `\\r` progress line being rewritten, or
    text not yet ended by a newline; "" once it is finished (it then comes in LogLines)."""

    type: ClassVar[str] = "live_line"
    run_id: str
    text: str


@dataclass
class RunProgress(Event):
    type: ClassVar[str] = "progress"
    run_id: str
    step: int
    loss: float
    percent: float                   # of the time budget (or of the fixed steps)
    elapsed_s: float
    remaining_s: float


@dataclass
class RunFinished(Event):
    type: ClassVar[str] = "run_finished"
    experiment: Experiment
    result: RunResult


@dataclass
class BestUpdated(Event):
    type: ClassVar[str] = "best"
    commit: str
    val_bpb: float
    experiment_id: int


@dataclass
class NoiseFloor(Event):
    type: ClassVar[str] = "noise_floor"
    spread: float                    # max - min of the baseline repeats
    samples: list[float]


@dataclass
class DeviceSample(Event):
    """One reading of the accelerator(s) or, without a GPU, of CPU and memory."""

    type: ClassVar[str] = "device"
    kind: str                        # "gpu" | "cpu"
    devices: list[dict]              # per GPU: name, util, mem_used_mb, mem_total_mb, temp_c, power_w
    cpu_percent: float | None = None
    ram_used_mb: float | None = None
    ram_total_mb: float | None = None
    trainer_cpu_percent: float | None = None
    trainer_rss_mb: float | None = None


@dataclass
class Notice(Event):
    """Something the user should read: an error with what to do about it, or a warning."""

    type: ClassVar[str] = "notice"
    level: str                       # "info" | "warning" | "error"
    message: str
    hint: str = ""


@dataclass
class ExperimentSettled(Event):
    """A run's row as it now stands after a decision: a held win a human kept or discarded,
    a kept change whose promotion to a larger depth started or was judged, a kept change
    reverted because the best's re-runs showed it was noise."""

    type: ClassVar[str] = "experiment_settled"
    experiment: Experiment


@dataclass
class WinHeld(Event):
    """An unusually large win, confirmed by a re-run, waits for a human: accept keeps it."""

    type: ClassVar[str] = "win_held"
    proposal_id: int
    experiment_id: int
    val_bpb: float
    best_val_bpb: float
    diff: str


@dataclass
class SteeringNote(Event):
    """A note from the human for the agent's next draft."""

    type: ClassVar[str] = "note"
    note_id: int
    text: str


@dataclass
class SessionStopped(Event):
    type: ClassVar[str] = "stopped"
    reason: str
    summary: str
    failed: bool = False             # the loop could not go on: the engine exits non-zero


EVENT_TYPES: dict[str, type[Event]] = {
    cls.type: cls
    for cls in (StateChanged, Preparing, ModeChanged, DraftStarted, ReasoningDelta, DraftFailed,
                ProposalReady, ProposalRebased, ProposalStale, DecisionMade, RunStarted,
                LogLines, LiveLine, RunProgress, RunFinished, BestUpdated, NoiseFloor,
                DeviceSample, Notice, WinHeld, ExperimentSettled, SteeringNote, SessionStopped)
}
