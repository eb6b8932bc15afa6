"""The coordinator's side of training: start a planned run, record its outcome, apply the
judge's verdict. Runs on the coordinator thread only (a mixin of Coordinator).

One journal transaction per lifecycle transition: a run starts; a run finishes (with its
proposal's new state and, for a confirmation, the experiment's final outcome); a held win is
settled by a human.
"""

from __future__ import annotations

import copy
from dataclasses import replace

from engine.base.events import (BestUpdated, ExperimentSettled, NoiseFloor, ProposalReady,
                                RunFinished, RunStarted, WinHeld)
from engine.base.records import DecisionKind, ProposalState, Revert, RunKind, RunResult, RunStatus
from engine.loop import judge, keep_rule, keep_stats, workers
from engine.loop.loop_state import ActiveRun, Judging
from engine.loop.lost_runs import MAX_LOST_RUNS
from engine.loop.planner import Need, RunPlan
from engine.run.runner import Runner
from engine.scale import ray_executor


class OutcomesMixin:
    # ------------------------------------------------------------------ starting a run

    def start_run(self, plan: RunPlan) -> None:
        """Start the planned run, unless its proposal went stale (the planner plans anew)."""
        loop = self.loop
        if plan.kind == RunKind.PROMOTION:
            self.promoting.start_promotion(plan)
            return
        side = self.trains_aside(plan)
        if plan.kind in (RunKind.EXPERIMENT, RunKind.SPECULATIVE):
            if plan.kind == RunKind.EXPERIMENT:
                loop.queue.remove(plan.proposal_id)
            proposal = loop.proposals[plan.proposal_id]
            best_commit = self.program.best_commit()
            if proposal.base_commit != best_commit and not self.drafting.rebase(proposal,
                                                                                best_commit):
                return
            decisions = self.journal.decisions(proposal.id)
            decision = decisions[-1] if decisions else None
            human = decision is not None and decision.kind == DecisionKind.EDIT
            message = proposal.commit_message(decision)
            if side:                           # the research branch moves on a keep only
                commit = self.workspace.make_commit(proposal.files, message,
                                                    parent=best_commit, human=human)
            else:
                self.restorer.protect_human_changes("pairlab committed the next experiment")
                commit = self.workspace.commit_change(proposal.files, message,
                                                      parent=best_commit, human=human)
            if plan.kind == RunKind.EXPERIMENT:
                proposal.state = ProposalState.TRAINING
            self.launch(plan, commit, proposal.description)
            return
        if not side and self.workspace.head() != plan.commit:
            self.restorer.protect_human_changes("pairlab checked out a commit to measure it again")
            self.workspace.reset_to(plan.commit)
        self.launch(plan, plan.commit, plan.label)

    def trains_aside(self, plan: RunPlan) -> bool:
        """Whether a run trains in its slot's worktree rather than the workspace's checkout:
        a speculative run (no human accepted it, so the branch must not move for it), a
        promotion run (its side commit is on no branch), and every run when several slots
        train at once."""
        return plan.kind in (RunKind.SPECULATIVE, RunKind.PROMOTION) or len(self.slots) > 1

    def make_runner(self, workdir, run_id: str, slot) -> Runner:
        """The one place a run's executor is built: the slot's working directory, its
        device pin and the session's settings."""
        ws, s = self.workspace, self.settings
        env = {**slot.env, **s.extra_env}
        if s.max_steps:
            env["PAIRLAB_MAX_STEPS"] = str(s.max_steps)
        return ray_executor.runner_class(s)(
            workdir, run_id, s.budget_s, command=ws.config.command(), env=env, device=s.device,
            data_dir=self.loop.data_dir, log_path=ws.logs_dir / f"{run_id}.log",
            result_path=ws.pairlab_dir / "runs" / run_id / "result.json",
            hard_timeout_s=s.hard_timeout_s, metric_source=ws.config.metric_source,
            expected_eval_tokens=self.journal.get_state("eval_tokens"),
            expected_checksum=self.loop.data_checksum, code_files=ws.config.targets,
            # a slot's worktree shares its workspace's compile caches; a Ray worker keeps its own
            cache_dir=ws.pairlab_dir / "cache" if s.executor == "local" else None)

    def launch(self, plan: RunPlan, commit: str, description: str) -> ActiveRun:
        """Start the run in a free slot; returns it."""
        slot = next(slot for slot in self.slots if slot.index not in self.loop.runs)
        workdir = self.worktrees.checkout(slot, commit) if self.trains_aside(plan) \
            else self.workspace.root
        run_id = f"run-{self.journal.run_count() + 1:04d}"
        runner = self.make_runner(workdir, run_id, slot)
        experiment_id = self.journal.start_run(
            run_id, commit, plan.kind, proposal_id=plan.proposal_id, description=description,
            log_path=str(runner.log_path))
        started = RunStarted(run_id, experiment_id, plan.proposal_id, commit, description,
                             self.settings.budget_s, str(runner.log_path),
                             speculative=plan.kind == RunKind.SPECULATIVE, slot=slot.index,
                             slots=len(self.slots), kind=plan.kind)
        active = self.loop.runs[slot.index] = ActiveRun(plan, runner, started, slot)
        self.emit(copy.deepcopy(started))
        emit, on_pid = self.emit, self.on_trainer_pid
        workers.start(workers.Worker.TRAINER, self.post, lambda: workers.train(
            plan, runner, experiment_id, commit, emit, on_pid, slot.index), slot=slot.index)
        return active

    # ------------------------------------------------------------------ the data

    def on_data(self, checked: workers.DataChecked) -> None:
        loop = self.loop
        loop.checking_data = False
        if checked.prepare_error:
            self.notice("error", f"could not prepare the training data: {checked.prepare_error}",
                        "run `pairlab prepare` to see the details, or `pairlab prepare "
                        "--text FILE...` to use your own text")
            self.request_stop("no training data", failed=True)
            return
        loop.data_dir = checked.data_dir
        if checked.problem:
            # Missing or corrupt data would crash every run, or worse, change the metric:
            # pause until the user rebuilds it; resuming checks again.
            self.halt("the training data is missing or corrupt", checked.problem,
                      "rebuild it with `pairlab prepare --force` (with your own text: "
                      "`pairlab prepare --text FILE... --force`)")
            return
        if checked.first_check is not None and checked.first_check.failed:
            # The same check as `pairlab doctor`: seconds, where a broken baseline would
            # have cost a whole budget first.
            self.halt("the first-start check failed",
                      f"the first-start check failed before the baseline: "
                      f"{checked.first_check.detail}",
                      "fix train.py, the data or the setup (`pairlab doctor` runs the check "
                      "again)")
            return
        loop.data_checksum = checked.checksum
        loop.data_ready = True

    # ------------------------------------------------------------------ a run finished

    def on_run(self, done: workers.RunDone) -> None:
        loop = self.loop
        active = loop.runs.pop(done.slot)
        done.plan = plan = active.plan          # a speculative run accepted meanwhile
        result = done.result
        if active.superseded:
            self.speculation.superseded_run(done, active.superseded)
            return
        if loop.stopping and result.status is RunStatus.KILLED:
            # Stopped mid-run: not judged. An experiment is accepted again, and the planner
            # schedules a baseline, noise repeat or confirmation again from what is missing.
            result.status = RunStatus.INTERRUPTED
            result.message = "the engine was stopped during this run; it trains again next time"
            self.journal.finish_run(result, proposal_state=ProposalState.ACCEPTED
                                    if plan.kind == RunKind.EXPERIMENT else None)
            self.reset_to_best()
            return
        if result.status is RunStatus.INTERRUPTED:
            if self.lost.lost_runs(plan) < MAX_LOST_RUNS:
                self.lost.requeue_lost(done)
                return
            result.status = RunStatus.CRASH      # a run that kills its worker every time
            result.message += f" ({MAX_LOST_RUNS + 1} times in a row: not again)"
        if plan.kind == RunKind.SPECULATIVE:
            self.speculation.trained_ahead(done)
            return
        state = {}
        if result.val_bpb is not None and self.journal.get_state("eval_tokens") is None:
            state["eval_tokens"] = result.metrics.get("eval_tokens")
        measured = result.status is RunStatus.MEASURED
        if plan.kind in (RunKind.BASELINE, RunKind.NOISE):
            self.on_measurement(done, state, measured)
        elif plan.kind == RunKind.EXPERIMENT:
            self.on_experiment(done, state, measured)
        elif plan.kind == RunKind.PROMOTION:
            self.promoting.on_promotion_run(done)
        else:
            self.on_rerun(done, state, measured)
        self.workspace.write_results_tsv(self.journal)
        self.reset_to_best()

    def on_measurement(self, done: workers.RunDone, state: dict, measured: bool) -> None:
        """The baseline, or a run of the best again: a noise repeat, a confirmation that
        re-runs the best, or a re-run that follows drift."""
        plan, result = done.plan, done.result
        if measured:      # the baseline is the first best; a run of the best only measures
            result.status = RunStatus.KEEP if plan.kind == RunKind.BASELINE else RunStatus.DISCARD
        noise = None
        if measured:
            groups = self.evidence.run_groups()
            groups.setdefault(done.commit, []).append(result.val_bpb)
            noise = keep_stats.pooled_noise(groups.values())
            if noise.sigma is not None:
                state["noise_floor"] = noise.sigma
        experiment = self.journal.finish_run(result, state=state)
        if measured and plan.kind == RunKind.BASELINE:
            self.emit(BestUpdated(done.commit, result.val_bpb, experiment.id))
        self.emit(RunFinished(experiment, result))
        if not measured:
            self.halt(f"the {plan.label} failed",
                      f"the {plan.label} did not train: {result.message}",
                      "read its log, fix train.py or the data")
            return
        if noise.sigma is not None:
            self.emit(NoiseFloor(noise.sigma, self.evidence.run_groups()[done.commit]))
        if plan.kind == RunKind.NOISE and done.commit == self.program.measured_commit():
            self.recheck_best(done.run_id)
        for waiting in list(self.loop.judging.values()):
            # a keep among them sends the wins on the old best back to train again
            if waiting.need == Need.BEST and waiting.proposal_id in self.loop.judging:
                self.rejudge(waiting, None)

    def on_experiment(self, done: workers.RunDone, state: dict, measured: bool) -> None:
        """Judge an experiment's first run (a speculative run's too, once accepted)."""
        result, proposal_id = done.result, done.plan.proposal_id
        loop = self.loop
        loop.proposals[proposal_id].state = ProposalState.DONE
        if not measured:
            experiment = self.journal.finish_run(result, state=state)
            loop.proposals.pop(proposal_id, None)
            self.emit(RunFinished(experiment, result))
            return
        # a result no better than the best is discarded here, before any noise estimate;
        # with several slots the best may have moved: judged against the best at its base
        base, to_beat = self.moved_best.runs_to_beat(done.commit)
        evidence = self.evidence
        verdict = judge.judge([result.val_bpb], to_beat, evidence.noise(), evidence.rules())
        if not self.program.is_best_base(base) and verdict.verdict is not judge.Verdict.DISCARD:
            self.moved_best.won_on_moved_base(done, state, base, verdict)
            return
        result.message = verdict.reason
        if verdict.verdict is judge.Verdict.CONFIRM:
            result.status = RunStatus.CONFIRMING
            experiment = self.journal.finish_run(result, proposal_state=ProposalState.TRAINING,
                                                 state=state, measure=verdict.measure)
            loop.proposals[proposal_id].state = ProposalState.TRAINING
            loop.judging[proposal_id] = Judging(proposal_id, done.run_id, done.commit,
                                                Need(verdict.rerun))
            self.emit(RunFinished(experiment, result))
            self.notice("info", f"#{proposal_id}: {verdict.reason}")
            return
        result.status = RunStatus.KEEP if verdict.verdict is judge.Verdict.KEEP \
            else RunStatus.DISCARD
        experiment = self.journal.finish_run(result, state=state, measure=verdict.measure)
        loop.proposals.pop(proposal_id, None)
        self.emit(RunFinished(experiment, result))
        if result.status is RunStatus.KEEP:
            self.became_best(done.commit, result.val_bpb, experiment.id)

    def on_rerun(self, done: workers.RunDone, state: dict, measured: bool) -> None:
        result, waiting = done.result, self.loop.judging.get(done.plan.proposal_id)
        if waiting is None:            # the best moved meanwhile: it trains again there
            if measured:
                result.status = RunStatus.DISCARD
            self.emit(RunFinished(self.journal.finish_run(result, state=state), result))
            return
        if measured:
            result.status = RunStatus.DISCARD          # the re-run only measures
            self.rejudge(waiting, result, state)
            return
        settled = self.settled_result(waiting, RunStatus.DISCARD,
                                      "the re-run to confirm a win did not produce a metric")
        rerun = self.journal.finish_run(result, proposal_state=ProposalState.DONE,
                                        settles=settled, state=state)
        self.emit(RunFinished(rerun, result))
        self.emit(RunFinished(self.journal.get_run(waiting.run_id), settled))
        self.loop.judging.pop(waiting.proposal_id, None)
        self.loop.proposals.pop(waiting.proposal_id, None)

    def rejudge(self, waiting: Judging, rerun: RunResult | None, state: dict | None = None
                ) -> None:
        """Judge a waiting experiment again, after a re-run of it (`rerun`, not yet in the
        journal) or of the best (already there)."""
        runs = self.evidence.candidate_runs(waiting.commit) + ([rerun.val_bpb] if rerun else [])
        best_runs = self.evidence.best_runs()
        groups = self.evidence.run_groups()
        if rerun is not None:
            groups.setdefault(waiting.commit, []).append(rerun.val_bpb)
        verdict = judge.judge(runs, best_runs, keep_stats.pooled_noise(groups.values()),
                              self.evidence.rules())
        if verdict.verdict is judge.Verdict.CONFIRM:
            waiting.need = Need(verdict.rerun)
            if rerun is None:
                self.journal.record_measure(waiting.run_id, verdict.measure)
            else:
                finished = self.journal.finish_run(
                    rerun, proposal_state=ProposalState.TRAINING, state=state,
                    measure=verdict.measure, measured_run=waiting.run_id)
                self.emit(RunFinished(finished, rerun))
            self.notice("info", f"#{waiting.proposal_id}: {verdict.reason}")
            return
        status = {judge.Verdict.KEEP: RunStatus.KEEP,
                  judge.Verdict.HOLD: RunStatus.HELD}.get(verdict.verdict, RunStatus.DISCARD)
        settled = self.settled_result(waiting, status, verdict.reason)
        settled.val_bpb = verdict.value
        settled.metrics["first_val_bpb"] = runs[0]
        held = status is RunStatus.HELD
        proposal_state = ProposalState.HELD if held else ProposalState.DONE
        if rerun is None:
            self.journal.finish_run(settled, proposal_state=proposal_state,
                                    measure=verdict.measure)
        else:
            finished = self.journal.finish_run(rerun, proposal_state=proposal_state,
                                               settles=settled, state=state,
                                               measure=verdict.measure)
            self.emit(RunFinished(finished, rerun))
        experiment = self.journal.get_run(waiting.run_id)
        self.emit(RunFinished(experiment, settled))
        if held:
            self.hold(waiting, settled)
            return
        self.loop.judging.pop(waiting.proposal_id, None)
        self.loop.proposals.pop(waiting.proposal_id, None)
        if status is RunStatus.KEEP:
            self.became_best(waiting.commit, settled.val_bpb, experiment.id)

    def settled_result(self, waiting: Judging, status: RunStatus, message: str) -> RunResult:
        """The waiting experiment's run as recorded, with its final status and message."""
        return self.recorded_result(waiting.run_id, status, message)

    def recorded_result(self, run_id: str, status: RunStatus, message: str | None
                        ) -> RunResult:
        """A finished run as the journal holds it, with the given status and message
        (None: the recorded one)."""
        row = next(r for r in self.journal.run_rows() if r["id"] == run_id)
        return RunResult(run_id=run_id, status=status, val_bpb=row["val_bpb"],
                         memory_gb=row["memory_gb"], training_seconds=row["training_seconds"],
                         total_seconds=row["total_seconds"], num_steps=row["num_steps"],
                         total_tokens=row["total_tokens"], num_params=row["num_params"],
                         device=row["device"],
                         message=row["message"] if message is None else message,
                         metrics=dict(row["metrics"]),
                         confined=bool(row["confined"]),
                         metric_verified=bool(row["metric_verified"]))

    def hold(self, waiting, settled: RunResult) -> None:
        """An unusually large win waits for a human, in every mode."""
        waiting.need = Need.HUMAN
        proposal = self.loop.proposals[waiting.proposal_id]
        proposal.state = ProposalState.HELD
        best = self.snapshot.best
        experiment = self.journal.get_run(waiting.run_id)
        self.notice("warning", f"unusually large win: look before it becomes the best "
                    f"(#{waiting.proposal_id}, val_bpb {settled.val_bpb:.6f})",
                    f"accept #{waiting.proposal_id} to keep it, or veto it to discard it")
        self.emit(WinHeld(waiting.proposal_id, experiment.id, settled.val_bpb,
                          best[1] if best else settled.val_bpb, proposal.diff))
        # Back in the review queue, marked held: a human reads its diff, then a or v.
        self.emit(ProposalReady(copy.deepcopy(proposal)))

    def became_best(self, commit: str, val_bpb: float, experiment_id: int) -> None:
        self.snapshot = replace(self.snapshot, best=(commit, val_bpb))
        self.workspace.reset_to(commit)
        self.program.keep_program_on(commit)
        self.emit(BestUpdated(commit, val_bpb, experiment_id))
        self.drafting.rebase_open_proposals(self.program.best_commit())
        self.moved_best.requeue_judgments_off_best()

    def recheck_best(self, run_id: str) -> None:
        """The best ran again (run `run_id`): a keep that its runs now show was noise is
        reverted (keep_rule.recheck), the research branch going back to the best before it,
        with the journal's record of why written first (a crash in between is mended by
        restore, which puts the branch where the journal's best is)."""
        best, previous = self.journal.best(), self.journal.previous_best()
        if best is None or previous is None or best.kind != RunKind.EXPERIMENT:
            return
        groups = self.evidence.run_groups()
        decision = keep_rule.recheck(groups.get(previous.commit) or [previous.val_bpb],
                                     groups.get(best.commit, []),
                                     keep_stats.pooled_noise(groups.values()),
                                     self.evidence.rules().keep)
        if decision is None or decision.action is not keep_rule.Action.DISCARD:
            return
        reverted = self.journal.revert_keep(best.run_id, Revert(
            judge.measure_of(decision), previous.commit, run_id, decision.reason))
        self.emit(ExperimentSettled(reverted))
        self.notice("warning", f"experiment #{best.id} ({best.description}) {decision.reason}; "
                    f"the research branch went back to {previous.commit[:7]}",
                    f"its history stays in the journal (`pairlab report`); its commit is "
                    f"{best.commit[:7]}")
        self.became_best(previous.commit, previous.val_bpb, previous.id)

    def reset_to_best(self) -> None:
        best = self.program.best_commit()
        if self.workspace.head() != best:
            self.restorer.protect_human_changes("pairlab reset the research branch")
            self.workspace.reset_to(best)

