"""Run one training run of a workspace's train.py and judge how it went.

The child runs in its own session (process group, engine/run/process.py): a terminal
Ctrl-C reaches only the engine, and a kill takes the whole group, dataloader workers and
grandchildren included. Its output becomes finished lines and progress updates in
engine/run/output.py; how it ended is judged in engine/run/judging.py, from what
engine/run/results.py reads.

val_bpb comes from the evaluator (engine/run/evaluation.py), a separate process that scores
the model train.py handed over, never from anything train.py prints or writes; the
training process runs confined where the kernel allows it (engine/run/confine.py). The one
exception, chosen by the user for an adopted unmodified autoresearch checkout, is
metric_source="summary_line": the `---` summary block, recorded as not verified.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

from engine.run import confine, evaluation, evaluator_processes
from engine.base.records import RunResult, RunStatus
from engine.run.compile_cache import CommitCache, code_key, seed_of
from engine.run.judging import JudgingMixin
from engine.run.output import OutputCollector
from engine.run.process import die_with_engine, has_exited, signal_group
from engine.run.watchdog import DEFAULT_STALL_S, Watchdog

# on_lines(lines): a batch of finished log lines
OnLines = Callable[[list[str]], None]
# on_live(text): the open line changed ("" once it is finished)
OnLive = Callable[[str], None]
# on_progress(step, loss, percent, elapsed_s, remaining_s)
OnProgress = Callable[[int, float, float, float, float], None]

METRIC_SOURCES = ("result_file", "summary_line")

# Variables that look like credentials never reach the training process: train.py is
# written by an agent and its output is shown on screen and stored in logs.
SECRET_NAME_RE = re.compile(r"(_API_KEY|_TOKEN|_SECRET|_SECRET_KEY|_SECRET_ACCESS_KEY|_PASSWORD)$",
                            re.IGNORECASE)
# glibc: no mmap'd chunks and no trimming, so CPU training does not page-fault on every
# step re-faulting freed tensor memory. INT_MAX, because old glibc reads it with atoi.
CPU_MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "2147483647"}

LINE_BATCH_INTERVAL_S = 0.05  # on_lines at most ~20 times a second


def run_paths(workspace_root: Path, run_id: str, log_path: str | Path | None,
              result_path: str | Path | None) -> tuple[Path, Path]:
    """(log, result) of a run: the paths given, else the workspace's .pairlab logs/<run id>.log
    and runs/<run id>/result.json."""
    pairlab_dir = workspace_root / ".pairlab"
    return (Path(log_path) if log_path else pairlab_dir / "logs" / f"{run_id}.log",
            Path(result_path) if result_path else pairlab_dir / "runs" / run_id / "result.json")


def why_unconfined(confined: bool, metric_source: str) -> str | None:
    """Why a run is not confined (None: it is). An adopted repository reads its own data and
    caches wherever it keeps them: only pairlab's train.py is confined."""
    if not confined:
        return "not requested"
    if metric_source == "summary_line":
        return "an adopted repository's own train.py"
    return confine.probe()


class Runner(JudgingMixin):
    """One training run. `run()` blocks (the session calls it in a thread); `kill()` may be
    called from any other thread; `pid` is the trainer's pid while it runs (for the monitor).
    """

    def __init__(self, workspace_root: str | Path, run_id: str, budget_s: float, *,
                 command: Sequence[str] | None = None, env: dict[str, str] | None = None,
                 device: str | None = None, data_dir: str | Path | None = None,
                 log_path: str | Path | None = None, result_path: str | Path | None = None,
                 grace_s: float = 120.0, hard_timeout_s: float | None = None,
                 silence_timeout_s: float | None = DEFAULT_STALL_S, term_grace_s: float = 5.0,
                 metric_source: str = "result_file", expected_eval_tokens: int | None = None,
                 expected_checksum: str | None = None, confined: bool = True,
                 code_files: Sequence[str] = ("train.py",), cache_dir: str | Path | None = None):
        """
        budget_s: the training budget handed to train.py (PAIRLAB_TIME_BUDGET).
        command: argv; default `python train.py` with the engine's interpreter.
        env: extra variables for the child (PAIRLAB_COMPILE=0, PAIRLAB_MAX_STEPS, ...).
        grace_s: start-up, torch.compile and evaluation allowance on top of 2 x budget,
            counted from when the run's timed steps begin (see engine/run/watchdog.py).
        hard_timeout_s: an absolute limit from the start instead of following progress.
        silence_timeout_s: kill when the run prints nothing for this long (None: never).
        term_grace_s: SIGTERM first, SIGKILL after this many seconds.
        metric_source: "result_file" (default: the evaluator scores the handed-over model) or
            "summary_line" (an adopted repository's own summary block, not verified).
        expected_eval_tokens, expected_checksum: when given, the result must match them.
        confined: run train.py under engine.run.confine where the kernel allows it.
        code_files: the files the agent edits (the workspace's targets): their content keys
            the run's compile cache (engine/run/compile_cache.py).
        cache_dir: where the commits' compile caches live; default the .pairlab/cache of
            workspace_root (a slot's worktree passes its workspace's, so slots share them).
        """
        if metric_source not in METRIC_SOURCES:
            raise ValueError(f"metric_source must be one of {METRIC_SOURCES}, not {metric_source!r}")
        self.workspace_root = Path(workspace_root)
        self.run_id = run_id
        self.budget_s = float(budget_s)
        self.command = list(command) if command else [sys.executable, "train.py"]
        self.extra_env = dict(env or {})
        self.device = device
        self.data_dir = data_dir
        self.log_path, self.result_path = run_paths(self.workspace_root, run_id, log_path,
                                                    result_path)
        self.grace_s = grace_s
        self.hard_timeout_s = hard_timeout_s
        self.silence_timeout_s = silence_timeout_s
        self.term_grace_s = term_grace_s
        self.metric_source = metric_source
        self.expected_eval_tokens = expected_eval_tokens
        self.expected_checksum = expected_checksum
        self.folders = evaluation.RunFolders.of(self.result_path.parent)
        self.compile_cache = CommitCache(
            Path(cache_dir) if cache_dir else self.workspace_root / ".pairlab" / "cache",
            code_key(self.workspace_root, code_files), seed_of(data_dir))
        self.unconfined_reason = why_unconfined(confined, metric_source)

        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._proc: subprocess.Popen | None = None
        self._kill_request: tuple[RunStatus, str] | None = None
        self._collector: OutputCollector | None = None
        self._watchdog: Watchdog | None = None
        self._elapsed_s = 0.0   # wall time of the training process, by the engine's clock
        self._eval_seconds = 0.0   # wall time of the evaluator
        self._on_live: OnLive | None = None

    @property
    def pid(self) -> int | None:
        with self._lock:
            proc = self._proc
        return proc.pid if proc is not None and proc.returncode is None else None

    @property
    def program_name(self) -> str:
        """What the messages call the program: the script's file name, else the command."""
        for arg in reversed(self.command):
            if arg.endswith(".py"):
                return os.path.basename(arg)
        return os.path.basename(self.command[0])

    def kill(self, message: str = "killed by the user", status: RunStatus = RunStatus.KILLED) -> None:
        """Stop the run from any thread; `run()` then returns `status` with `message`.
        Returns at once: the group gets SIGTERM now and SIGKILL term_grace_s later."""
        with self._lock:
            if self._kill_request is None:
                self._kill_request = (status, message)
            proc = self._proc
        if proc is not None:
            signal_group(proc.pid, signal.SIGTERM)
        self._wake.set()

    def child_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not SECRET_NAME_RE.search(k)}
        if self._is_cpu_run():
            env.update(CPU_MALLOC_ENV)
        if self.device:
            env["PAIRLAB_DEVICE"] = self.device
        if self.data_dir:
            env["PAIRLAB_DATA_DIR"] = str(self.data_dir)
        env.update(self.extra_env)
        # Set last: the model path, run id and budget are the engine's, never overridden.
        env.update(
            PAIRLAB_TIME_BUDGET=f"{self.budget_s:g}",
            PAIRLAB_MODEL=str(self.folders.model),
            PAIRLAB_RUN_ID=self.run_id,
            PYTHONUNBUFFERED="1",
        )
        if self.metric_source == "result_file":
            # The training split only: where val.bin is stays the evaluator's secret.
            if self.data_dir:
                env["PAIRLAB_DATA_DIR"] = str(self.folders.data)
            env.update(TMPDIR=str(self.folders.writable), **self.compile_cache.env())
        return env

    def _is_cpu_run(self) -> bool:
        if self.device:
            return self.device == "cpu"
        return not os.path.exists("/dev/nvidiactl")   # the harness would pick cuda there

    def run(self, on_lines: OnLines | None = None, on_progress: OnProgress | None = None,
            on_start: Callable[[int], None] | None = None,
            on_live: OnLive | None = None) -> RunResult:
        """Train once and judge it. Callbacks arrive on this thread: on_start with the
        trainer's pid once it runs (for the monitor), on_lines with batches of finished lines
        (at most ~20 a second), on_progress with each parsed progress update, on_live with
        the open line (a `\\r` progress line as it is rewritten) when it changed, at most as
        often as on_lines.
        A run with a valid metric comes back MEASURED: scored, not yet judged; the loop
        turns it into KEEP or DISCARD (engine/loop/outcomes.py)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.result_path.parent.mkdir(parents=True, exist_ok=True)
        self.result_path.unlink(missing_ok=True)   # a stale result must never count
        if self.metric_source != "result_file":
            return self._train(self.command, on_lines, on_progress, on_start, on_live)
        linked = evaluation.prepare_folders(self.folders, self.data_dir)
        # the evaluator's imports, while this run trains
        evaluator_processes.prepare(evaluation.evaluator_env(self.child_env(), self.data_dir))
        cache = self.compile_cache.open()
        try:
            command = self.command
            if self.unconfined_reason is None:
                policy = evaluation.training_policy(self.workspace_root, self.folders, linked,
                                                    cache)
                exposed = evaluation.exposed_validation(policy, self.data_dir)
                if exposed is not None:
                    return self._result(RunStatus.CRASH, exposed)
                command = confine.launcher(policy, self.command)
            return self._train(command, on_lines, on_progress, on_start, on_live)
        finally:
            self.compile_cache.close()

    def _train(self, command, on_lines, on_progress, on_start, on_live) -> RunResult:
        """Start the command, supervise it to its end, and judge the run."""
        started = time.monotonic()
        self._on_live = on_live
        with open(self.log_path, "w", encoding="utf-8") as log_file:
            collector = OutputCollector(log_file, started)
            self._collector = collector
            try:
                proc = subprocess.Popen(
                    command, cwd=self.workspace_root, env=self.child_env(),
                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                    start_new_session=True, preexec_fn=die_with_engine,
                )
            except OSError as exc:
                message = f"could not start {' '.join(self.command)}: {exc.strerror or exc}"
                return self._result(RunStatus.CRASH, message)
            with self._lock:
                self._proc = proc
                kill_early = self._kill_request is not None
            if kill_early:
                signal_group(proc.pid, signal.SIGTERM)
            if on_start is not None:
                on_start(proc.pid)

            reader = threading.Thread(target=collector.read_all, args=(proc.stdout.fileno(),),
                                      name=f"runner-reader-{self.run_id}", daemon=True)
            reader.start()
            try:
                timed_out_message = self._supervise(proc, collector, started, on_lines, on_progress)
            finally:
                # Whatever happened (a callback raising included), nothing of the group
                # may outlive the run: orphans would hold the pipe and the accelerator.
                self._reap_group(proc)
                reader.join(timeout=5)
                if not reader.is_alive():   # else a process that left the group holds the pipe
                    proc.stdout.close()
                with self._lock:
                    self._proc = None
            collector.finish()
            self._deliver(collector, on_lines, on_progress)
        self._elapsed_s = time.monotonic() - started
        return self._judge(proc.returncode, timed_out_message)

    def _supervise(self, proc, collector, started, on_lines, on_progress) -> str | None:
        """Wait for the leader to exit, delivering output; returns a timeout message if one
        of the watchdogs killed the run."""
        timed_out_message = None
        term_sent_at = None
        self._watchdog = Watchdog(self.budget_s, started, grace_s=self.grace_s,
                                  stall_s=self.silence_timeout_s, hard_cap_s=self.hard_timeout_s)
        while not has_exited(proc):
            self._wake.wait(LINE_BATCH_INTERVAL_S)
            self._wake.clear()
            self._deliver(collector, on_lines, on_progress)
            now = time.monotonic()
            if timed_out_message is None and self._kill_request is None:
                timed_out_message = self._watchdog.verdict(now, collector.last_output_at)
                if timed_out_message is not None:
                    signal_group(proc.pid, signal.SIGTERM)
            stopping = timed_out_message is not None or self._kill_request is not None
            if stopping and term_sent_at is None:
                term_sent_at = now
            if term_sent_at is not None and now - term_sent_at > self.term_grace_s:
                signal_group(proc.pid, signal.SIGKILL)
        return timed_out_message

    def _reap_group(self, proc: subprocess.Popen) -> None:
        # The leader is a zombie until reaped, so its pid (the group id) cannot be reused
        # by an unrelated process while we signal the group.
        signal_group(proc.pid, signal.SIGKILL)
        proc.wait()

    def _deliver(self, collector, on_lines, on_progress) -> None:
        lines, progress = collector.take()
        now = time.monotonic()
        for step, loss, percent, elapsed_s, remaining_s in progress:
            if self._watchdog is not None:
                self._watchdog.progress(now, percent, remaining_s)
            if on_progress is not None:
                on_progress(step, loss, percent, elapsed_s, remaining_s)
        if lines and on_lines is not None:
            on_lines(lines)
        live = collector.take_live()
        if live is not None and self._on_live is not None:
            self._on_live(live)
