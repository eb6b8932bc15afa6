"""Faults of the training run itself: train.py breaks, diverges, hangs or is killed.

Each test trains one broken proposal (the human's edit of the tuner's first proposal) on a
workspace whose baseline already ran, then checks that the loop drafts the next proposal,
the journal gained exactly the crashed run, git is back on the best commit, and the message
the user reads names what happened.
"""

import pytest

from engine.base.records import RunStatus
from tests.faults.conftest import (assert_nothing_lost, fault_settings, prepend, results_rows,
                                   run_fault)

pytestmark = pytest.mark.e2e   # real runs through the evaluator


def _check_recorded_as(outcome, status: RunStatus, workspace):
    """The crashed run is the one new row, recorded as `status`, and results.tsv says crash."""
    added = assert_nothing_lost(outcome.before, outcome.after)
    assert added[0]["status"] == status.value
    assert added[0]["proposal_id"] == outcome.proposal_id
    assert outcome.finished.result.status is status
    assert results_rows(workspace)[-1][1:4] == ["0.000000", "0.0", "crash"]
    assert outcome.head == outcome.before["runs"][0]["commit_sha"]   # still the baseline
    assert outcome.next_proposals, "the loop did not go on"
    return added[0]


def test_train_py_raises(baselined_workspace, dataset_dir):
    outcome = run_fault(baselined_workspace, fault_settings(dataset_dir), lambda text: prepend(
        text, "raise RuntimeError('the dataloader fell over')"))
    row = _check_recorded_as(outcome, RunStatus.CRASH, baselined_workspace)
    assert outcome.finished.result.message == \
        "train.py crashed: RuntimeError: the dataloader fell over"
    assert row["message"] == outcome.finished.result.message


def test_syntax_error(baselined_workspace, dataset_dir):
    outcome = run_fault(baselined_workspace, fault_settings(dataset_dir), lambda text: prepend(
        text, "def broken(:"))
    _check_recorded_as(outcome, RunStatus.CRASH, baselined_workspace)
    assert outcome.finished.result.message == \
        "train.py exited with code 1: SyntaxError: invalid syntax"


def test_nan_loss(baselined_workspace, dataset_dir):
    outcome = run_fault(baselined_workspace, fault_settings(dataset_dir), lambda text: text.replace(
        "train_loss = loss.detach()", "train_loss = loss.detach() * float('nan')"))
    _check_recorded_as(outcome, RunStatus.CRASH, baselined_workspace)
    assert outcome.finished.result.message == "train.py failed: loss is nan at step 0"


def test_loss_explodes(baselined_workspace, dataset_dir):
    outcome = run_fault(baselined_workspace, fault_settings(dataset_dir), lambda text: text.replace(
        "train_loss = loss.detach()", "train_loss = loss.detach() * 1000"))
    _check_recorded_as(outcome, RunStatus.CRASH, baselined_workspace)
    message = outcome.finished.result.message
    assert message.startswith("train.py failed: loss exploded to ")
    assert message.endswith(" (> 100) at step 0")


def test_silent_hang_is_killed_at_the_hard_timeout(baselined_workspace, dataset_dir):
    outcome = run_fault(baselined_workspace, fault_settings(dataset_dir, hard_timeout_s=2.0),
                        lambda text: prepend(text, "import time\ntime.sleep(3600)"))
    row = _check_recorded_as(outcome, RunStatus.TIMEOUT, baselined_workspace)
    assert outcome.finished.result.message == "no result after 2s (budget 5s): killed"
    assert row["total_seconds"] < 10


def test_run_that_prints_but_never_finishes_is_killed_at_the_hard_timeout(
        baselined_workspace, dataset_dir):
    endless = ("import itertools, time\n"
               "for step in itertools.count():\n"
               "    print(f'\\rstep {step:05d} (1.0%) | loss: 5.000000 | remaining: 1s', "
               "end='', flush=True)\n"
               "    time.sleep(0.05)")
    outcome = run_fault(baselined_workspace, fault_settings(dataset_dir, hard_timeout_s=2.0),
                        lambda text: prepend(text, endless))
    _check_recorded_as(outcome, RunStatus.TIMEOUT, baselined_workspace)
    assert outcome.finished.result.message == "no result after 2s (budget 5s): killed"
    assert "loss: 5.000000" in outcome.finished.result.log_tail   # what it printed is kept


def test_run_killed_by_a_signal_like_the_oom_killer(baselined_workspace, dataset_dir):
    outcome = run_fault(baselined_workspace, fault_settings(dataset_dir), lambda text: prepend(
        text, "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)"))
    _check_recorded_as(outcome, RunStatus.CRASH, baselined_workspace)
    assert outcome.finished.result.message == "killed by signal 9 (out of memory?)"
