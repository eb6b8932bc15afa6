"""Resuming after a stop or a crash: git is made to match the journal, and the loop picks
up where it stopped. Runs before the coordinator's thread starts (a part the Coordinator
hosts).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from engine.base.records import ProposalState, RunKind, RunStatus
from engine.loop.evidence import Evidence
from engine.loop.host import LoopHost
from engine.loop.loop_state import Judging
from engine.loop.planner import Need

if TYPE_CHECKING:
    from engine.loop.drafting import Drafting
    from engine.loop.program_edits import ProgramEdits
    from engine.loop.speculation import Speculation
    from engine.scale.slots import Worktrees


class Host(LoopHost, Protocol):
    program: ProgramEdits
    speculation: Speculation
    drafting: Drafting
    worktrees: Worktrees
    evidence: Evidence

    def best(self) -> tuple[str, float] | None: ...


class Restore:
    """Git made to match the journal at start, and the human's uncommitted changes saved
    before pairlab moves the checkout. It holds no state of its own: what it restores goes to
    the loop's state and the parts that own it."""

    def __init__(self, host: Host):
        self.host = host

    def restore(self) -> None:
        """Make git match the journal and pick up where a killed engine stopped."""
        loop = self.host.loop
        self.host.worktrees.remove_all()            # a killed engine's: each run checks out anew
        for run in self.host.journal.interrupted_runs():
            again = "; it trains again now" if run.proposal_id is not None or \
                run.decided_by in ("baseline", "noise", "promotion") else ""
            self.host.notice("warning", f"run {run.run_id} ({run.description}) was interrupted "
                        f"when the engine stopped{again}", "nothing recorded was lost")
        self.host.program.restore_program()
        best = self.host.best()
        if best:
            head = self.host.workspace.head()
            best_commit = self.host.program.best_commit()
            if head not in (best[0], best_commit):  # the best, or the program on it
                # e.g. the engine died between committing an experiment and starting its run
                self.host.notice(
                    "warning", f"the research branch stood at {head[:7]}, a commit with no "
                    f"result in the journal: pairlab reset it to the best kept commit "
                    f"{best_commit[:7]}; an accepted proposal that had not trained yet trains "
                    f"now",
                    f"nothing recorded was lost; to keep that commit anyway: "
                    f"`git branch keep-{head[:7]} {head[:7]}`")
            self.protect_human_changes("pairlab restored the research branch")
            self.host.workspace.reset_to(self.host.program.best_commit())
        loop.start_commit = self.host.workspace.head()
        mode = self.host.journal.get_state("mode")
        if mode in ("review", "auto") and self.host.settings.mode == "review":
            loop.mode = mode
        for proposal in self.host.journal.pending_proposals():
            proposal.notes = self.host.journal.notes_for(proposal.id)
            loop.proposals[proposal.id] = proposal
            (loop.queue if proposal.state is ProposalState.ACCEPTED else loop.review).append(
                proposal.id)
        for row in self.host.journal.run_rows():
            if row["kind"] == RunKind.SPECULATIVE and row["status"] in (
                    RunStatus.SPECULATIVE.value, RunStatus.CRASH.value, RunStatus.TIMEOUT.value
                    ) and row["proposal_id"] in loop.review:
                self.host.speculation.ahead[row["proposal_id"]] = row["id"]
                continue
            held = row["status"] == RunStatus.HELD.value
            if row["kind"] == RunKind.EXPERIMENT and (held or row["status"] ==
                                                RunStatus.CONFIRMING.value):
                proposal = self.host.journal.get_proposal(row["proposal_id"])
                loop.proposals[proposal.id] = proposal
                need = Need.HUMAN if held else self.host.evidence.need_of(row["commit_sha"])
                loop.judging[proposal.id] = Judging(proposal.id, row["id"], row["commit_sha"],
                                                    need)
        if best:
            self.host.drafting.rebase_open_proposals(self.host.program.best_commit())

    def protect_human_changes(self, reason: str) -> None:
        saved = self.host.workspace.save_human_changes(reason)
        if saved:
            self.host.notice("warning", f"your uncommitted changes to {', '.join(saved.paths)} "
                        f"were saved as a git stash ({saved.commit[:7]}) before {reason}",
                        "get them back with `git stash pop` in the workspace")
