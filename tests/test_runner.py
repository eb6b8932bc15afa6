"""The runner against real child processes: small fake train.py scripts in tmp dirs."""

from __future__ import annotations

import base64
import codecs
import io
import json
import math
import shutil
import textwrap
import threading
import time

import psutil
import pytest

from engine.base.records import RunStatus
from engine.run import confine
from engine.run.output import OutputCollector
from engine.run.results import check_result
from engine.run.runner import Runner
from tests.conftest import processes_with

# What every fake train.py can use: the progress line of contracts §3, and the real
# hand-off of a model that predicts every token of the vocabulary alike.
PREAMBLE = textwrap.dedent('''
    import json, os, signal, subprocess, sys, time

    def progress_line(step, total):
        return (f"step {step:05d} ({100 * step / total:.1f}%) | loss: {5 - step / total:.6f} "
                f"| lrm: 1.00 | dt: 10ms | tok/sec: 28,000 | mfu: 1.2% | remaining: {total - step}s")

    def hand_over(vocab_size):
        from contextlib import nullcontext
        import torch
        from nanochat import harness

        class Uniform(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.logits = torch.nn.Parameter(torch.zeros(vocab_size))

            def forward(self, idx):
                return self.logits.expand(*idx.shape, -1)

        harness.handoff(Uniform(), autocast=nullcontext(), batch_size=2, num_steps=100,
                        total_tokens=51200, training_seconds=0.0, flops_per_token=0, depth=4)
''')
NO_HAND_OFF = "train.py exited without handing over a model: did it reach the protected hand-off?"
# Rows the evaluator scores in these tests (PAIRLAB_* of the runner's env).
EVAL_ENV = {"PAIRLAB_SEQ_LEN": "64", "PAIRLAB_EVAL_TOKENS": "1024"}


def make_runner(tmp_path, body: str, run_id: str = "r1", **kwargs) -> Runner:
    (tmp_path / "train.py").write_text(PREAMBLE + textwrap.dedent(body))
    kwargs.setdefault("budget_s", 1.0)
    kwargs.setdefault("grace_s", 3.0)
    kwargs.setdefault("term_grace_s", 1.0)
    kwargs.setdefault("device", "cpu")
    return Runner(tmp_path, run_id, **kwargs)


class Recorder:
    def __init__(self):
        self.batches: list[list[str]] = []
        self.progress: list[tuple] = []

    def on_lines(self, lines):
        self.batches.append(lines)

    def on_progress(self, *update):
        self.progress.append(update)

    @property
    def lines(self) -> list[str]:
        return [line for batch in self.batches for line in batch]


def run(runner: Runner) -> tuple:
    recorder = Recorder()
    result = runner.run(recorder.on_lines, recorder.on_progress)
    return result, recorder


def log_lines(result) -> list[str]:
    with open(result.log_path, encoding="utf-8") as f:
        return f.read().splitlines()


@pytest.mark.parametrize("style", ["leading", "trailing"])
def test_progress_updates_are_collapsed_and_parsed(tmp_path, style):
    # autoresearch prints "\rstep ..." with end=""; others print "step ...\r". Either way the
    # callbacks see every step and the log keeps only the final state of the progress line.
    emit = ('print("\\r" + progress_line(step, 100), end="", flush=True)' if style == "leading"
            else 'print(progress_line(step, 100), end="\\r", flush=True)')
    runner = make_runner(tmp_path, f'''
        print("starting", flush=True)
        for step in range(100):
            {emit}
            time.sleep(0.002)
        print()
        print("training done")
    ''')
    result, recorder = run(runner)

    assert result.message == NO_HAND_OFF      # the output is what this test is about
    assert [update[0] for update in recorder.progress] == list(range(100))
    step, loss, percent, elapsed_s, remaining_s = recorder.progress[42]
    assert (step, loss, percent, remaining_s) == (42, pytest.approx(4.58), 42.0, 58.0)
    assert 0 < elapsed_s < 10
    for lines in (log_lines(result), recorder.lines):
        progress = [line for line in lines if "step " in line]
        assert progress == [progress_text(99)]
        assert lines[0] == "starting" and lines[-1] == "training done"


def progress_text(step: int, total: int = 100) -> str:
    return (f"step {step:05d} ({100 * step / total:.1f}%) | loss: {5 - step / total:.6f} "
            f"| lrm: 1.00 | dt: 10ms | tok/sec: 28,000 | mfu: 1.2% | remaining: {total - step}s")


def test_last_progress_state_is_logged_before_an_interrupting_line(tmp_path):
    runner = make_runner(tmp_path, '''
        for step in range(5):
            print(progress_line(step, 10), end="\\r", flush=True)
        print("eval: running validation")
    ''')
    result, recorder = run(runner)
    assert log_lines(result) == [progress_text(4, 10), "eval: running validation"]
    assert recorder.lines == log_lines(result)


@pytest.mark.e2e
def test_metric_comes_from_the_evaluator_not_from_printed_lines(tmp_path, dataset_dir):
    meta = json.loads((dataset_dir / "meta.json").read_text())
    runner = make_runner(tmp_path, f'''
        print("---")
        print("val_bpb:          0.100000")
        print("peak_vram_mb:     10.0")
        hand_over({meta["vocab_size"]})
    ''', data_dir=dataset_dir, env=EVAL_ENV, hard_timeout_s=300)
    result, _ = run(runner)
    assert result.status == RunStatus.MEASURED, result.message
    # Uniform logits pay ln(V) nats on every scored token.
    metrics = result.metrics
    uniform = math.log(meta["vocab_size"]) * metrics["eval_tokens"] / (math.log(2) *
                                                                       metrics["eval_bytes"])
    assert result.val_bpb == pytest.approx(uniform, rel=1e-6)
    assert 0 < metrics["eval_tokens"] <= 1024 and metrics["data_checksum"] == meta["checksum"]
    assert result.num_steps == 100 and result.num_params == meta["vocab_size"]
    assert result.device == "cpu" and result.metric_verified
    assert result.confined is (confine.probe() is None)
    # The engine's clock, not train.py's (which said 0.0)
    assert metrics["reported_training_seconds"] == 0.0
    assert result.training_seconds > 0 and result.total_seconds > result.training_seconds
    assert "val_bpb:          0.100000" in result.log_tail
    assert log_lines(result)[-1].startswith(f"val_bpb:          {result.val_bpb:.6f}")


def test_summary_line_source_reads_the_summary_block(tmp_path):
    # An adopted, unmodified autoresearch checkout writes no result file.
    runner = make_runner(tmp_path, '''
        print("---")
        print("val_bpb:          1.343210")
        print("training_seconds: 300.1")
        print("peak_vram_mb:     1850.2")
        print("num_steps:        2047")
    ''', metric_source="summary_line")
    result, _ = run(runner)
    assert result.status == RunStatus.MEASURED, result.message
    assert result.val_bpb == 1.34321
    assert result.memory_gb == pytest.approx(1850.2 / 1024)
    assert result.num_steps == 2047
    assert not result.metric_verified and not result.confined
    assert result.integrity_label == "metric reported by train.py (not verified)"


def test_child_environment(tmp_path, monkeypatch, dataset_dir):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-secret")
    monkeypatch.setenv("HF_TOKEN", "hf-secret")
    monkeypatch.setenv("PAIRLAB_TEST_VISIBLE", "yes")
    runner = make_runner(tmp_path, '''
        keys = ["PAIRLAB_TIME_BUDGET", "PAIRLAB_MODEL", "PAIRLAB_RUN_ID", "PAIRLAB_DEVICE",
                "PAIRLAB_DATA_DIR", "PAIRLAB_COMPILE", "PYTHONUNBUFFERED", "MALLOC_MMAP_MAX_",
                "MALLOC_TRIM_THRESHOLD_", "PAIRLAB_TEST_VISIBLE", "ANTHROPIC_API_KEY", "HF_TOKEN",
                "TMPDIR"]
        print(json.dumps({"cwd": os.getcwd(), "env": {k: os.environ.get(k) for k in keys},
                          "data": sorted(os.listdir(os.environ["PAIRLAB_DATA_DIR"]))}))
    ''', run_id="env-run", budget_s=2.5, data_dir=dataset_dir,
        env={"PAIRLAB_COMPILE": "0", "PAIRLAB_MODEL": "/tmp/elsewhere"})
    result, recorder = run(runner)

    assert result.status == RunStatus.CRASH   # it handed nothing over
    seen = json.loads(recorder.lines[0])
    assert seen["cwd"] == str(tmp_path)
    run_dir = tmp_path / ".pairlab" / "runs" / "env-run"
    # The training split without val.bin: where the validation data is stays untold.
    assert seen["data"] == ["meta.json", "token_bytes.npy", "tokenizer.pkl", "train.bin"]
    assert seen["env"] == {
        "PAIRLAB_TIME_BUDGET": "2.5",
        "PAIRLAB_MODEL": str(run_dir / "train" / "model"),
        "PAIRLAB_RUN_ID": "env-run",
        "PAIRLAB_DEVICE": "cpu",
        "PAIRLAB_DATA_DIR": str(run_dir / "data"),
        "TMPDIR": str(run_dir / "train"),
        "PAIRLAB_COMPILE": "0",
        "PYTHONUNBUFFERED": "1",
        "MALLOC_MMAP_MAX_": "0",
        "MALLOC_TRIM_THRESHOLD_": "2147483647",
        "PAIRLAB_TEST_VISIBLE": "yes",
        "ANTHROPIC_API_KEY": None,
        "HF_TOKEN": None,
    }
    assert result.log_path == str(tmp_path / ".pairlab" / "logs" / "env-run.log")


def test_exit_without_hand_off_and_stale_model_or_result_is_not_used(tmp_path):
    run_dir = tmp_path / ".pairlab" / "runs" / "r1"
    (run_dir / "train" / "model").mkdir(parents=True)
    (run_dir / "train" / "model" / "program.json").write_text("{}")
    (run_dir / "result.json").write_text(json.dumps({"schema": 1, "run_id": "r1",
                                                     "val_bpb": 0.5}))
    runner = make_runner(tmp_path, 'print("trained, but forgot the hand-off")')
    result, _ = run(runner)
    assert result.status == RunStatus.CRASH
    assert result.message == NO_HAND_OFF
    assert result.val_bpb is None and not (run_dir / "result.json").exists()


@pytest.mark.e2e
def test_a_model_the_evaluator_cannot_load_is_a_crash_of_that_run(tmp_path, dataset_dir):
    runner = make_runner(tmp_path, '''
        model = os.environ["PAIRLAB_MODEL"]
        os.makedirs(model)
        open(model + "/program.json", "w").write("not a graph")
        open(model + "/tensors.pt", "w").write("not tensors either")
    ''', data_dir=dataset_dir, env=EVAL_ENV, hard_timeout_s=300)
    result, _ = run(runner)
    assert result.status == RunStatus.CRASH and result.val_bpb is None
    assert result.message.startswith("nanochat.evaluate failed: model refused: tensors.pt "
                                     "holds something other than tensors")
    assert log_lines(result)[-1].startswith("FAIL: model refused: ")


def test_python_crash_reports_the_exception(tmp_path):
    runner = make_runner(tmp_path, '''
        print("step 1 fine")
        def forward():
            raise ValueError("shapes (4, 8) and (3, 8) do not match")
        forward()
    ''')
    result, _ = run(runner)
    assert result.status == RunStatus.CRASH
    assert result.message == "train.py crashed: ValueError: shapes (4, 8) and (3, 8) do not match"
    assert "Traceback (most recent call last):" in result.log_tail


def test_fail_line_with_exit_3(tmp_path):
    runner = make_runner(tmp_path, '''
        print(progress_line(11, 100), end="\\r", flush=True)
        print("FAIL: loss is nan at step 12", file=sys.stderr)
        sys.exit(3)
    ''')
    result, _ = run(runner)
    assert result.status == RunStatus.CRASH
    assert result.message == "train.py failed: loss is nan at step 12"


def test_out_of_memory_in_output(tmp_path):
    runner = make_runner(tmp_path, '''
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
    ''')
    result, _ = run(runner)
    assert result.status == RunStatus.CRASH
    assert result.message.startswith("out of memory: RuntimeError: CUDA out of memory.")


@pytest.mark.parametrize("signum, message", [
    (9, "killed by signal 9 (out of memory?)"),
    (11, "killed by signal 11 (SIGSEGV)"),
])
def test_killed_by_a_signal(tmp_path, signum, message):
    runner = make_runner(tmp_path, f'''
        print("about to die", flush=True)
        os.kill(os.getpid(), {signum})
    ''')
    result, _ = run(runner)
    assert result.status == RunStatus.CRASH
    assert result.message == message


@pytest.mark.parametrize("overrides, reason", [
    ({"run_id": "someone-else"}, "run_id is 'someone-else', expected 'r1'"),
    ({"val_bpb": float("nan")}, "val_bpb is not a finite positive number: nan"),
    ({"val_bpb": -1.0}, "val_bpb is not a finite positive number: -1.0"),
    ({"val_bpb": "1.2"}, "val_bpb is not a number: '1.2'"),
    ({"eval_tokens": 10}, "eval_tokens is 10, expected 4096"),
    ({"data_checksum": "forged"}, "data_checksum does not match the prepared validation data"),
    ({"schema": 2}, "schema is 2, expected 1"),
])
def test_a_wrong_evaluator_result_is_refused(overrides, reason):
    result = {"schema": 1, "run_id": "r1", "val_bpb": 1.2, "eval_tokens": 4096,
              "eval_bytes": 16000, "data_checksum": "abc123", **overrides}
    metrics, error = check_result(json.dumps(result).encode(), "r1", 4096, "abc123")
    assert (metrics, error) == ({}, reason)


def test_an_evaluator_result_that_is_not_an_object_is_refused():
    assert check_result(b"[1.2]", "r1", None, None) == ({}, "not a JSON object")
    assert check_result(json.dumps({"schema": 1, "run_id": "r1", "val_bpb": 1.2}).encode(),
                        "r1", None, None)[1] is None


def wait_gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def test_hard_timeout_kills_the_whole_group(tmp_path, marker):
    # The grandchild keeps the output pipe open too: the runner must not hang on it. (Its
    # pid is the run's PID namespace's: it is found by the marker on its command line.)
    runner = make_runner(tmp_path, f'''
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "{marker}"])
        open(os.path.join(os.environ["TMPDIR"], "grandchild.started"), "w").close()
        time.sleep(60)
    ''', budget_s=1.0, hard_timeout_s=2.5)
    started = time.monotonic()
    result, _ = run(runner)

    assert result.status == RunStatus.TIMEOUT
    assert result.message == "no result after 2.5s (budget 1s): killed"
    assert result.total_seconds >= 2.5
    assert time.monotonic() - started < 6
    assert (tmp_path / ".pairlab" / "runs" / "r1" / "train" / "grandchild.started").exists()
    assert processes_with(marker) == []
    assert runner.pid is None


def test_endless_output_hits_the_hard_timeout(tmp_path):
    runner = make_runner(tmp_path, '''
        while True:
            print("still going", flush=True)
            time.sleep(0.001)
    ''', hard_timeout_s=1.0)
    started = time.monotonic()
    result, recorder = run(runner)
    assert result.status == RunStatus.TIMEOUT
    assert result.message == "no result after 1s (budget 1s): killed"
    assert len(result.log_tail.splitlines()) == 40
    assert len(recorder.batches) <= 20 * (time.monotonic() - started) + 3


def test_silence_watchdog(tmp_path):
    runner = make_runner(tmp_path, '''
        print("loading", flush=True)
        time.sleep(60)
    ''', hard_timeout_s=30, silence_timeout_s=0.5)
    started = time.monotonic()
    result, _ = run(runner)
    assert result.status == RunStatus.TIMEOUT
    assert result.message == "stalled: no output for 0.5s (budget 1s): killed"
    assert time.monotonic() - started < 5


def test_slow_warm_up_that_keeps_printing_steps_is_not_killed(tmp_path):
    # autoresearch's untimed first steps: the percent stays at 0 while they run, here for
    # longer than the fixed deadline of 2 x budget + grace (4 s); then timed steps to the end.
    runner = make_runner(tmp_path, '''
        started = time.monotonic()
        for step in range(10):
            print("\\r" + progress_line(0, 4), end="", flush=True)
            time.sleep(0.5)
        for step in range(1, 5):
            print("\\r" + progress_line(step, 4), end="", flush=True)
            time.sleep(0.1)
        print()
        print("---\\nval_bpb: 1.500000")   # timing is under test here, not the metric
    ''', budget_s=1.0, grace_s=2.0, silence_timeout_s=3.0, metric_source="summary_line")
    result, recorder = run(runner)
    assert result.status == RunStatus.MEASURED, result.message
    assert result.total_seconds > 4.0
    assert [update[2] for update in recorder.progress][-1] == 100.0


def test_a_silent_start_up_is_not_killed_before_the_stall_limit(tmp_path):
    # a header, then a start-up (a torch.compile) silent past the fixed deadline (1.5 s)
    runner = make_runner(tmp_path, '''
        started = time.monotonic()
        print("device: cpu | compiling", flush=True)
        time.sleep(3)
        print(progress_line(2, 2), flush=True)
        print("---\\nval_bpb: 1.500000")
    ''', budget_s=0.5, grace_s=0.5, silence_timeout_s=10.0, metric_source="summary_line")
    result, _ = run(runner)
    assert result.status == RunStatus.MEASURED, result.message
    assert result.total_seconds > 1.5


def test_a_run_printing_its_own_way_gets_the_fixed_deadline(tmp_path):
    runner = make_runner(tmp_path, '''
        while True:
            print("epoch 1, still going", flush=True)
            time.sleep(0.05)
    ''', budget_s=0.5, grace_s=0.5, silence_timeout_s=10.0)
    result, _ = run(runner)
    assert result.status == RunStatus.TIMEOUT
    assert result.message == "no result after 1.5s (budget 0.5s): killed"


def test_a_run_that_falls_silent_after_its_steps_is_killed_as_stalled(tmp_path):
    runner = make_runner(tmp_path, '''
        for step in range(3):
            print(progress_line(0, 4), flush=True)
        time.sleep(60)
    ''', budget_s=1.0, grace_s=60.0, silence_timeout_s=1.0)
    result, _ = run(runner)
    assert result.status == RunStatus.TIMEOUT
    assert result.message == "stalled: no output for 1s (budget 1s): killed"


def test_a_timed_run_far_past_its_own_budget_is_killed(tmp_path):
    # Halfway with 1 s to go says its own budget is 2 s (whatever the engine passed): past
    # 2 x 2 s + 0.5 s since its timed steps began, it is killed though it still prints.
    runner = make_runner(tmp_path, '''
        while True:
            print(progress_line(1, 2), flush=True)
            time.sleep(0.2)
    ''', budget_s=0.5, grace_s=0.5, silence_timeout_s=5.0)
    started = time.monotonic()
    result, _ = run(runner)
    assert result.status == RunStatus.TIMEOUT
    assert "after its timed training began, far past its budget of 2s " \
        "(limit 2 x budget + 0.5s): killed" in result.message
    assert time.monotonic() - started > 3.5


def test_line_flood_arrives_in_few_batches(tmp_path):
    runner = make_runner(tmp_path, '''
        for i in range(20000):
            print(f"line {i}")
    ''')
    started = time.monotonic()
    result, recorder = run(runner)
    assert result.message == NO_HAND_OFF
    expected = [f"line {i}" for i in range(20000)]
    assert recorder.lines == expected
    assert log_lines(result) == expected
    assert len(recorder.batches) <= 20 * (time.monotonic() - started) + 3   # not 20,000


@pytest.mark.parametrize("ignores_sigterm", [False, True])
def test_kill_from_another_thread(tmp_path, ignores_sigterm):
    ignore = "signal.signal(signal.SIGTERM, signal.SIG_IGN)" if ignores_sigterm else ""
    runner = make_runner(tmp_path, f'''
        {ignore}
        print("training", flush=True)
        time.sleep(60)
    ''', budget_s=30, term_grace_s=0.5)
    running = threading.Event()
    started_pids, running_pids = [], []

    def on_lines(lines):
        running_pids.append(runner.pid)
        running.set()

    killer = threading.Thread(target=lambda: running.wait(10) and runner.kill())
    killer.start()
    started = time.monotonic()
    result = runner.run(on_lines, on_start=started_pids.append)
    killer.join()

    assert result.status == RunStatus.KILLED
    assert result.message == "killed by the user"
    assert time.monotonic() - started < 5
    assert started_pids and running_pids[0] == started_pids[0]
    assert wait_gone(started_pids[0])
    assert runner.pid is None


def test_kill_before_the_run_starts(tmp_path):
    runner = make_runner(tmp_path, "time.sleep(60)", budget_s=30)
    runner.kill("engine shutting down", RunStatus.INTERRUPTED)
    started = time.monotonic()
    result = runner.run()
    assert (result.status, result.message) == (RunStatus.INTERRUPTED, "engine shutting down")
    assert time.monotonic() - started < 5


def test_command_that_cannot_start(tmp_path):
    runner = Runner(tmp_path, "r1", budget_s=1, command=["no-such-trainer-binary", "train.py"])
    result = runner.run()
    assert result.status == RunStatus.CRASH
    # Confined, the launcher starts it and says so; unconfined, Popen itself fails.
    assert result.message.endswith("could not start no-such-trainer-binary train.py: "
                                   "No such file or directory")


def test_collector_is_independent_of_chunk_boundaries():
    stream = ("first\r\n\rstep 00001 (10.0%) | loss: 4.000000 | remaining: 9s"
              "\rstep 00002 (20.0%) | loss: 3.500000 | remaining: 8s\n"
              "é unicode line\nwarn: x\r" + "y" * 10 + "\nlast without newline")

    def collect(chunks):
        collector = OutputCollector(io.StringIO(), time.monotonic())
        for chunk in chunks:
            collector.feed(chunk)
        collector.finish()
        lines, progress = collector.take()
        return lines, [update[:3] for update in progress]

    whole = collect([stream])
    assert whole == (
        ["first", "step 00002 (20.0%) | loss: 3.500000 | remaining: 8s", "é unicode line",
         "warn: x", "y" * 10, "last without newline"],
        [(1, 4.0, 10.0), (2, 3.5, 20.0)],
    )
    assert collect(list(stream)) == whole


def test_the_open_line_is_handed_over_live_and_cleared_once_finished():
    collector = OutputCollector(io.StringIO(), time.monotonic())
    seen = []

    def feed(text):
        collector.feed(text)
        seen.append(collector.take_live())

    feed("device: cpu\n")                                     # a plain line: nothing open
    feed("\rstep 00001 (10.0%) | loss: 4.000000 | remaining: 9s")   # autoresearch: "\r" first
    feed("\rstep 00002 (20.0%) | loss: 3.500000 | remaining: 8s")
    seen.append(collector.take_live())                        # unchanged: nothing to send
    feed("   \n")                                             # train.py's final print()
    feed("50%\r")                                             # "text\r" writers
    feed("60%\r")
    feed("half a li")                                         # a plain line, cut by a read
    feed("ne\n")
    collector.finish()
    seen.append(collector.take_live())
    assert seen == [None, "step 00001 (10.0%) | loss: 4.000000 | remaining: 9s",
                    "step 00002 (20.0%) | loss: 3.500000 | remaining: 8s", None, "", "50%",
                    "60%", "half a li", "", None]
    lines, _ = collector.take()
    assert lines == ["device: cpu", "step 00002 (20.0%) | loss: 3.500000 | remaining: 8s   ",
                     "60%", "half a line"]


def test_a_run_reports_its_progress_line_live_while_it_trains(tmp_path):
    runner = make_runner(tmp_path, """
        for step in range(1, 6):
            print("\\r" + progress_line(step, 5), end="", flush=True)
            time.sleep(0.3)
        print("\\n---\\nval_bpb: 1.500000")
    """, metric_source="summary_line")
    live = []
    result = runner.run(on_live=live.append)
    assert result.status == RunStatus.MEASURED
    steps = [text for text in live if text.startswith("step ")]
    assert len(steps) >= 4 and steps[-1].startswith("step 00005 (100.0%)")
    assert live[-1] == ""                                     # finished: nothing open
    assert len(live) < 20                                     # one update per change, no echo


KEY = "sk-ant-api03-RUNNER-secret-0123456789abcdefghijklmnopqrstuvwxyz"


def test_the_run_output_is_redacted_before_it_is_written_kept_or_handed_on(monkeypatch):
    # A run that found the key anyway prints it in every form it can think of; the log, the
    # kept tail, the lines handed on and the open line get none of them.
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    raw = KEY.encode()
    forms = [KEY, KEY[::-1], codecs.encode(KEY, "rot13"), raw.hex(), raw.hex().upper(),
             base64.b64encode(b"x" + raw).decode(), base64.urlsafe_b64encode(b"xy" + raw).decode(),
             base64.b32encode(b"abc" + raw).decode(), KEY[:20], KEY[20:40], KEY[40:]]
    log = io.StringIO()
    collector = OutputCollector(log, time.monotonic())
    collector.feed("".join(f"form {i}: {form}\n" for i, form in enumerate(forms)))
    collector.feed(f"\rstep 00001 (10.0%) | loss: 4.0 | {KEY[::-1]}")
    live = collector.take_live()
    collector.finish()
    lines, _ = collector.take()
    shown = "\n".join([log.getvalue(), *collector.kept, *lines, live])
    for form in forms:
        assert form not in shown
    assert lines[0] == "form 0: [redacted]" and lines[3] == "form 3: [redacted]"
    assert live.endswith("| [redacted]")


@pytest.mark.skipif(confine.probe() is not None, reason=f"no confinement: {confine.probe()}")
def test_a_confined_run_that_could_read_the_validation_split_is_not_started(tmp_path,
                                                                             dataset_dir):
    # The data inside the workspace, which the training process may read: Landlock cannot
    # carve val.bin out of a folder it allows, so the run is refused, with what to do.
    data = tmp_path / "data"
    shutil.copytree(dataset_dir, data)
    runner = make_runner(tmp_path, 'open("started", "w").close()', data_dir=data)
    result, _ = run(runner)
    assert result.status is RunStatus.CRASH and not (tmp_path / "started").exists()
    assert result.message == (
        f"the validation split {data / 'val.bin'} lies inside {tmp_path.resolve()}, which the "
        "confined training process may read: keep the data cache (PAIRLAB_CACHE, or the data "
        "dir you gave) outside the workspace, the Python environment and the system's folders")
