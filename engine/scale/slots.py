"""Trainer slots: how many runs train at once, where each trains, on which device.

A slot is one accelerator's worth of training. With one slot, a run the loop committed on
the research branch trains in the workspace's own checkout, as it always has. Any other run
(a speculative run of a proposal no human accepted yet, or any run when several slots train
at once) trains in the slot's own git worktree under `.pairlab/slots/`, checked out detached
at the run's commit, so the research branch and the main checkout never move for it. Each
slot of several is pinned to its own GPU with CUDA_VISIBLE_DEVICES.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from engine.base.devices import visible_gpus
from engine.base.events import RunStarted
from engine.base.git import run_git
from engine.workspace import Workspace, WorkspaceError

SLOTS_DIR = "slots"


@dataclass(frozen=True)
class Slot:
    index: int
    env: dict[str, str] = field(default_factory=dict)   # the device pin, if any

    @property
    def name(self) -> str:
        return f"slot-{self.index}"


def default_slot_count(device: str | None = None) -> int:
    """One slot per visible GPU; one on a CPU or MPS machine."""
    if device in ("cpu", "mps"):
        return 1
    return max(1, visible_gpus())


def make_slots(count: int, device: str | None = None) -> list[Slot]:
    """`count` slots; on a GPU machine with several slots, slot i sees GPU i only."""
    if count < 1:
        raise ValueError(f"--slots must be at least 1, not {count}")
    pin = count > 1 and device not in ("cpu", "mps") and visible_gpus() > 0
    listed = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
              if d.strip()]
    slots = []
    for i in range(count):
        env = {}
        if pin:
            # the i-th visible GPU, in the numbering the engine itself was given
            gpus = listed or [str(n) for n in range(visible_gpus())]
            env["CUDA_VISIBLE_DEVICES"] = gpus[i % len(gpus)]
        slots.append(Slot(i, env))
    return slots


def upcoming_slots(waiting: list[int], slots: int, busy: dict[int, RunStarted]
                   ) -> dict[int, int]:
    """The slot each waiting proposal goes to, in queue order (what the review queue shows):
    one a slot trains ahead of its review stays there; the others take the free slots in
    order, then the busy ones in the order their runs started (with equal budgets, the
    first started ends first)."""
    training = {run.proposal_id: slot for slot, run in busy.items()
                if run.proposal_id is not None}
    order = [i for i in range(slots) if i not in busy] + \
        [slot for slot, _ in sorted(busy.items(), key=lambda item: item[1].at)]
    upcoming, taken = {}, 0
    for proposal_id in waiting:
        if proposal_id in training:
            upcoming[proposal_id] = training[proposal_id]
        elif order:
            upcoming[proposal_id] = order[taken % len(order)]
            taken += 1
    return upcoming


class Worktrees:
    """The slots' git worktrees of the workspace, under .pairlab/slots/."""

    def __init__(self, workspace: Workspace):
        self.workspace = workspace
        self.root = workspace.pairlab_dir / SLOTS_DIR

    def path(self, slot: Slot) -> Path:
        return self.root / slot.name

    def checkout(self, slot: Slot, commit: str) -> Path:
        """The slot's worktree, detached at commit (made on first use); its own .pairlab/
        holds what a run writes beside train.py."""
        path = self.path(slot)
        ws = self.workspace.root
        if (path / ".git").is_file():
            run_git(path, "checkout", "-q", "--detach", "--force", commit)
        else:
            if path.exists():                 # a leftover of a killed engine: not a worktree
                shutil.rmtree(path)
            run_git(ws, "worktree", "prune")
            run_git(ws, "worktree", "add", "-q", "--detach", "--force", str(path), commit)
        (path / ".pairlab").mkdir(exist_ok=True)
        return path

    def remove_all(self) -> list[Path]:
        """Remove every slot worktree (git's record of them included); returns them."""
        removed = []
        if self.root.is_dir():
            for path in sorted(self.root.iterdir()):
                if run_git(self.workspace.root, "worktree", "remove", "--force", str(path),
                           check=False) is None and path.exists():
                    shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
        try:
            run_git(self.workspace.root, "worktree", "prune")
        except WorkspaceError:
            pass                              # a missing git record is what prune wanted
        return removed

    def listed(self) -> list[Path]:
        """The slot worktrees git knows of (for tests and `git worktree list`)."""
        out = run_git(self.workspace.root, "worktree", "list", "--porcelain").decode()
        paths = [Path(line[len("worktree "):]) for line in out.splitlines()
                 if line.startswith("worktree ")]
        return [p for p in paths if p.resolve().parent == self.root.resolve()]
