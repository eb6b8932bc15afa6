"""The coordinator's side of the user's controls: accept, veto, edit, pause, resume, kill,
mode, note, stop (program.md edits: engine/loop/program_edits.py). Runs on the coordinator thread
only (a mixin of Coordinator), so a decision can never race a stale-marking or another
client's decision: whichever comes second is refused with a message that says what happened.
"""

from __future__ import annotations

import time
from typing import Callable

from engine.base.commands import (Accept, Command, CommandRefused, Edit, EditProgram, KillRun, Note,
                                  Pause, Resume, SetMode, Stop, Veto)
from engine.base.events import DecisionMade, ExperimentSettled, ModeChanged, SteeringNote
from engine.base.records import Decision, DecisionKind, Proposal, ProposalState, RunStatus
from engine.loop.planner import Need
from engine.workspace import patch

MODES = ("review", "auto")
# refusals for a proposal that is not waiting for review, by its journal state
_NOT_WAITING = {
    ProposalState.ACCEPTED: "was already accepted and waits to train",
    ProposalState.TRAINING: "was already accepted and is training",
    ProposalState.DONE: "has already trained",
    ProposalState.VETOED: "was already vetoed",
    ProposalState.STALE: "no longer applies to the best and went back to the agent",
    ProposalState.HELD: "is a held win: accept keeps it, veto discards it; it cannot be edited",
}


class DecisionsMixin:
    def apply_command(self, command: Command) -> Callable[[], None]:
        """Apply a command; returns what answers its caller, to call once readers can see
        the command's effect (after the next snapshot)."""
        try:
            result = HANDLERS[type(command)](self, command)
        except (CommandRefused, patch.PatchRefused) as refusal:
            error = refusal
            return lambda: command.reply.set_exception(error)
        except Exception as exc:
            command.reply.set_exception(exc)
            raise
        return lambda: command.reply.set_result(result)

    # ------------------------------------------------------------------ proposals

    def reviewable(self, proposal_id: int) -> Proposal:
        """The proposal if it waits for review, else a refusal naming its state."""
        if proposal_id in self.loop.review:
            return self.loop.proposals[proposal_id]
        proposal = self.journal.get_proposal(proposal_id)
        if proposal is None:
            raise CommandRefused(f"there is no proposal #{proposal_id}")
        why = _NOT_WAITING.get(proposal.state, f"is {proposal.state.value}")
        raise CommandRefused(f"#{proposal_id} {why}")

    def decide(self, proposal_id: int, decision: Decision) -> None:
        loop = self.loop
        proposal = self.reviewable(proposal_id)
        decision.at = time.time()
        self.journal.record_decision(decision, proposal)    # sets the proposal's state
        loop.review.remove(proposal_id)
        if decision.kind is not DecisionKind.VETO:
            loop.queue.append(proposal_id)
        self.emit(DecisionMade(decision))
        self.speculation.decided_speculation(decision)  # after: its run goes on, or is judged
        if decision.kind is DecisionKind.VETO:
            loop.proposals.pop(proposal_id, None)

    def _accept(self, command: Accept) -> None:
        held = self.loop.judging.get(command.proposal_id)
        if held is not None and held.need == Need.HUMAN:
            self._settle_held(held, keep=True, decision=Decision(
                command.proposal_id, DecisionKind.ACCEPT, command.who))
            return
        self.decide(command.proposal_id, Decision(command.proposal_id, DecisionKind.ACCEPT,
                                                  command.who))

    def _veto(self, command: Veto) -> None:
        reason = command.reason.strip() or "no reason given"
        decision = Decision(command.proposal_id, DecisionKind.VETO, "human", reason=reason)
        held = self.loop.judging.get(command.proposal_id)
        if held is not None and held.need == Need.HUMAN:
            self._settle_held(held, keep=False, decision=decision)
            return
        self.decide(command.proposal_id, decision)

    def _settle_held(self, held, keep: bool, decision: Decision) -> None:
        parent = self.workspace.parent_of(held.commit)
        # measured on the best, or on the human's program.md committed on top of it
        if keep and parent not in (self.program.measured_commit(), self.program.best_commit()):
            raise CommandRefused(
                f"#{held.proposal_id} was measured on {parent[:7]}, but the best has moved "
                f"to {self.program.best_commit()[:7]} since: veto it, and the agent can propose it "
                f"again on the new best")
        status = RunStatus.KEEP if keep else RunStatus.DISCARD
        experiment = self.journal.settle_held(held.run_id, status, decision)
        self.loop.judging.pop(held.proposal_id, None)
        self.loop.proposals.pop(held.proposal_id, None)
        self.emit(DecisionMade(decision))
        self.emit(ExperimentSettled(experiment))
        self.workspace.write_results_tsv(self.journal)
        if keep:
            self.became_best(held.commit, experiment.val_bpb, experiment.id)

    def _edit(self, command: Edit) -> None:
        """The human's version of the files replaces the agent's; validated like any patch.

        Edits carry the base the editor opened on: when the best moved meanwhile, the edit
        is merged 3-way onto the proposal's new base, so a kept change is never reverted."""
        proposal = self.reviewable(command.proposal_id)
        targets = self.workspace.config.targets
        for path in command.files:
            patch.check_path(path, targets)
        files = dict(command.files)
        opened_on = self.workspace.resolve(command.base_commit) if command.base_commit \
            else proposal.base_commit
        if opened_on != proposal.base_commit:
            merged = patch.rebase(files, self.workspace.files_at(opened_on, list(files)),
                                  self.workspace.files_at(proposal.base_commit, list(files)))
            if merged is None:
                raise CommandRefused(
                    f"#{proposal.id} moved onto the new best {proposal.base_commit[:7]} while "
                    f"you edited it (opened on {opened_on[:7]}), and your change conflicts "
                    f"with it: it reopens on the new base; make your change there again")
            files = merged
        base_files = self.drafting.base_files(proposal.base_commit)
        new_files = {**proposal.files, **files}
        diff = patch.validate_change(self.workspace, proposal.base_commit, base_files,
                                     new_files)
        # Against the agent's version of every target, so a target the agent left alone
        # shows only the human's lines, not the whole file as added.
        human_delta = patch.unified_diff({**base_files, **proposal.files}, new_files)
        proposal.files = {path: text for path, text in new_files.items()
                          if text != base_files.get(path)}
        proposal.diff = diff
        # The next draft is usually made while this one trains, before the journal's
        # history has its result: tell the agent about the edit now.
        self.drafting.feedback.append(
            f"the human edited your proposal {proposal.id} ({proposal.description}) before "
            f"it ran; it trains with their changes:\n```diff\n{human_delta}```")
        self.decide(proposal.id, Decision(proposal.id, DecisionKind.EDIT, "human",
                                          edited_diff=human_delta))

    # ------------------------------------------------------------------ the loop

    def pause(self, reason: str = "paused by the user") -> None:
        self.loop.paused, self.loop.pause_reason = True, reason

    def resume(self) -> None:
        self.loop.paused, self.loop.pause_reason = False, ""
        self.drafting.allowed_at = 0.0

    def _kill_run(self, command: KillRun) -> bool:
        if not self.loop.runs:
            return False
        for active in self.loop.runs.values():
            active.runner.kill()
        return True

    def _set_mode(self, command: SetMode) -> None:
        if command.mode not in MODES:
            raise CommandRefused(f"mode must be one of {MODES}, not {command.mode!r}")
        self.loop.mode = command.mode
        self.journal.set_state("mode", command.mode)
        self.emit(ModeChanged(command.mode))
        if command.mode == "auto":
            for proposal_id in list(self.loop.review):
                # a kept run judged on the way moves the best: a later one may go stale
                if proposal_id in self.loop.review:
                    self.decide(proposal_id, Decision(proposal_id, DecisionKind.ACCEPT,
                                                      "auto"))

    def _note(self, command: Note) -> int:
        text = command.text.strip()
        if not text:
            raise CommandRefused("a steering note needs some text")
        note_id = self.journal.add_note(text)
        self.emit(SteeringNote(note_id, text))
        return note_id


# The handler of each command that changes the loop (the queries are the Session's).
HANDLERS: dict[type[Command], Callable] = {
    Accept: DecisionsMixin._accept, Veto: DecisionsMixin._veto, Edit: DecisionsMixin._edit,
    Pause: lambda loop, c: loop.pause(c.reason), Resume: lambda loop, c: loop.resume(),
    KillRun: DecisionsMixin._kill_run, SetMode: DecisionsMixin._set_mode,
    Note: DecisionsMixin._note, EditProgram: lambda loop, c: loop.program.edit(c),
    Stop: lambda loop, c: loop.request_stop(c.reason),
}
