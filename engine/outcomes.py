"""The coordinator's side of training: start a planned run, record its outcome, apply the
judge's verdict. Runs on the coordinator thread only (a mixin of Coordinator).

One journal transaction per lifecycle transition: a run starts; a run finishes (with its
proposal's new state and, for a confirmation, the experiment's final outcome); a held win is
settled by a human.
"""

from __future__ import annotations

import copy
from dataclasses import replace

from engine import judge, workers
from engine.events import (BestUpdated, NoiseFloor, ProposalReady, RunFinished, RunStarted,
                           WinHeld)
from engine.journal import FAILED_STATUSES
from engine.loop_state import ActiveRun, Judging
from engine.planner import RunPlan
from engine.records import Decision, DecisionKind, Proposal, ProposalState, RunResult, RunStatus
from engine.runner import Runner



class OutcomesMixin:
    # ------------------------------------------------------------------ starting a run

    def start_run(self, plan: RunPlan) -> bool:
        """Start the planned run; False when it could not (its proposal went stale)."""
        loop = self.loop
        if plan.kind == "experiment":
            proposal = loop.proposals[loop.queue.pop(0)]
            best_commit = self.best_commit()
            if proposal.base_commit != best_commit and not self.rebase(proposal, best_commit):
                return False
            self.protect_human_changes("pairlab committed the next experiment")
            decisions = self.journal.decisions(proposal.id)
            decision = decisions[-1] if decisions else None
            commit = self.workspace.commit_change(
                proposal.files, commit_message(proposal, decision), parent=best_commit,
                human=decision is not None and decision.kind == DecisionKind.EDIT)
            proposal.state = ProposalState.TRAINING
            self.launch(plan, commit, proposal.description)
            return True
        if self.workspace.head() != plan.commit:
            self.protect_human_changes("pairlab checked out a commit to measure it again")
            self.workspace.reset_to(plan.commit)
        self.launch(plan, plan.commit, plan.label)
        return True

    def launch(self, plan: RunPlan, commit: str, description: str) -> None:
        ws, s = self.workspace, self.settings
        run_id = f"run-{self.journal.run_count() + 1:04d}"
        env = dict(s.extra_env)
        if s.max_steps:
            env["PAIRLAB_MAX_STEPS"] = str(s.max_steps)
        runner = Runner(
            ws.root, run_id, s.budget_s, command=ws.config.command(), env=env, device=s.device,
            data_dir=self.loop.data_dir, log_path=ws.logs_dir / f"{run_id}.log",
            result_path=ws.pairlab_dir / "runs" / run_id / "result.json",
            hard_timeout_s=s.hard_timeout_s, metric_source=ws.config.metric_source,
            expected_eval_tokens=self.journal.get_state("eval_tokens"),
            expected_checksum=self.loop.data_checksum)
        experiment_id = self.journal.start_run(
            run_id, commit, plan.kind, proposal_id=plan.proposal_id, description=description,
            log_path=str(runner.log_path))
        started = RunStarted(run_id, experiment_id, plan.proposal_id, commit, description,
                             s.budget_s, str(runner.log_path))
        self.loop.run = ActiveRun(plan, runner, started)
        self.emit(copy.deepcopy(started))
        emit, on_pid = self.emit, self.on_trainer_pid
        workers.start("trainer", self.post,
                      lambda: workers.train(plan, runner, experiment_id, commit, emit, on_pid))

    # ------------------------------------------------------------------ the data

    def on_data(self, checked: workers.DataChecked) -> None:
        loop = self.loop
        loop.checking_data = False
        if checked.prepare_error:
            self.notice("error", f"could not prepare the training data: {checked.prepare_error}",
                        "run `pairlab prepare` to see the details, or `pairlab prepare "
                        "--text FILE...` to use your own text")
            self.request_stop("no training data")
            return
        loop.data_dir = checked.data_dir
        if checked.problem:
            # Missing or corrupt data would crash every run, or worse, change the metric:
            # pause until the user rebuilds it; resuming checks again.
            self.notice("error", checked.problem, "rebuild it with `pairlab prepare --force` "
                        "(with your own text: `pairlab prepare --text FILE... --force`), then "
                        "press p to resume")
            self.pause("the training data is missing or corrupt")
            return
        loop.data_checksum = checked.checksum
        loop.data_ready = True

    # ------------------------------------------------------------------ a run finished

    def on_run(self, done: workers.RunDone) -> None:
        loop = self.loop
        loop.run = None
        plan, result = done.plan, done.result
        if loop.stopping and result.status is RunStatus.KILLED:
            # Stopped mid-run: not judged. An experiment is accepted again, and the planner
            # schedules a baseline, noise repeat or confirmation again from what is missing.
            result.status = RunStatus.INTERRUPTED
            result.message = "the engine was stopped during this run; it trains again next time"
            self.journal.finish_run(result, proposal_state=ProposalState.ACCEPTED
                                    if plan.kind == "experiment" else None)
            self.reset_to_best()
            return
        state = {}
        if result.val_bpb is not None and self.journal.get_state("eval_tokens") is None:
            state["eval_tokens"] = result.metrics.get("eval_tokens")
        measured = result.status is RunStatus.KEEP   # runner: KEEP means "produced a metric"
        if plan.kind in ("baseline", "noise"):
            self.on_measurement(done, state, measured)
        elif plan.kind == "experiment":
            self.on_experiment(done, state, measured)
        else:
            self.on_rerun(done, state, measured)
        self.workspace.write_results_tsv(self.journal)
        self.reset_to_best()

    def on_measurement(self, done: workers.RunDone, state: dict, measured: bool) -> None:
        plan, result = done.plan, done.result
        if measured and plan.kind == "noise":
            result.status = RunStatus.DISCARD          # a noise repeat only measures
        samples = self.noise_values() + ([result.val_bpb] if measured else [])
        complete = measured and len(samples) >= 1 + self.settings.noise_repeats > 1 and \
            self.journal.get_state("noise_floor") is None
        if complete:
            state["noise_floor"] = max(samples) - min(samples)
        experiment = self.journal.finish_run(result, state=state)
        if measured and plan.kind == "baseline":
            self.emit(BestUpdated(done.commit, result.val_bpb, experiment.id))
        self.emit(RunFinished(experiment, result))
        if not measured:
            self.notice("error", f"the {plan.label} did not train: {result.message}",
                        "read its log, fix train.py or the data, then press p to resume")
            self.pause(f"the {plan.label} failed")
        if complete:
            self.emit(NoiseFloor(state["noise_floor"], samples))
            for waiting in list(self.loop.judging.values()):
                if waiting.need == "noise":
                    self.judge_again(waiting)

    def on_experiment(self, done: workers.RunDone, state: dict, measured: bool) -> None:
        result, proposal_id = done.result, done.plan.proposal_id
        loop = self.loop
        loop.proposals[proposal_id].state = ProposalState.DONE
        if not measured:
            experiment = self.journal.finish_run(result, state=state)
            loop.proposals.pop(proposal_id, None)
            self.emit(RunFinished(experiment, result))
            return
        verdict = judge.judge([result.val_bpb], self.best_runs(), self.noise(), self.rules())
        if verdict.verdict in (judge.Verdict.CONFIRM, judge.Verdict.NEED_NOISE):
            result.status = RunStatus.CONFIRMING
            result.message = verdict.reason
            experiment = self.journal.finish_run(result, proposal_state=ProposalState.TRAINING,
                                                 state=state)
            loop.proposals[proposal_id].state = ProposalState.TRAINING
            need = "noise" if verdict.verdict is judge.Verdict.NEED_NOISE else "confirm"
            loop.judging[proposal_id] = Judging(proposal_id, done.run_id, done.commit, need)
            self.emit(RunFinished(experiment, result))
            self.notice("info", verdict.reason)
            return
        result.status = RunStatus.KEEP if verdict.verdict is judge.Verdict.KEEP \
            else RunStatus.DISCARD
        experiment = self.journal.finish_run(result, state=state)
        loop.proposals.pop(proposal_id, None)
        self.emit(RunFinished(experiment, result))
        if result.status is RunStatus.KEEP:
            self.became_best(done.commit, result.val_bpb, experiment.id)

    def on_rerun(self, done: workers.RunDone, state: dict, measured: bool) -> None:
        result, proposal_id = done.result, done.plan.proposal_id
        waiting = self.loop.judging[proposal_id]
        first = self.journal.get_run(waiting.run_id)
        row = next(r for r in self.journal.run_rows() if r["id"] == waiting.run_id)
        settled = RunResult(run_id=waiting.run_id, status=RunStatus.DISCARD,
                            val_bpb=first.val_bpb, memory_gb=row["memory_gb"],
                            training_seconds=row["training_seconds"],
                            total_seconds=row["total_seconds"], num_steps=row["num_steps"],
                            total_tokens=row["total_tokens"], num_params=row["num_params"],
                            device=row["device"], metrics=dict(row["metrics"]))
        if measured:
            result.status = RunStatus.DISCARD          # the re-run only measures
            runs = self.candidate_runs(proposal_id) + [result.val_bpb]
            verdict = judge.judge(runs, self.best_runs(), self.noise(), self.rules())
            settled.metrics["first_val_bpb"] = runs[0]
            settled.metrics["rerun_val_bpb"] = result.val_bpb
            settled.val_bpb = verdict.value
            settled.message = verdict.reason
            settled.status = {judge.Verdict.KEEP: RunStatus.KEEP,
                              judge.Verdict.HOLD: RunStatus.HELD}.get(verdict.verdict,
                                                                      RunStatus.DISCARD)
        else:
            settled.message = "the re-run to confirm a win did not produce a metric"
        held = settled.status is RunStatus.HELD
        proposal_state = ProposalState.HELD if held else ProposalState.DONE
        rerun = self.journal.finish_run(result, proposal_state=proposal_state, settles=settled,
                                        state=state)
        experiment = self.journal.get_run(waiting.run_id)
        self.emit(RunFinished(rerun, result))
        self.emit(RunFinished(experiment, settled))
        if held:
            self.hold(waiting, settled)
            return
        self.loop.judging.pop(proposal_id, None)
        self.loop.proposals.pop(proposal_id, None)
        if settled.status is RunStatus.KEEP:
            self.became_best(waiting.commit, settled.val_bpb, experiment.id)

    def judge_again(self, waiting) -> None:
        """The noise floor a waiting win needed is measured: judge it now."""
        experiment = self.journal.get_run(waiting.run_id)
        verdict = judge.judge(self.candidate_runs(waiting.proposal_id), self.best_runs(),
                              self.noise(), self.rules())
        if verdict.verdict is judge.Verdict.CONFIRM:
            waiting.need = "confirm"
            self.notice("info", verdict.reason)
            return
        row = next(r for r in self.journal.run_rows() if r["id"] == waiting.run_id)
        settled = RunResult(run_id=waiting.run_id, status=RunStatus.KEEP if verdict.verdict is
                            judge.Verdict.KEEP else RunStatus.DISCARD, val_bpb=experiment.val_bpb,
                            memory_gb=row["memory_gb"], training_seconds=row["training_seconds"],
                            total_seconds=row["total_seconds"], num_steps=row["num_steps"],
                            total_tokens=row["total_tokens"], num_params=row["num_params"],
                            device=row["device"], message=verdict.reason,
                            metrics=dict(row["metrics"]))
        experiment = self.journal.finish_run(settled, proposal_state=ProposalState.DONE)
        self.loop.judging.pop(waiting.proposal_id, None)
        self.loop.proposals.pop(waiting.proposal_id, None)
        self.emit(RunFinished(experiment, settled))
        if settled.status is RunStatus.KEEP:
            self.became_best(waiting.commit, settled.val_bpb, experiment.id)

    def hold(self, waiting, settled: RunResult) -> None:
        """An unusually large win waits for a human, in every mode."""
        waiting.need = "human"
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
        self.emit(BestUpdated(commit, val_bpb, experiment_id))
        self.rebase_open_proposals(commit)

    def reset_to_best(self) -> None:
        best = self._best()
        if best and self.workspace.head() != best[0]:
            self.protect_human_changes("pairlab reset the research branch")
            self.workspace.reset_to(best[0])

    # ------------------------------------------------------------------ the judge's inputs

    def rules(self) -> judge.JudgeRules:
        s = self.settings
        return judge.JudgeRules(rerun_small_wins=s.rerun_small_wins,
                                noise_gate=s.noise_repeats > 0,
                                large_win_floors=s.large_win_floors,
                                large_win_fraction=s.large_win_fraction)

    def noise(self) -> float | None:
        return self.journal.get_state("noise_floor")

    def noise_values(self) -> list[float]:
        return [r["val_bpb"] for r in self.journal.run_rows()
                if r["kind"] in ("baseline", "noise") and r["val_bpb"] is not None
                and r["status"] in (RunStatus.KEEP.value, RunStatus.DISCARD.value)]

    def candidate_runs(self, proposal_id: int) -> list[float]:
        """The measured runs of a proposal's experiment: its first run, then its re-runs."""
        rows = [r for r in self.journal.run_rows() if r["proposal_id"] == proposal_id
                and r["val_bpb"] is not None and r["status"] not in
                [s.value for s in FAILED_STATUSES]]
        first = [r["metrics"].get("first_val_bpb", r["val_bpb"]) for r in rows
                 if r["kind"] == "experiment"]
        return first[-1:] + [r["val_bpb"] for r in rows if r["kind"] == "rerun"]

    def best_runs(self) -> list[float]:
        """The runs the best's value stands on."""
        best = self.journal.best()
        if best.proposal_id is None:
            return [best.val_bpb]
        return self.candidate_runs(best.proposal_id) or [best.val_bpb]

    def need_of(self, proposal_id: int) -> str:
        """What a restored, undecided experiment waits for."""
        verdict = judge.judge(self.candidate_runs(proposal_id), self.best_runs(), self.noise(),
                              self.rules())
        return "noise" if verdict.verdict is judge.Verdict.NEED_NOISE else "confirm"


def commit_message(proposal: Proposal, decision: Decision | None) -> str:
    lines = [proposal.description.strip().splitlines()[0][:72] if proposal.description.strip()
             else f"proposal {proposal.id}", ""]
    if proposal.hypothesis:
        lines += [f"Hypothesis: {proposal.hypothesis.strip()}", ""]
    lines.append(f"pairlab-proposal: {proposal.id}")
    lines.append(f"pairlab-agent: {proposal.agent}")
    if decision and decision.kind == DecisionKind.EDIT:
        lines.append("pairlab-edited-by: human")
    return "\n".join(lines) + "\n"
