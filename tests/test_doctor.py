"""`pairlab doctor` and the same check at a new workspace's first start; what an unattended
loop does when it cannot go on (issue 18). Real subprocesses: the doctor, the runner, the
confined training process and the evaluator."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.agents.tuner import TunerAgent
from engine.base.events import Notice, SessionStopped
from engine.loop import planner
from engine.run import confine
from engine.session import Session
from tests.conftest import TINY_ENV
from tests.faults.conftest import headless

pytestmark = pytest.mark.e2e   # real runs through the evaluator

REPO = Path(__file__).resolve().parents[1]
# Fails before the model exists: the pipeline check must show this whole, not cut.
BROKEN = ('raise RuntimeError("Tensor dtype mismatch! Expected: BFloat16, Got: float '
          '(a stand-in for the evaluator crash of issue 18, long enough to be cut at a '
          'panel edge)")\n')


def doctor(workspace_root, dataset_dir, **env) -> subprocess.CompletedProcess:
    full = {**os.environ, **TINY_ENV, "PAIRLAB_DATA_DIR": str(dataset_dir), **env}
    return subprocess.run([sys.executable, "-m", "pairlab", "doctor", "--workspace",
                           str(workspace_root)], env=full, capture_output=True, text=True,
                          timeout=300, cwd=REPO)


def lines_by_check(out: str) -> dict[str, str]:
    """{check name: its line} from the doctor's output."""
    found = {}
    for line in out.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] in ("ok", "degraded", "failed", "skipped"):
            found[words[1]] = line
    return found


def break_train_py(workspace) -> None:
    source = (workspace.root / "train.py").read_text()
    workspace.commit_change({"train.py": source.replace("import torch  #", BROKEN + "import torch  #", 1)},
                            "a train.py that cannot train", parent=workspace.head())


def test_doctor_passes_every_check_on_a_tiny_workspace(tiny_workspace, dataset_dir, precision):
    proc = doctor(tiny_workspace.root, dataset_dir, PAIRLAB_COMPILE="1",
                  PAIRLAB_PRECISION=precision)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    checks = lines_by_check(proc.stdout)
    assert list(checks) == ["data", "device", "confinement", "compile", "pipeline"], proc.stdout
    assert checks["data"].startswith("ok") and "checksum matches" in checks["data"]
    assert checks["device"].startswith(("ok", "degraded")) and f"cpu, {precision}" in checks["device"]
    assert checks["compile"].startswith("ok"), checks["compile"]
    confined = confine.probe() is None
    assert checks["confinement"].startswith("ok" if confined else "degraded")
    assert checks["pipeline"].startswith("ok") and "hand-off -> evaluator: val_bpb" in checks["pipeline"]
    assert ("3 steps, confined)" if confined else "unconfined)") in checks["pipeline"]
    assert "all checks passed" in proc.stdout


def test_doctor_shows_a_broken_train_py_whole_and_exits_1(tiny_workspace, dataset_dir):
    break_train_py(tiny_workspace)
    proc = doctor(tiny_workspace.root, dataset_dir)
    assert proc.returncode == 1, proc.stdout
    checks = lines_by_check(proc.stdout)
    assert checks["compile"].startswith("skipped")          # TINY_ENV: PAIRLAB_COMPILE=0
    assert checks["pipeline"].startswith("failed")
    assert "long enough to be cut at a panel edge" in proc.stdout     # whole, not cut
    assert "failed: pipeline" in proc.stdout


def test_doctor_without_data_fails_the_data_check_and_skips_the_pipeline(tiny_workspace,
                                                                        tmp_path):
    proc = doctor(tiny_workspace.root, tmp_path / "nothing-here")
    assert proc.returncode == 1
    checks = lines_by_check(proc.stdout)
    assert checks["data"].startswith("failed") and "pairlab prepare" in checks["data"]
    assert checks["pipeline"].startswith("skipped")


def test_doctor_before_any_workspace_checks_the_template(tmp_path, dataset_dir):
    proc = doctor(tmp_path / "not-yet", dataset_dir)
    assert "checking the template a new one starts from" in proc.stdout
    assert not (tmp_path / "not-yet").exists()             # the doctor creates nothing
    assert lines_by_check(proc.stdout)["pipeline"].startswith("ok"), proc.stdout


# ---- the same check at a new workspace's first start ---------------------------------------

def test_a_new_workspaces_broken_pipeline_pauses_before_the_baseline(tiny_workspace,
                                                                     tiny_settings):
    break_train_py(tiny_workspace)
    session = Session(tiny_workspace, TunerAgent(),
                      tiny_settings(mode="review", first_start_check=True), monitor=False)
    notices = []
    session.subscribe(lambda e: notices.append(e) if isinstance(e, Notice) else None)
    session.start()
    try:
        deadline = time.monotonic() + 120
        while not session.paused and time.monotonic() < deadline:
            time.sleep(0.05)
        assert session.paused, (session.state, [(n.level, n.message) for n in notices])
    finally:
        session.stop()
    assert session.journal.run_count() == 0                 # no budget spent on a baseline
    (notice,) = [n for n in notices if n.level == "error"]
    assert notice.message.startswith("the first-start check failed before the baseline")
    assert "long enough to be cut at a panel edge" in notice.message
    assert "press p to resume" in notice.hint
    session.journal.close()


# ---- unattended: nobody to press a key ----------------------------------------------------

@pytest.mark.parametrize("mode, deciding_clients, halts", [
    ("auto", 0, True), ("auto", 1, False), ("review", 0, False), ("review", 2, False)])
def test_only_auto_mode_with_no_deciding_app_is_unattended(mode, deciding_clients, halts):
    assert planner.unattended(mode, deciding_clients) is halts


def test_headless_auto_with_a_baseline_that_cannot_train_exits_non_zero(tiny_workspace,
                                                                        dataset_dir):
    break_train_py(tiny_workspace)
    started = time.monotonic()
    proc = headless(tiny_workspace, dataset_dir, "--mode", "auto")
    out, err = proc.communicate(timeout=180)
    seconds = time.monotonic() - started
    assert proc.returncode == 1, out + err
    assert "nobody to resume" in out and "press p" not in out
    assert "long enough to be cut at a panel edge" in out
    print(f"headless auto exited {proc.returncode} after {seconds:.1f}s")


def test_an_unattended_baseline_failure_stops_and_loses_nothing(tiny_workspace, tiny_settings):
    break_train_py(tiny_workspace)                          # no first-start check: the baseline
    session = Session(tiny_workspace, TunerAgent(), tiny_settings(mode="auto"), monitor=False)
    stopped = []
    session.subscribe(lambda e: stopped.append(e) if isinstance(e, SessionStopped) else None)
    session.start()
    assert session.wait(timeout=120)
    session.stop()
    assert session.failed and stopped[-1].failed
    assert "the baseline failed" in stopped[-1].reason
    rows = session.journal.run_rows()
    assert [(r["kind"], r["status"]) for r in rows] == [("baseline", "crash")]
    session.journal.close()


def test_in_review_mode_the_engine_pauses_and_status_shows_the_whole_error(tiny_workspace,
                                                                           dataset_dir):
    break_train_py(tiny_workspace)
    engine = headless(tiny_workspace, dataset_dir, "--mode", "review")
    try:
        for line in engine.stdout:
            if "[paused] the first-start check failed" in line:
                break
        else:
            raise AssertionError(f"the engine ended without pausing: {engine.stderr.read()}")
        status = subprocess.run([sys.executable, "-m", "pairlab", "status", "--workspace",
                                 str(tiny_workspace.root)], capture_output=True, text=True,
                                timeout=60, cwd=REPO)
        assert "state: paused (the first-start check failed)" in status.stdout, status.stdout
        error = status.stdout[status.stdout.index("\nerror: "):status.stdout.index("\nbest: ")]
        assert "long enough to be cut at a panel edge" in error and "press p to resume" in error
    finally:
        subprocess.run([sys.executable, "-m", "pairlab", "stop", "--workspace",
                        str(tiny_workspace.root)], capture_output=True, timeout=60, cwd=REPO)
        engine.wait(timeout=60)
    assert engine.returncode == 0                # stopped by the user: not a failure
