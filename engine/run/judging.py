"""How a training run that ended is judged: killed, timed out, crashed (and why), or
its handed-over model scored by the evaluator; and the RunResult that records it.
A mixin of Runner (engine/run/runner.py), on the thread that ran the training.
"""

from __future__ import annotations

import signal
import subprocess

from engine.base.api_key import redact
from engine.base.records import RunResult, RunStatus
from engine.run import evaluation
from engine.run.process import signal_group
from engine.run.results import (check_result, crash_message, invalid_val_bpb, number,
                                signal_message, summary_block)

TAIL_LINES = 40               # RunResult.log_tail


class JudgingMixin:
    """The verdict on a Runner's run, once the training group is gone."""

    def _judge(self, returncode: int, timed_out_message: str | None) -> RunResult:
        kept = list(self._collector.kept)
        name = self.program_name
        if self._kill_request is not None:
            status, message = self._kill_request
            return self._result(status, message)
        if timed_out_message is not None:
            return self._result(RunStatus.TIMEOUT, timed_out_message)
        if returncode < 0:
            return self._result(RunStatus.CRASH, signal_message(-returncode, kept))
        if returncode != 0:
            return self._result(RunStatus.CRASH, crash_message(name, returncode, kept))
        if self._collector.log_error is not None:
            return self._result(RunStatus.CRASH, f"the run's log could not be written "
                                f"({self._collector.log_error}): free disk space in "
                                f"{self.log_path.parent}")
        if self.metric_source == "summary_line":
            summary = summary_block(kept)
            error = invalid_val_bpb(summary.get("val_bpb"))
            if error:
                return self._result(RunStatus.CRASH, f"summary block rejected: {error}")
            return self._result(RunStatus.MEASURED, "", metrics=summary)
        if not evaluation.handed_over(self.folders):
            return self._result(RunStatus.CRASH, f"{name} exited without handing over a model: "
                                                 "did it reach the protected hand-off?")
        return self._evaluate()

    def _evaluate(self) -> RunResult:
        """Score the handed-over model in the evaluator; the training group is gone."""
        reported = evaluation.read_reported(self.folders.model)
        run = evaluation.run_evaluator(
            self.folders.model, evaluation.evaluator_env(self.child_env(), self.data_dir),
            on_start=self._evaluator_started)
        with self._lock:
            self._proc = None
        self._eval_seconds = run.seconds
        self._append_to_log(run.lines)
        if self._kill_request is not None:
            return self._result(*self._kill_request)
        if run.returncode != 0:
            return self._result(RunStatus.CRASH, crash_message("nanochat.evaluate",
                                                                abs(run.returncode), run.lines))
        metrics, error = check_result(run.result or b"", self.run_id, self.expected_eval_tokens,
                                      self.expected_checksum)
        if error:
            return self._result(RunStatus.CRASH, f"result rejected: {error}")
        self.result_path.write_bytes(run.result)    # the record; the engine already read it
        merged = {**reported, **metrics}
        if "training_seconds" in reported:   # replaced by the engine's clock in _result
            merged["reported_training_seconds"] = reported["training_seconds"]
        return self._result(RunStatus.MEASURED, "", metrics=merged)

    def _evaluator_started(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._proc = proc
            kill_early = self._kill_request is not None
        if kill_early:
            signal_group(proc.pid, signal.SIGTERM)

    def _append_to_log(self, lines: list[str]) -> None:
        lines = [redact(line) for line in lines]    # it prints what the model's graph names
        try:
            with open(self.log_path, "a", encoding="utf-8") as log_file:
                log_file.write("".join(line + "\n" for line in lines))
        except OSError:
            pass      # the evaluator's outcome is judged all the same
        self._collector.kept.extend(lines)

    def _result(self, status: RunStatus, message: str, metrics: dict | None = None) -> RunResult:
        metrics = metrics or {}
        kept = list(self._collector.kept) if self._collector else []
        peak_mb = number(metrics.get("peak_memory_mb", metrics.get("peak_vram_mb")))
        verified = self.metric_source == "result_file"
        if verified:   # the engine's clock: train.py's own figure is kept as reported_*
            metrics = {**metrics, "training_seconds": self._elapsed_s,
                       "total_seconds": self._elapsed_s + self._eval_seconds}
        return RunResult(
            run_id=self.run_id,
            status=status,
            val_bpb=float(metrics["val_bpb"]) if "val_bpb" in metrics else None,
            memory_gb=peak_mb / 1024,
            training_seconds=number(metrics.get("training_seconds")),
            total_seconds=(self._elapsed_s + self._eval_seconds if verified
                           else number(metrics.get("total_seconds")) or self._elapsed_s),
            num_steps=int(number(metrics.get("num_steps"))),
            total_tokens=int(number(metrics.get("total_tokens"))),
            num_params=int(number(metrics.get("num_params"))),
            device=str(metrics.get("device", self.device or "")),
            message=message,
            log_tail="\n".join(kept[-TAIL_LINES:]),
            log_path=str(self.log_path),
            metrics=metrics,
            confined=self.unconfined_reason is None,
            metric_verified=verified,
        )
