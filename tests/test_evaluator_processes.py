"""The evaluator's processes (engine/run/evaluator_processes.py): a fork of the pre-imported
server and a fresh interpreter score the same model the same way; one server serves runs
with different settings, holds none of them itself, is started again when it died, and ends
with the engine. Real processes: the server, its forks, the one-shot evaluator."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from engine.run import evaluator_processes
from engine.run.evaluation import evaluator_env, run_evaluator
from nanochat import evaluate
from tests.test_evaluator import EVAL_ENV, SEQ_LEN, Bigram, hand_over, vocab_of

pytestmark = pytest.mark.e2e   # real evaluations


def evaluation_env(dataset_dir, **settings):
    return evaluator_env({**os.environ, **EVAL_ENV, **settings}, dataset_dir)


def the_server(dataset_dir) -> evaluator_processes.EvaluatorServer:
    return evaluator_processes.server_for(evaluation_env(dataset_dir))


@pytest.fixture
def model_dir(dataset_dir, tmp_path):
    return hand_over(Bigram(vocab_of(dataset_dir)), tmp_path / "model")


@pytest.mark.parametrize("mode", ["server", "process"])
def test_a_fork_of_the_server_and_a_fresh_interpreter_score_alike(mode, model_dir, dataset_dir,
                                                                  monkeypatch):
    monkeypatch.setenv("PAIRLAB_EVALUATOR", mode)
    run = run_evaluator(model_dir, evaluation_env(dataset_dir))
    assert run.returncode == 0, run.lines
    result = json.loads(run.result)
    expected = evaluate.evaluate(Bigram(vocab_of(dataset_dir)), 4, dataset_dir, SEQ_LEN, 2048)
    assert result["val_bpb"] == pytest.approx(expected.val_bpb, rel=1e-6)
    assert result["run_id"] == "eval-test" and result["eval_tokens"] == expected.tokens
    assert any(line.startswith("val_bpb:") for line in run.lines)


def test_one_server_scores_runs_with_their_own_settings_and_holds_none(model_dir, dataset_dir,
                                                                       monkeypatch):
    monkeypatch.setenv("PAIRLAB_EVALUATOR", "server")
    first = run_evaluator(model_dir, evaluation_env(dataset_dir))
    server = the_server(dataset_dir)
    second = run_evaluator(model_dir, evaluation_env(
        dataset_dir, PAIRLAB_RUN_ID="run-0002", PAIRLAB_EVAL_TOKENS="1024"))
    assert the_server(dataset_dir) is server and server.alive
    a, b = json.loads(first.result), json.loads(second.result)
    assert (a["run_id"], b["run_id"]) == ("eval-test", "run-0002")
    assert b["eval_tokens"] < a["eval_tokens"] <= 2048
    held = open(f"/proc/{server.proc.pid}/environ", "rb").read().split(b"\0")
    assert not [v for v in held if v.startswith(b"PAIRLAB_")]     # no run's settings, no tag


def test_a_server_that_died_is_started_again(model_dir, dataset_dir, monkeypatch):
    monkeypatch.setenv("PAIRLAB_EVALUATOR", "server")
    dead = the_server(dataset_dir)
    dead.proc.kill()
    dead.proc.wait()
    run = run_evaluator(model_dir, evaluation_env(dataset_dir))
    assert run.returncode == 0, run.lines
    assert the_server(dataset_dir) is not dead and the_server(dataset_dir).alive


def test_a_forked_evaluation_is_stopped_by_its_process_group(model_dir, dataset_dir,
                                                             monkeypatch):
    # the runner's kill: SIGTERM to the group of the pid on_start was given
    monkeypatch.setenv("PAIRLAB_EVALUATOR", "server")
    the_server(dataset_dir)
    killed = []

    def kill_at_once(proc):
        assert os.getpgid(proc.pid) == proc.pid          # a session of its own
        os.killpg(proc.pid, signal.SIGTERM)
        killed.append(proc.pid)

    run = run_evaluator(model_dir, evaluation_env(dataset_dir), on_start=kill_at_once)
    assert killed and run.returncode == -signal.SIGTERM and run.result is None
    assert the_server(dataset_dir).alive                    # the server goes on


def test_evaluations_side_by_side_each_get_their_own_result(model_dir, dataset_dir, monkeypatch):
    monkeypatch.setenv("PAIRLAB_EVALUATOR", "server")
    runs = {}

    def score(run_id):
        runs[run_id] = run_evaluator(model_dir, evaluation_env(dataset_dir,
                                                               PAIRLAB_RUN_ID=run_id))
    threads = [threading.Thread(target=score, args=(f"slot-{i}",)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert {json.loads(run.result)["run_id"] for run in runs.values()} == set(runs) == \
        {"slot-0", "slot-1", "slot-2"}


def test_the_server_ends_with_the_engine_even_when_killed(dataset_dir, tmp_path):
    # an engine killed with SIGKILL runs no exit handler: the pipe's end stops the server
    script = (f"import os, sys, time; sys.path.insert(0, {str(evaluate.__file__)!r}.rsplit('/', 2)[0])\n"
              "from engine.run import evaluator_processes as ep\n"
              f"server = ep.server_for({evaluation_env(dataset_dir)!r})\n"
              "print(server.proc.pid, flush=True)\n"
              "time.sleep(600)\n")
    engine = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PAIRLAB_EVALUATOR": "server"})
    try:
        server_pid = int(engine.stdout.readline())
        assert running(server_pid)
    finally:
        engine.kill()
        engine.wait()
    deadline = time.monotonic() + 30
    while running(server_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running(server_pid), "the server outlived its engine"


def running(pid: int) -> bool:
    """Alive and not a zombie waiting for its new parent to reap it."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
