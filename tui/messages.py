"""Messages the engine bridge posts to the app, and that widgets post upwards.

Engine events arrive on engine threads; `tui.bridge.EventBridge` turns them into these
messages with `post_message` (the one thread-safe way in). High-rate events arrive batched:
reasoning deltas and log lines are buffered and flushed ~20 times a second, progress
samples are kept (the live loss curve needs each point) but delivered in batches, device
samples supersede each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from textual.message import Message

from engine.base.events import DeviceSample, Event, RunProgress


@dataclass
class EngineEvent(Message):
    """A low-rate engine event (state, proposal, decision, run start/finish, notice...)."""

    event: Event


@dataclass
class ReasoningBatch(Message):
    """Consecutive reasoning deltas of one draft, merged by kind in arrival order."""

    draft_id: int
    chunks: list[tuple[str, str]]            # (kind, text)


@dataclass
class LogBatch(Message):
    """Finished log lines of one run, and its open line as it stands after them ("" when
    none is open); `dropped` lines fell off the bounded buffer."""

    run_id: str
    lines: list[str]
    dropped: int = 0
    live: str = ""


@dataclass
class ProgressBatch(Message):
    """Every progress sample since the last flush, oldest first."""

    samples: list[RunProgress] = field(default_factory=list)


@dataclass
class DeviceUpdate(Message):
    """The latest device reading; a newer one replaces an undelivered older one."""

    sample: DeviceSample

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, DeviceUpdate)


@dataclass
class ProposalSelected(Message):
    """The diff panel's selection in the pending queue changed."""

    proposal_id: int | None
