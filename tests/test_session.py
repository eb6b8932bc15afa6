"""The research loop end to end with the offline tuner: real git, real training, real SQLite."""

import os
import subprocess
import sys
import time

import pytest

from engine.agents.tuner import TunerAgent
from engine.base.events import DecisionMade, ProposalReady, RunFinished, SessionStopped
from engine.base.records import ProposalState, RunStatus
from engine.journal import TSV_HEADER, Journal
from engine.session import Session
from engine.workspace import Workspace
from tests.conftest import TINY_ENV

pytestmark = pytest.mark.e2e   # real runs through the evaluator


def collect(session):
    events = []
    session.subscribe(events.append)
    return events


def wait_for(predicate, timeout=120.0, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_auto_loop_keeps_results_tsv_and_branch_in_step(tiny_workspace, tiny_settings):
    session = Session(tiny_workspace, TunerAgent(), tiny_settings(max_experiments=2),
                      monitor=False)
    events = collect(session)
    session.start()
    assert session.wait(timeout=240)

    rows = (tiny_workspace.root / "results.tsv").read_text().splitlines()
    assert rows[0] + "\n" == TSV_HEADER
    assert len(rows) == 1 + 2 + 1                       # header, baseline, 2 experiments
    assert rows[1].endswith("\tkeep\tbaseline")
    finished = [e for e in events if isinstance(e, RunFinished)]
    assert [e.experiment.decided_by for e in finished] == ["baseline", "auto", "auto"]
    for row, event in zip(rows[1:], finished):
        commit, val_bpb, _, status, description = row.split("\t")
        assert event.experiment.commit.startswith(commit)
        assert float(val_bpb) == pytest.approx(event.result.val_bpb, abs=1e-6)
    # the branch stands on the best kept commit, whatever was discarded
    assert tiny_workspace.head() == session.best[0]
    assert isinstance(events[-1], SessionStopped)
    assert "reached --max-experiments 2" in events[-1].reason
    # nothing was drafted beyond the cap
    assert len([e for e in events if isinstance(e, ProposalReady)]) == 2


def test_review_mode_waits_for_the_human_and_tells_the_agent_about_a_veto(
        tiny_workspace, tiny_settings):
    # without speculation (tests/test_speculation.py has it on): nothing trains unaccepted
    session = Session(tiny_workspace, TunerAgent(), tiny_settings(mode="review",
                      max_experiments=1, speculate=False), monitor=False)
    events = collect(session)
    session.start()
    try:
        wait_for(lambda: session.pending() and session.best, what="a proposal and a baseline")
        first = session.pending()[0]
        time.sleep(1.0)                                     # the trainer must not take it
        assert session.current_run is None and session.state == "reviewing"
        assert session.journal.experiment_count() == 0

        session.veto(first.id, "MATRIX_LR is already tuned; leave it")
        assert session.journal.get_proposal(first.id).state is ProposalState.VETOED
        wait_for(lambda: session.pending(), what="a second proposal")
        second = session.pending()[0]
        assert "MATRIX_LR" not in second.diff              # the tuner heard the reason
        history = session.journal.history()
        assert any(h.status == "vetoed" and "already tuned" in h.veto_reason for h in history)

        session.accept(second.id)
        assert session.wait(timeout=120)
    finally:
        session.stop()
    decisions = [e.decision for e in events if isinstance(e, DecisionMade)]
    assert [(d.kind.value, d.who) for d in decisions] == [("veto", "human"), ("accept", "human")]
    experiments = session.experiments()
    assert [e.proposal_id for e in experiments] == [None, second.id]
    assert experiments[1].decided_by == "human"


def test_edit_replaces_the_agents_version_and_refusals_are_precise(tiny_workspace,
                                                                    tiny_settings):
    from engine.workspace.patch import PatchRefused
    # the edit of a proposal training ahead of its review: tests/test_speculation.py
    session = Session(tiny_workspace, TunerAgent(), tiny_settings(mode="review",
                      max_experiments=1, speculate=False), monitor=False)
    session.start()
    try:
        wait_for(lambda: session.pending(), what="a proposal")
        proposal = session.pending()[0]
        text = session.proposal_text(proposal.id, "train.py")
        with pytest.raises(PatchRefused) as refused:
            session.edit(proposal.id, {"train.py": text.replace("harness.handoff(", "print(")})
        assert refused.value.rule == "protected"
        assert session.pending()[0].id == proposal.id       # still waiting, nothing lost

        human = text.replace("SEED = 42", "SEED = 7")
        session.edit(proposal.id, {"train.py": human})
        assert session.wait(timeout=120)
    finally:
        session.stop()
    experiment = session.experiments()[-1]
    trained = tiny_workspace.file_at(experiment.commit, "train.py")
    assert "SEED = 7" in trained
    assert experiment.decided_by == "human"
    message = subprocess.run(["git", "log", "-1", "--format=%B", experiment.commit],
                             cwd=tiny_workspace.root, capture_output=True, text=True).stdout
    assert "pairlab-edited-by: human" in message
    history = session.journal.history()
    assert "+SEED = 7" in history[-1].human_edit_diff


def test_a_crashing_proposal_is_recorded_and_the_loop_goes_on(tiny_workspace, tiny_settings):
    session = Session(tiny_workspace, TunerAgent(), tiny_settings(mode="review",
                      max_experiments=2), monitor=False)
    events = collect(session)
    session.start()
    try:
        wait_for(lambda: session.pending(), what="a proposal")
        proposal = session.pending()[0]
        text = session.proposal_text(proposal.id, "train.py")
        broken = text.replace("SEED = 42", "SEED = 42\nraise RuntimeError('boom in train.py')")
        session.edit(proposal.id, {"train.py": broken})
        wait_for(lambda: session.journal.experiment_count() == 1, what="the crash")
        wait_for(lambda: session.pending(), what="the next proposal")
        session.accept(session.pending()[0].id)
        assert session.wait(timeout=120)
    finally:
        session.stop()
    crash = [e for e in events if isinstance(e, RunFinished)][1]
    assert crash.result.status is RunStatus.CRASH
    assert "RuntimeError: boom in train.py" in crash.result.message
    rows = (tiny_workspace.root / "results.tsv").read_text().splitlines()
    assert rows[2].split("\t")[1:4] == ["0.000000", "0.0", "crash"]
    assert len(rows) == 4
    assert tiny_workspace.head() == session.best[0]       # the crash was reset away


def _headless(workspace, dataset_dir, *extra, env_extra=None, **popen):
    env = {**os.environ, **TINY_ENV, "PAIRLAB_DATA_DIR": str(dataset_dir),
           "PAIRLAB_MAX_STEPS": "6", **(env_extra or {})}
    env.pop("ANTHROPIC_API_KEY", None)
    return subprocess.Popen(
        [sys.executable, "-m", "pairlab", "headless", "--workspace", str(workspace),
         "--agent", "tuner", "--mode", "auto", "--budget", "5", "--noise-repeats", "0",
         *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


# bf16: the same path on the other precision, one experiment is enough to show it
@pytest.mark.parametrize("precision, experiments", [("fp32", 3), ("bf16", 1)])
def test_headless_on_a_fresh_dir_ends_with_results_and_branch_on_best(tmp_path, dataset_dir,
                                                                      precision, experiments):
    from engine.workspace import init
    from tests.conftest import tiny_train_py
    ws = init(tmp_path / "ws")
    (ws.root / "train.py").write_text(tiny_train_py((ws.root / "train.py").read_text()))
    ws.commit_change({"train.py": (ws.root / "train.py").read_text()}, "tiny", parent=ws.head())
    proc = _headless(ws.root, dataset_dir, "--max-experiments", str(experiments), "--jsonl",
                     env_extra={"PAIRLAB_PRECISION": precision})
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    # the first start checked the pipeline before the baseline, and every run trained on
    # the precision asked for and was scored by the evaluator
    assert "checking the pipeline" in out
    logs = sorted(ws.logs_dir.glob("run-*.log"))
    assert logs and all(f"precision: {precision}" in log.read_text() for log in logs)
    rows = (ws.root / "results.tsv").read_text().splitlines()
    assert rows[0] == TSV_HEADER.rstrip("\n") and len(rows) == 1 + 1 + experiments
    journal = Journal(ws.pairlab_dir / "journal.db")
    assert Workspace.open(ws.root).head() == journal.best().commit
    import json
    types = [json.loads(line)["type"] for line in out.splitlines()]
    # the baseline and 3 experiments, plus any runs the keep rule asked for to confirm a win
    # (re-runs of the best, of the candidate), each finished once, and a settled experiment
    # finished again with its outcome
    kinds = [r["kind"] for r in journal.run_rows()]
    assert (kinds.count("baseline"), kinds.count("experiment")) == (1, experiments)
    settled = sum(1 for r in journal.run_rows() if r["kind"] == "experiment"
                  and any(k["kind"] in ("noise", "rerun") and k["experiment"] > r["experiment"]
                          for k in journal.run_rows()))
    assert len(kinds) <= types.count("run_finished") <= len(kinds) + settled
    assert types[-1] == "stopped"
    t = journal.totals()
    assert t.experiments == t.kept + t.discarded + t.crashed + t.vetoed == experiments


def test_headless_review_mode_takes_decisions_on_stdin(tiny_workspace, dataset_dir):
    env = dict(os.environ, **TINY_ENV, PAIRLAB_DATA_DIR=str(dataset_dir), PAIRLAB_MAX_STEPS="4")
    env.pop("ANTHROPIC_API_KEY", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pairlab", "headless", "--workspace", str(tiny_workspace.root),
         "--agent", "tuner", "--mode", "review", "--noise-repeats", "0", "--max-experiments",
         "1"], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, bufsize=1)
    seen = []

    def read_until(needle):
        for line in proc.stdout:
            seen.append(line)
            if needle in line:
                return line
        raise AssertionError(f"no {needle!r} in output:\n{''.join(seen)}")

    first = read_until("proposal 1:")
    proc.stdin.write("veto 1 keep the learning rates as they are\n")
    proc.stdin.flush()
    read_until("proposal 1: veto by human: keep the learning rates as they are")
    read_until("proposal 2:")
    proc.stdin.write("accept 2\n")
    proc.stdin.flush()
    out, err = proc.communicate(timeout=180)
    seen.append(out)
    text = "".join(seen)
    assert proc.returncode == 0, err
    assert "hypothesis:" in first or "hypothesis:" in text
    assert "proposal 2: accept by human" in text
    assert "stopped: reached --max-experiments 1" in text
    assert "| " in text                                   # the training log is shown


def test_report_writes_png_and_markdown(tiny_workspace, tiny_settings, tmp_path):
    from pairlab.cli import main
    session = Session(tiny_workspace, TunerAgent(), tiny_settings(max_experiments=1),
                      monitor=False)
    session.start()
    assert session.wait(timeout=120)
    assert main(["report", "--workspace", str(tiny_workspace.root), "--out",
                 str(tmp_path)]) == 0
    assert (tmp_path / "progress.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (tmp_path / "report.md").read_text()
    assert f"{session.best[1]:.6f}" in report


@pytest.mark.parametrize("kind, status, reads", [
    ("noise", RunStatus.DISCARD, "finished: noise repeat val_bpb 1.100000"),
    ("noise", RunStatus.CRASH, "finished: noise repeat crash val_bpb -"),
    ("baseline", RunStatus.KEEP, "finished: baseline val_bpb 1.100000"),
    ("experiment", RunStatus.DISCARD, "finished: discard val_bpb 1.100000 [experiment 2]"),
])
def test_headless_lines_say_what_a_finished_run_was(kind, status, reads):
    import io

    from engine.base.records import Experiment, RunResult
    from pairlab.headless import ReadablePrinter
    val_bpb = None if status is RunStatus.CRASH else 1.1
    experiment = Experiment(id=2, proposal_id=None, commit="f" * 40, status=status,
                            val_bpb=val_bpb, memory_gb=0.0, description="", decided_by="",
                            run_id="run-0002", started_at=0.0, finished_at=1.0, log_path="",
                            kind=kind)
    out = io.StringIO()
    ReadablePrinter(out)(RunFinished(experiment, RunResult("run-0002", status, val_bpb=val_bpb)))
    assert out.getvalue().split(" ", 1)[1] == f"run run-0002 {reads}\n"
