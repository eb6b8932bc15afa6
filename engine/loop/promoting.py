"""The coordinator's side of the promotion ladder (engine/loop/promotion.py): what the journal and
git say about kept changes, a promotion run's side commit and checkout, its verdict. Runs on
the coordinator thread only (a part the Coordinator hosts).

A promotion run never moves the research branch: its side commit (DEPTH set to the rung) is
kept on refs/pairlab/promotion/<id>/<side> and trained like a speculative run, in a free
trainer slot's worktree (engine/scale/slots.py). The planner starts one only when no main-loop run
wants the slot, and stops it again when the main loop needs the slot (planner.preempts).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Protocol

from engine.base.events import ExperimentSettled, RunFinished
from engine.base.git import run_git
from engine.base.records import RunKind, RunStatus
from engine.loop import judge, promotion
from engine.loop.evidence import Evidence
from engine.loop.host import LoopHost
from engine.loop.keep_rule import Action
from engine.loop.planner import RunPlan
from engine.workspace import WorkspaceError

PROMOTION_REF = "refs/pairlab/promotion"
PREEMPTED = "gave the trainer back to the main loop; it trains again when the trainer is free"


class Host(LoopHost, Protocol):
    evidence: Evidence

    def launch(self, plan: RunPlan, commit: str, description: str): ...


class Promoting:
    """The promotion ladder's runs: it owns the git facts of kept commits, read once (a
    commit's parent and DEPTH never change)."""

    def __init__(self, host: Host):
        self.host = host
        self.kept_facts: dict[str, tuple[str, int | None, int | None]] = {}

    # ------------------------------------------------------------------ the ladder's view

    def ladder_view(self) -> promotion.LadderView:
        rows = [r for r in self.host.journal.run_rows()
                if r["kind"] == RunKind.EXPERIMENT and r["status"] == RunStatus.KEEP.value]
        device = self.ladder_device()
        ladder = promotion.ladder_for(self.host.workspace.config.ladder, device)
        if len(ladder) < 2:
            return promotion.LadderView(ladder=ladder)
        return promotion.LadderView(
            ladder=ladder, kept=tuple(self.kept_change(r, device) for r in rows),
            promotions=tuple(self.host.journal.promotion_records()),
            rules=self.host.evidence.rules().keep)

    def kept_change(self, row: dict, device: str) -> promotion.KeptChange:
        """A kept run as the ladder sees it; the git facts of a commit never change, so
        they are read once."""
        cache = self.kept_facts
        commit = row["commit_sha"]
        if commit not in cache:
            try:
                parent = self.host.workspace.parent_of(commit)
            except WorkspaceError:        # a root commit, or one git no longer has
                cache[commit] = ("", None, None)
            else:
                cache[commit] = (parent, self.depth_at(commit, device),
                                 self.depth_at(parent, device))
        parent, depth, parent_depth = cache[commit]
        return promotion.KeptChange(row["id"], row["experiment"], commit, parent, depth,
                                    parent_depth)

    def depth_file(self, commit: str, device: str) -> tuple[str, str] | None:
        """(target, its text) for the target file that sets DEPTH at commit."""
        for target in self.host.workspace.config.targets:
            try:
                text = self.host.workspace.file_at(commit, target)
            except WorkspaceError:
                continue
            if promotion.depth_of(text, device) is not None:
                return target, text
        return None

    def depth_at(self, commit: str, device: str) -> int | None:
        found = self.depth_file(commit, device)
        return promotion.depth_of(found[1], device) if found else None

    # ------------------------------------------------------------------ starting a run

    def start_promotion(self, plan: RunPlan) -> None:
        step, device = plan.promotion, self.ladder_device()
        promotion_id = step.promotion_id
        if promotion_id is None:
            kept = next(k for k in self.ladder_view().kept if k.run_id == step.run_id)
            promotion_id = self.host.journal.open_promotion(step.run_id, kept.commit, kept.parent,
                                                       kept.depth, step.depth)
            plan = replace(plan, promotion=replace(step, promotion_id=promotion_id))
            self.host.emit(ExperimentSettled(self.host.journal.get_run(step.run_id)))   # "d8…"
        active = self.host.launch(plan, self.side_commit(plan.promotion, device), plan.label)
        self.host.journal.link_promotion_run(active.started.run_id, promotion_id, step.side)

    def ladder_device(self) -> str:
        """The device the runs train on: which branch of `DEPTH = 4 if CPU else 8` counts."""
        measured = [r["device"] for r in self.host.journal.run_rows() if r["device"]]
        return self.host.settings.device or (measured[0] if measured else "cpu")

    def side_commit(self, step: promotion.PromotionStep, device: str) -> str:
        """The step's commit with DEPTH set to its rung; one per side of a promotion, so the
        runs of a side are repeats of one commit."""
        ref = f"{PROMOTION_REF}/{step.promotion_id}/{step.side}"
        existing = run_git(self.host.workspace.root, "rev-parse", "--verify", "-q", ref,
                           check=False)
        if existing:
            return existing.decode().strip()
        target, text = self.depth_file(step.commit, device)
        message = (f"{step.label} (DEPTH = {step.depth})\n\n"
                   f"pairlab-promotion: {step.promotion_id}\n")
        commit = self.host.workspace.make_commit(
            {target: promotion.with_depth(text, device, step.depth)}, message, step.commit)
        run_git(self.host.workspace.root, "update-ref", ref, commit)
        return commit

    def preempt_promotion(self) -> None:
        """Stop the promotion run whose slot the main loop needs; it is re-queued."""
        for active in self.host.loop.runs.values():
            if active.plan.kind == RunKind.PROMOTION:
                active.runner.kill(PREEMPTED, status=RunStatus.INTERRUPTED)

    # ------------------------------------------------------------------ a run finished

    def on_promotion_run(self, done) -> None:
        result, step = done.result, done.plan.promotion
        held, decision = None, None
        if result.status is RunStatus.MEASURED:
            result.status = RunStatus.DISCARD             # a promotion run only measures
            decision = self.promotion_verdict(step, result.val_bpb)
        elif result.status is not RunStatus.INTERRUPTED:
            # a crash at this depth (out of memory, say): the change cannot be shown to
            # transfer, and running it again would crash again
            held = False
        if decision is not None and decision.action is not Action.CONFIRM:
            held = decision.action is Action.KEEP
        if decision is not None:
            reason = promotion.describe(decision, step.depth) if held is not None \
                else decision.reason
        elif held is False:
            reason = f"the {step.side} run at depth {step.depth} failed: {result.message}"
        else:
            reason = ""
        experiment = self.host.journal.finish_promotion_run(
            result, step.promotion_id, held=held, reason=reason,
            measure=judge.measure_of(decision) if decision is not None else None)
        self.host.emit(RunFinished(experiment, result))
        if held is not None:
            self.host.notice("info" if held else "warning", f"#{step.experiment}: {reason}")
            self.host.emit(ExperimentSettled(self.host.journal.get_run(step.run_id)))

    def promotion_verdict(self, step: promotion.PromotionStep, val_bpb: float):
        """The keep rule on the promotion's runs with this one added (not yet in the
        journal); None while a side has no run."""
        view = self.ladder_view()
        records = []
        for record in view.promotions:
            if record.id == step.promotion_id:
                side = "baseline_runs" if step.side == "baseline" else "change_runs"
                record = replace(record, **{side: getattr(record, side) + (val_bpb,)})
                current = record
            records.append(record)
        view = replace(view, promotions=tuple(records))
        return promotion.verdict(view, current)
