"""The human's edits of program.md, the agent's instructions. Runs on the coordinator thread
only (a part the Coordinator hosts).

An edit is refused when empty or unchanged; otherwise the working tree's program.md is
written at once (the next draft reads it) and the agent is told what changed. The commit on
the research branch, a human change, waits until no run trains in the workspace's own
checkout (runs in slot worktrees have their own), so a run's checkout never moves under it.
It sits on top of the measured best: open proposals move onto it as onto a new best, runs of
the best still measure the best's own commit (the keep rule groups runs by commit), and a
new best drafted before the edit gets the program committed on top again, so the branch
never loses it.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Protocol

from engine.base.commands import CommandRefused, EditProgram
from engine.loop.host import LoopHost
from engine.loop.loop_state import ProgramCommit
from engine.workspace import PROGRAM_FILE, WorkspaceError, patch

if TYPE_CHECKING:
    from engine.loop.drafting import Drafting
    from engine.loop.restore import Restore

PROGRAM_COMMIT_STATE = "program_commit"   # journal state: the ProgramCommit, across restarts
PROGRAM_EDIT_STATE = "program_edit"       # journal state: an edit not committed yet


class Host(LoopHost, Protocol):
    drafting: Drafting
    restorer: Restore

    def trains_aside(self, plan) -> bool: ...


class ProgramEdits:
    """The human's program.md: it owns the edit waiting to be committed and the commit of
    it on top of the measured best, so it also says where new work starts (best_commit)."""

    def __init__(self, host: Host):
        self.host = host
        self.waiting_edit: str | None = None   # to commit once no run trains in the checkout
        self.committed: ProgramCommit | None = None

    def edit(self, command: EditProgram) -> str | None:
        """Take the human's program.md; returns its commit, or None while a run trains (it
        is committed when the run ends)."""
        text = command.text
        if not text.strip():
            raise CommandRefused(
                "program.md cannot be empty: it is all the agent is told about the research; "
                "write what it should try, or cancel to keep the current program")
        current = self.host.workspace.program()
        if text == current:
            raise CommandRefused("program.md is unchanged: nothing to commit")
        self.host.workspace.write_program(text)
        self.waiting_edit = text
        self.host.journal.set_state(PROGRAM_EDIT_STATE, text)
        changes = patch.unified_diff({PROGRAM_FILE: current}, {PROGRAM_FILE: text})
        self.host.drafting.feedback.append(
            "The human changed program.md, your instructions (the program you are given is "
            f"the new one); what changed:\n```diff\n{changes}```")
        return self.commit_program_edit()

    def commit_program_edit(self) -> str | None:
        """Commit the waiting program.md edit if no run trains; its commit, else None."""
        loop = self.host.loop
        in_checkout = any(not self.host.trains_aside(active.plan) for active in loop.runs.values())
        if self.waiting_edit is None or in_checkout:
            return None
        text, self.waiting_edit = self.waiting_edit, None
        measured = self.measured_commit()
        self.host.restorer.protect_human_changes("pairlab committed your program.md")
        commit = self.host.workspace.commit_program(text, parent=self.best_commit())
        self.set_program_commit(ProgramCommit(measured, commit))
        self.host.journal.set_state(PROGRAM_EDIT_STATE, None)
        self.host.notice("info", f"your program.md is committed on {self.host.workspace.branch} as "
                    f"{commit[:7]} (a human change); the agent's next draft is told")
        self.host.drafting.rebase_open_proposals(commit)
        return commit

    def measured_commit(self) -> str:
        """The best kept commit (the start commit before a baseline): what runs of the best
        measure."""
        best = self.host.snapshot.best
        return best[0] if best else self.host.loop.start_commit

    def best_commit(self) -> str:
        """The commit new work starts from: the measured best, or the human's program.md
        committed on top of it."""
        measured = self.measured_commit()
        program = self.committed
        return program.commit if program is not None and program.on == measured else measured

    def is_best_base(self, commit: str) -> bool:
        """Whether work made on `commit` stands on the best: the measured best, or the
        program.md commit on top of it (which changes nothing the runs measure)."""
        return commit in (self.measured_commit(), self.best_commit())

    def keep_program_on(self, new_best: str) -> None:
        """A new best whose base lacks the human's program.md gets it committed on top."""
        program = self.committed
        if program is None:
            return
        text = self.host.workspace.file_at(program.commit, PROGRAM_FILE)
        if self._program_at(new_best) == text:
            self.set_program_commit(None)
            return
        self.set_program_commit(ProgramCommit(
            new_best, self.host.workspace.commit_program(text, parent=new_best)))

    def set_program_commit(self, program: ProgramCommit | None) -> None:
        self.committed = program
        self.host.journal.set_state(PROGRAM_COMMIT_STATE, asdict(program) if program else None)

    def restore_program(self) -> None:
        """After a restart: the program commit, and an edit the engine had not committed."""
        saved = self.host.journal.get_state(PROGRAM_COMMIT_STATE)
        self.committed = ProgramCommit(**saved) if saved else None
        self.waiting_edit = self.host.journal.get_state(PROGRAM_EDIT_STATE)

    def _program_at(self, commit: str) -> str:
        try:
            return self.host.workspace.file_at(commit, PROGRAM_FILE)
        except WorkspaceError:                 # an adopted repo may have none
            return ""
