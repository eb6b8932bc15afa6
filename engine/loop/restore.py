"""Resuming after a stop or a crash: git is made to match the journal, and the loop picks
up where it stopped. Runs before the coordinator's thread starts (a mixin of Coordinator).
"""

from __future__ import annotations

from engine.loop.loop_state import Judging
from engine.base.records import ProposalState, RunStatus


class RestoreMixin:
    def restore(self) -> None:
        """Make git match the journal and pick up where a killed engine stopped."""
        loop = self.loop
        self.worktrees.remove_all()            # a killed engine's: each run checks out anew
        for run in self.journal.interrupted_runs():
            again = "; it trains again now" if run.proposal_id is not None or \
                run.decided_by in ("baseline", "noise", "promotion") else ""
            self.notice("warning", f"run {run.run_id} ({run.description}) was interrupted "
                        f"when the engine stopped{again}", "nothing recorded was lost")
        self.restore_program()
        best = self._best()
        if best:
            head = self.workspace.head()
            if head not in (best[0], self.best_commit()):  # the best, or the program on it
                # e.g. the engine died between committing an experiment and starting its run
                self.notice(
                    "warning", f"the research branch stood at {head[:7]}, a commit with no "
                    f"result in the journal: pairlab reset it to the best kept commit "
                    f"{self.best_commit()[:7]}; an accepted proposal that had not trained yet "
                    f"trains now",
                    f"nothing recorded was lost; to keep that commit anyway: "
                    f"`git branch keep-{head[:7]} {head[:7]}`")
            self.protect_human_changes("pairlab restored the research branch")
            self.workspace.reset_to(self.best_commit())
        loop.start_commit = self.workspace.head()
        mode = self.journal.get_state("mode")
        if mode in ("review", "auto") and self.settings.mode == "review":
            loop.mode = mode
        for proposal in self.journal.pending_proposals():
            proposal.notes = self.journal.notes_for(proposal.id)
            loop.proposals[proposal.id] = proposal
            (loop.queue if proposal.state is ProposalState.ACCEPTED else loop.review).append(
                proposal.id)
        for row in self.journal.run_rows():
            if row["kind"] == "speculative" and row["status"] in (
                    RunStatus.SPECULATIVE.value, RunStatus.CRASH.value, RunStatus.TIMEOUT.value
                    ) and row["proposal_id"] in loop.review:
                loop.ahead[row["proposal_id"]] = row["id"]
                continue
            held = row["status"] == RunStatus.HELD.value
            if row["kind"] == "experiment" and (held or row["status"] ==
                                                RunStatus.CONFIRMING.value):
                proposal = self.journal.get_proposal(row["proposal_id"])
                loop.proposals[proposal.id] = proposal
                need = "human" if held else self.need_of(row["commit_sha"])
                loop.judging[proposal.id] = Judging(proposal.id, row["id"], row["commit_sha"],
                                                    need)
        if best:
            self.rebase_open_proposals(self.best_commit())

    def protect_human_changes(self, reason: str) -> None:
        saved = self.workspace.save_human_changes(reason)
        if saved:
            self.notice("warning", f"your uncommitted changes to {', '.join(saved.paths)} "
                        f"were saved as a git stash ({saved.commit[:7]}) before {reason}",
                        "get them back with `git stash pop` in the workspace")
