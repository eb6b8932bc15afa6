"""The journal on real SQLite files: round-trips, durability under kill -9, results.tsv."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from engine.base.records import (Decision, DecisionKind, KeepMeasure, Proposal, ProposalState,
                                 Revert, RunResult, RunStatus, Usage)
from engine.journal import (INTERRUPTED_MESSAGE, SCHEMA_VERSION, TSV_HEADER, Journal, journal_path,
                            redact)

REPO_ROOT = Path(__file__).resolve().parents[1]


def make_proposal(description="raise the learning rate", **overrides) -> Proposal:
    fields = dict(
        id=0, description=description, hypothesis="the loss is still falling at the end",
        diff="--- a/train.py\n+++ b/train.py\n@@ -1 +1 @@\n-LR = 0.01\n+LR = 0.02\n",
        base_commit="a" * 40, agent="tuner", files={"train.py": "LR = 0.02\n"},
        reasoning="thinking about it",
        usage=Usage(input_tokens=1000, output_tokens=200, cache_read_tokens=800,
                    cache_write_tokens=100, cost_usd=0.0125))
    fields.update(overrides)
    return Proposal(**fields)


def finish(journal, run_id, status, val_bpb=None, memory_gb=0.0, finished_at=None, **extra):
    return journal.finish_run(RunResult(run_id=run_id, status=status, val_bpb=val_bpb,
                                        memory_gb=memory_gb, **extra), finished_at=finished_at)


@pytest.fixture
def journal(tmp_path):
    with Journal(journal_path(tmp_path)) as j:
        yield j


def test_file_lives_in_the_workspace_in_wal_mode_with_a_schema_version(tmp_path, journal):
    assert journal.path == tmp_path / ".pairlab" / "journal.db" == journal_path(tmp_path)
    assert journal.journal_mode() == "wal"
    raw = sqlite3.connect(journal.path)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"proposals", "decisions", "runs", "session_state", "notices"} <= tables
    raw.close()


def test_reopening_keeps_rows_and_a_newer_schema_is_refused(tmp_path):
    with Journal(journal_path(tmp_path)) as j:
        j.add_proposal(make_proposal())
    with Journal(journal_path(tmp_path)) as j:
        assert [p.description for p in j.proposals()] == ["raise the learning rate"]
    raw = sqlite3.connect(journal_path(tmp_path))
    raw.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    raw.close()
    with pytest.raises(RuntimeError, match="newer pairlab"):
        Journal(journal_path(tmp_path))


def test_run_rows_read_once_per_write_are_fresh_copies_and_see_every_write(journal):
    journal.start_run("r1", "c" * 40, "baseline")
    assert journal.run_rows() == []                          # a running run is not finished
    finish(journal, "r1", RunStatus.KEEP, 1.5, metrics={"val_bpb": 1.5})
    rows = journal.run_rows()
    assert [r["id"] for r in rows] == ["r1"]
    rows[0]["status"] = "forged"
    rows[0]["metrics"]["val_bpb"] = 0.1                      # a caller's copy, not the cache
    again = journal.run_rows()
    assert again[0]["status"] == "keep" and again[0]["metrics"] == {"val_bpb": 1.5}
    reads = journal.writes
    journal.run_rows()
    assert journal.writes == reads                           # reading writes nothing
    journal.set_state("noise_floor", 0.01)                   # any write: read again
    journal.start_run("r2", "d" * 40, "noise")
    finish(journal, "r2", RunStatus.DISCARD, 1.6)
    assert [r["id"] for r in journal.run_rows()] == ["r1", "r2"]


def test_proposal_round_trip_update_and_state(journal):
    proposal = make_proposal()
    pid = journal.add_proposal(proposal)
    assert pid == proposal.id and pid > 0 and proposal.created_at > 0
    assert journal.get_proposal(pid) == proposal

    proposal.diff = "rebased diff"
    proposal.base_commit = "b" * 40
    proposal.files = {"train.py": "LR = 0.03\n"}
    journal.update_proposal(proposal)
    journal.set_proposal_state(pid, ProposalState.STALE)
    stored = journal.get_proposal(pid)
    assert (stored.diff, stored.base_commit, stored.files, stored.state) == (
        "rebased diff", "b" * 40, {"train.py": "LR = 0.03\n"}, ProposalState.STALE)
    assert journal.get_proposal(pid + 100) is None
    assert journal.add_proposal(make_proposal(id=42)) == 42


def test_decisions_move_the_proposal_and_an_edit_saves_the_edited_version(journal):
    vetoed = journal.add_proposal(make_proposal("drop the warmup"))
    edited = make_proposal("use a wider MLP")
    journal.add_proposal(edited)
    pending = journal.add_proposal(make_proposal("try a new schedule"))

    journal.record_decision(Decision(vetoed, DecisionKind.VETO, "human", reason="we tried it"))
    edited.diff = "the human's version"
    journal.record_decision(Decision(edited.id, DecisionKind.EDIT, "human",
                                     edited_diff="-MLP = 4\n+MLP = 3\n"), proposal=edited)

    assert journal.get_proposal(vetoed).state is ProposalState.VETOED
    assert journal.get_proposal(edited.id).state is ProposalState.ACCEPTED
    assert journal.get_proposal(edited.id).diff == "the human's version"
    [decision] = journal.decisions(vetoed)
    assert (decision.kind, decision.who, decision.reason) == (DecisionKind.VETO, "human",
                                                              "we tried it")
    assert decision.at > 0
    assert [p.id for p in journal.pending_proposals()] == [edited.id, pending]


def test_runs_experiments_best_and_decided_by(journal):
    exp = journal.start_run("r1", "c" * 40, "baseline", log_path="logs/r1.log")
    assert exp == 1
    assert journal.get_run("r1").status == "running"
    assert journal.experiments() == []
    finish(journal, "r1", RunStatus.KEEP, 1.5, 2.25, training_seconds=5.0, total_seconds=7.5,
           num_steps=10, device="cpu", metrics={"val_bpb": 1.5, "depth": 4})

    pid = journal.add_proposal(make_proposal())
    journal.record_decision(Decision(pid, DecisionKind.ACCEPT, "auto"))
    assert journal.start_run("r2", "d" * 40, "experiment", proposal_id=pid) == 2
    assert journal.get_proposal(pid).state is ProposalState.TRAINING
    row = finish(journal, "r2", RunStatus.KEEP, 1.4, 2.5)
    assert journal.get_proposal(pid).state is ProposalState.DONE
    assert (row.id, row.proposal_id, row.status, row.val_bpb, row.description, row.decided_by) == (
        2, pid, RunStatus.KEEP, 1.4, "raise the learning rate", "auto")

    pid2 = journal.add_proposal(make_proposal("halve the batch"))
    journal.record_decision(Decision(pid2, DecisionKind.ACCEPT, "human"))
    journal.start_run("r3", "e" * 40, "experiment", proposal_id=pid2)
    finish(journal, "r3", RunStatus.DISCARD, 1.45, 2.0)

    experiments = journal.experiments()
    assert [(e.id, e.run_id, e.status, e.decided_by, e.description) for e in experiments] == [
        (1, "r1", RunStatus.KEEP, "baseline", "baseline"),
        (2, "r2", RunStatus.KEEP, "auto", "raise the learning rate"),
        (3, "r3", RunStatus.DISCARD, "human", "halve the batch"),
    ]
    assert experiments[0].log_path == "logs/r1.log" and experiments[0].memory_gb == 2.25
    assert journal.best().run_id == "r2"
    first = journal.run_rows()[0]
    assert first["metrics"] == {"val_bpb": 1.5, "depth": 4}
    assert (first["training_seconds"], first["num_steps"], first["device"]) == (5.0, 10, "cpu")
    with pytest.raises(KeyError):
        finish(journal, "nope", RunStatus.CRASH)
    with pytest.raises(ValueError):
        journal.start_run("r4", "f" * 40, "warmup")


def test_history_tells_results_vetoes_and_human_edits_in_order(journal):
    journal.start_run("base", "0" * 40, "baseline", started_at=100.0)
    finish(journal, "base", RunStatus.KEEP, 1.50, finished_at=110.0)

    edited = journal.add_proposal(make_proposal("wider MLP"))
    journal.record_decision(Decision(edited, DecisionKind.EDIT, "human",
                                     edited_diff="-4\n+3\n", at=120.0))
    journal.start_run("e1", "1" * 40, "experiment", proposal_id=edited, started_at=121.0)
    finish(journal, "e1", RunStatus.KEEP, 1.40, finished_at=130.0)

    vetoed = journal.add_proposal(make_proposal("drop the warmup"))
    journal.record_decision(Decision(vetoed, DecisionKind.VETO, "human",
                                     reason="warmup matters here", at=135.0))

    crashed = journal.add_proposal(make_proposal("depth 40"))
    journal.record_decision(Decision(crashed, DecisionKind.ACCEPT, "auto", at=136.0))
    journal.start_run("e2", "2" * 40, "experiment", proposal_id=crashed, started_at=137.0)
    finish(journal, "e2", RunStatus.CRASH, message="out of memory", finished_at=140.0)

    journal.start_run("noise", "0" * 40, "noise", started_at=141.0)
    finish(journal, "noise", RunStatus.DISCARD, 1.51, finished_at=150.0)

    history = journal.history()
    assert [(h.description, h.status, h.decided_by) for h in history] == [
        ("baseline", "keep", "baseline"),
        ("wider MLP", "keep", "human"),
        ("drop the warmup", "vetoed", "human"),
        ("depth 40", "crash", "auto"),
    ]
    base, wider, veto, crash = history
    assert base.delta is None
    assert wider.delta == pytest.approx(-0.10) and wider.human_edit_diff == "-4\n+3\n"
    assert wider.hypothesis == "the loss is still falling at the end" and "LR = 0.02" in wider.diff
    assert veto.veto_reason == "warmup matters here" and veto.val_bpb is None
    assert crash.message == "out of memory" and crash.val_bpb is None and crash.delta is None
    assert [h.description for h in journal.history(limit=2)] == ["drop the warmup", "depth 40"]


def held_win(journal, decided_at: float = 120.0) -> tuple[int, str]:
    """A proposal accepted, trained and held as an unusually large win; returns its id and
    its run's."""
    pid = journal.add_proposal(make_proposal("a suspiciously good idea"))
    journal.record_decision(Decision(pid, DecisionKind.ACCEPT, "auto", at=decided_at))
    journal.start_run("held", "1" * 40, "experiment", proposal_id=pid)
    journal.finish_run(RunResult(run_id="held", status=RunStatus.HELD, val_bpb=0.5),
                       proposal_state=ProposalState.HELD)
    return pid, "held"


def settlements(journal) -> list[tuple]:
    raw = sqlite3.connect(journal.path)
    try:
        return raw.execute("SELECT run_id, proposal_id, outcome, who, reason FROM settlements"
                           " ORDER BY id").fetchall()
    finally:
        raw.close()


@pytest.mark.parametrize("outcome", [RunStatus.KEEP, RunStatus.DISCARD])
def test_a_held_win_is_settled_apart_from_the_one_decision_its_proposal_had(journal, outcome):
    pid, run_id = held_win(journal)
    reason = "too good to be true" if outcome is RunStatus.DISCARD else ""
    kind = DecisionKind.VETO if outcome is RunStatus.DISCARD else DecisionKind.ACCEPT
    settled = journal.settle_held(run_id, outcome, Decision(pid, kind, "human", reason=reason))
    assert settled.status is outcome and settled.decided_by == "auto"
    assert journal.get_proposal(pid).state is ProposalState.DONE
    assert [(d.kind, d.who) for d in journal.decisions(pid)] == [(DecisionKind.ACCEPT, "auto")]
    assert settlements(journal) == [(run_id, pid, outcome.value, "human", reason)]
    totals = journal.totals()
    assert (totals.kept, totals.discarded, totals.vetoed) == (
        (1, 0, 0) if outcome is RunStatus.KEEP else (0, 1, 0))
    # a discarded held win is told to the agent as the human's veto, with their reason
    told = [(h.status, h.veto_reason) for h in journal.history()]
    assert told == [(outcome.value, "")] + (
        [("vetoed", reason)] if outcome is RunStatus.DISCARD else [])


def test_a_schema_1_journal_moves_its_held_win_settlements_out_of_the_decisions(tmp_path):
    """Schema 1 recorded a held win's settlement as a second decision, at the moment the
    run was settled; opening the journal moves it where it belongs."""
    with Journal(journal_path(tmp_path)) as j:
        pid, run_id = held_win(j)
        other = j.add_proposal(make_proposal("an ordinary idea"))
        j.record_decision(Decision(other, DecisionKind.VETO, "human", reason="no", at=130.0))
    raw = sqlite3.connect(journal_path(tmp_path))
    with raw:
        raw.execute("UPDATE runs SET status = 'discard', finished_at = 140.0 WHERE id = ?",
                    (run_id,))
        raw.execute("INSERT INTO decisions (proposal_id, kind, who, reason, edited_diff, at)"
                    " VALUES (?, 'veto', 'human', 'too good to be true', '', 140.0)", (pid,))
        raw.execute("DROP TABLE settlements")
    raw.execute("PRAGMA user_version=1")
    raw.close()
    with Journal(journal_path(tmp_path)) as j:
        assert [(d.proposal_id, d.kind) for d in j.decisions()] == [
            (pid, DecisionKind.ACCEPT), (other, DecisionKind.VETO)]
        assert settlements(j) == [(run_id, pid, "discard", "human", "too good to be true")]
        assert (j.totals().vetoed, j.totals().discarded) == (1, 1)


def test_interrupted_runs_are_found_after_a_restart(tmp_path):
    with Journal(journal_path(tmp_path)) as j:
        pid = j.add_proposal(make_proposal())
        j.record_decision(Decision(pid, DecisionKind.ACCEPT, "human"))
        j.start_run("base", "0" * 40, "baseline")
        finish(j, "base", RunStatus.KEEP, 1.5)
        j.start_run("e1", "1" * 40, "experiment", proposal_id=pid)
        j.start_run("n1", "0" * 40, "noise")

    with Journal(journal_path(tmp_path)) as j:
        found = j.interrupted_runs()
        assert [(e.run_id, e.proposal_id, e.status) for e in found] == [
            ("e1", pid, RunStatus.INTERRUPTED), ("n1", None, RunStatus.INTERRUPTED)]
        assert j.run_rows()[1]["message"] == INTERRUPTED_MESSAGE
        assert [p.id for p in j.pending_proposals()] == [pid]
        assert j.interrupted_runs() == []


def test_session_state_notices_and_totals(journal):
    journal.set_state("mode", "auto")
    journal.set_state("noise_floor", 0.004)
    journal.set_state("mode", "review")
    assert journal.get_state("mode") == "review"
    assert journal.get_state("missing", 7) == 7
    assert journal.state() == {"mode": "review", "noise_floor": 0.004}

    journal.add_notice("warning", "GPU not found", hint="training on CPU")
    journal.add_notice("error", "agent failed")
    assert [(n["level"], n["message"], n["hint"]) for n in journal.notices()] == [
        ("warning", "GPU not found", "training on CPU"), ("error", "agent failed", "")]
    assert len(journal.notices(limit=1)) == 1

    journal.start_run("b", "0" * 40, "baseline", started_at=1000.0)
    finish(journal, "b", RunStatus.KEEP, 1.5, training_seconds=60.0, total_seconds=70.0,
           finished_at=1070.0)
    ids = [journal.add_proposal(make_proposal(str(i))) for i in range(4)]
    journal.record_decision(Decision(ids[0], DecisionKind.EDIT, "human", edited_diff="x"))
    journal.record_decision(Decision(ids[1], DecisionKind.VETO, "human", reason="no"))
    for run_id, pid, status, val in (("k", ids[0], RunStatus.KEEP, 1.4),
                                     ("rk", ids[0], RunStatus.KEEP, 1.41),
                                     ("d", ids[2], RunStatus.DISCARD, 1.6),
                                     ("t", ids[3], RunStatus.TIMEOUT, None)):
        kind = "rerun" if run_id == "rk" else "experiment"
        journal.start_run(run_id, ("c" if pid == ids[0] else run_id) * 40, kind,
                          proposal_id=pid, started_at=1100.0)
        finish(journal, run_id, status, val, training_seconds=60.0, total_seconds=70.0,
               finished_at=1500.0)

    totals = journal.totals()
    # experiments = kept + discarded + crashed + vetoed; the re-run is counted apart
    assert (totals.runs, totals.experiments, totals.kept, totals.discarded, totals.crashed) == (
        5, 4, 1, 1, 1)
    assert (totals.confirmations, totals.noise_repeats) == (1, 0)
    assert (totals.proposals, totals.vetoed, totals.human_edits) == (4, 1, 1)
    assert totals.usage.input_tokens == 4000 and totals.usage.cache_read_tokens == 3200
    assert totals.usage.cost_usd == pytest.approx(0.05)
    assert totals.training_seconds == 300.0 and totals.run_seconds == 350.0
    assert (totals.first_started_at, totals.last_finished_at) == (1000.0, 1500.0)


def test_results_tsv_is_autoresearchs_exact_format(tmp_path, journal):
    # the noise repeat is a measurement and the interrupted run trains again: neither is a row
    rows = [
        ("baseline", "abcdef1234567890", RunStatus.KEEP, 0.997900, 44.0, "baseline"),
        ("experiment", "b2c3d4e5f6a7b8c9", RunStatus.KEEP, 0.993212345, 44.24, "increase LR\tto 0.04"),
        ("experiment", "c3d4e5f6a7b8c9d0", RunStatus.DISCARD, 1.005, 44.0, "switch to\nGeLU"),
        ("experiment", "d4e5f6a7b8c9d0e1", RunStatus.CRASH, None, 0.0, "double the width (OOM)"),
        ("experiment", "e5f6a7b8c9d0e1f2", RunStatus.TIMEOUT, None, 12.0, "depth 64"),
        ("noise", "abcdef1234567890", RunStatus.DISCARD, 0.9981, 44.0, ""),
        ("experiment", "abcdef1234567890", RunStatus.INTERRUPTED, None, 0.0, "trains again"),
        ("experiment", "f6a7b8c9d0e1f2a3", RunStatus.KILLED, 0.99, 3.0, "killed by the human"),
    ]
    for i, (kind, commit, status, val, mem, description) in enumerate(rows):
        journal.start_run(f"r{i}", commit, kind, description=description)
        finish(journal, f"r{i}", status, val, mem)
    journal.start_run("still-running", "0" * 40, "experiment", description="not finished")

    path = journal.write_results_tsv(tmp_path / "results.tsv")
    text = path.read_text()
    assert text == (
        "commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"
        "abcdef1\t0.997900\t44.0\tkeep\tbaseline\n"
        "b2c3d4e\t0.993212\t44.2\tkeep\tincrease LR to 0.04\n"
        "c3d4e5f\t1.005000\t44.0\tdiscard\tswitch to GeLU\n"
        "d4e5f6a\t0.000000\t0.0\tcrash\tdouble the width (OOM)\n"
        "e5f6a7b\t0.000000\t0.0\tcrash\tdepth 64\n"
        "f6a7b8c\t0.000000\t0.0\tcrash\tkilled by the human\n")
    assert text.startswith(TSV_HEADER)
    assert all(len(line.split("\t")) == 5 for line in text.splitlines())
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_redaction_of_keys_in_every_text_column(tmp_path, monkeypatch):
    env_key = "my-proxy-key-0123456789"
    monkeypatch.setenv("ANTHROPIC_API_KEY", env_key)
    anthropic_key = "sk-ant-api03-AbC_def-123"
    assert redact(f"key={anthropic_key} and {env_key}.") == "key=[redacted] and [redacted]."
    assert redact("nothing secret") == "nothing secret"

    leak = f"{anthropic_key} / {env_key}"
    with Journal(journal_path(tmp_path)) as j:
        pid = j.add_proposal(make_proposal(description=leak, hypothesis=leak, diff=leak,
                                           reasoning=leak, files={"train.py": leak}))
        j.record_decision(Decision(pid, DecisionKind.EDIT, "human", reason=leak,
                                   edited_diff=leak))
        j.start_run("r1", "c" * 40, "experiment", proposal_id=pid, log_path=leak)
        finish(j, "r1", RunStatus.CRASH, message=leak, metrics={"error": leak})
        j.set_state("note", {"text": leak})
        j.add_notice("error", leak, hint=leak)
        assert j.get_proposal(pid).files == {"train.py": "[redacted] / [redacted]"}

    raw = journal_path(tmp_path).read_bytes() + b"".join(
        p.read_bytes() for p in journal_path(tmp_path).parent.iterdir() if p.is_file())
    assert anthropic_key.encode() not in raw and env_key.encode() not in raw
    assert b"[redacted]" in raw


def test_a_placeholder_env_key_does_not_redact_ordinary_words(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "x")
    assert redact("max_lr") == "max_lr"


def test_writes_from_many_threads_all_land(journal):
    def write(worker):
        for i in range(25):
            journal.add_notice("info", f"{worker}-{i}")
            journal.set_state(f"w{worker}", i)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(journal.notices(limit=1000)) == 100
    assert all(journal.get_state(f"w{w}") == 24 for w in range(4))


WRITER = textwrap.dedent("""
    import sys
    from engine.journal import Journal
    from engine.base.records import RunResult, RunStatus
    journal = Journal(sys.argv[1])
    i = 0
    while True:
        journal.start_run(f"r{i}", "c" * 40, "experiment", description=f"run {i}")
        journal.finish_run(RunResult(run_id=f"r{i}", status=RunStatus.DISCARD, val_bpb=1.0 + i))
        print(i, flush=True)   # only after finish_run returned: this row is committed
        i += 1
""")


def test_kill_9_mid_write_loses_no_committed_row(tmp_path):
    db = tmp_path / "journal.db"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(db)], stdout=subprocess.PIPE,
                              text=True, env=env)
    acknowledged = []
    for line in writer.stdout:
        acknowledged.append(int(line))
        if len(acknowledged) == 40:
            break
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=10)
    writer.stdout.close()
    assert writer.returncode == -signal.SIGKILL

    with Journal(db) as j:
        assert j.journal_mode() == "wal"
        finished = {e.run_id: e.val_bpb for e in j.experiments()}
        for i in acknowledged:
            assert finished[f"r{i}"] == 1.0 + i
        # the row it was writing when killed is either absent or left 'running'
        interrupted = j.interrupted_runs()
        assert len(interrupted) <= 1
        assert len(finished) >= len(acknowledged)
    raw = sqlite3.connect(db)
    assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    raw.close()


def test_report_reader_in_another_process_sees_committed_rows(tmp_path, journal):
    journal.start_run("r1", "c" * 40, "baseline")
    finish(journal, "r1", RunStatus.KEEP, 1.25)
    reader = subprocess.run(
        [sys.executable, "-c",
         "import sys, json; from engine.journal import Journal; "
         "print(json.dumps([e.val_bpb for e in Journal(sys.argv[1]).experiments()]))",
         str(journal.path)],
        capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
        check=True)
    assert json.loads(reader.stdout) == [1.25]


def test_a_decision_records_n_means_sigma_and_margin_as_a_typed_record(tmp_path, journal):
    """Issue 12 item 2: stored as numbers, not written into the message and parsed back."""
    journal.start_run("exp", "1" * 40, "experiment")
    journal.start_run("again", "1" * 40, "rerun")
    first = KeepMeasure(n_best=1, best_mean=1.0, n_candidate=1, candidate_mean=0.99,
                        sigma=None, noise_dof=0, improvement=0.01, margin=None)
    row = journal.finish_run(RunResult(run_id="exp", status=RunStatus.CONFIRMING,
                                       val_bpb=0.99), measure=first)
    assert row.measure == first and row.measure.sigmas is None
    # the re-run's outcome settles the experiment; the measure goes to the experiment's row
    final = KeepMeasure(n_best=2, best_mean=1.0005, n_candidate=2, candidate_mean=0.998,
                        sigma=0.0005, noise_dof=2, improvement=0.0025, margin=0.002244)
    journal.finish_run(RunResult(run_id="again", status=RunStatus.DISCARD, val_bpb=0.996),
                       settles=RunResult(run_id="exp", status=RunStatus.KEEP, val_bpb=0.998),
                       measure=final)
    assert journal.get_run("exp").measure == final
    assert journal.get_run("again").measure is None
    assert final.sigmas == pytest.approx(5.0)
    assert final.describe() == ("n=2 mean 0.998000 vs best 1.000500 (n=2), sigma 0.000500 "
                                "margin 0.002244 (+5.0 sigma)")
    journal.close()
    with Journal(journal_path(tmp_path)) as again:
        assert [e.measure for e in again.experiments()] == [final, None]


def test_a_journal_from_before_the_keep_rule_opens_with_no_measures(tmp_path):
    path = journal_path(tmp_path)
    with Journal(path) as j:
        j.start_run("b", "0" * 40, "baseline")
        finish(j, "b", RunStatus.KEEP, 1.0)
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE measures")
    with Journal(path) as j:
        assert [e.measure for e in j.experiments()] == [None]


def _kept_chain(journal):
    """The baseline, a change kept on top of it, then a re-run of the change."""
    journal.start_run("base", "0" * 40, "baseline", description="baseline")
    finish(journal, "base", RunStatus.KEEP, 1.0, finished_at=10.0)
    journal.start_run("exp", "1" * 40, "experiment", description="warmdown 0.5 -> 0.6")
    kept_on = KeepMeasure(n_best=3, best_mean=1.0, n_candidate=1, candidate_mean=0.99,
                          sigma=0.004, noise_dof=2, improvement=0.01, margin=0.0093,
                          drop_margin=-0.002)
    journal.finish_run(RunResult(run_id="exp", status=RunStatus.KEEP, val_bpb=0.99),
                       finished_at=20.0, measure=kept_on)
    journal.start_run("again", "1" * 40, "noise")
    finish(journal, "again", RunStatus.DISCARD, 1.004, finished_at=30.0)
    return kept_on


def test_a_reverted_keep_gives_the_best_back_with_its_history_kept(tmp_path, journal):
    kept_on = _kept_chain(journal)
    assert journal.best().run_id == "exp" and journal.previous_best().run_id == "base"
    recheck = KeepMeasure(n_best=3, best_mean=1.0, n_candidate=2, candidate_mean=0.997,
                          sigma=0.005, noise_dof=3, improvement=0.003, margin=0.011,
                          drop_margin=0.0035)
    row = journal.revert_keep("exp", Revert(recheck, "0" * 40, "again",
                                            "reverted: over 2 runs, better by only 0.003000"))
    assert row.status is RunStatus.REVERTED
    assert row.measure == kept_on                       # what it was kept on stays
    assert row.revert.measure == recheck and row.revert.back_to == "0" * 40
    assert row.revert.run_id == "again" and row.revert.at > 0
    assert row.revert.describe().startswith("reverted to 0000000: n=2 mean 0.997000 vs best "
                                            "1.000000 (n=3), sigma 0.005000 keep at 0.011000 "
                                            "drop at 0.003500")
    assert journal.best().run_id == "base" and journal.previous_best() is None
    totals = journal.totals()
    assert (totals.kept, totals.reverted, totals.experiments) == (0, 1, 1)
    assert journal.summary_line().startswith("1 experiments: 0 kept, 1 reverted, 0 discarded")
    tsv = journal.results_tsv().splitlines()
    assert tsv[2] == ("1111111\t0.990000\t0.0\tdiscard\twarmdown 0.5 -> 0.6 [kept, then "
                      "reverted: its re-runs showed noise]")
    assert [h.status for h in journal.history()] == ["keep", "reverted"]
    with pytest.raises(ValueError, match="not a kept run"):
        journal.revert_keep("exp", Revert(recheck, "0" * 40, "again", "twice"))
    journal.close()
    with Journal(journal_path(tmp_path)) as again:
        assert again.get_run("exp").revert == row.revert


def test_a_schema_2_journal_gains_the_drop_bound_and_the_reverts(tmp_path):
    path = journal_path(tmp_path)
    with Journal(path) as j:
        j.start_run("b", "0" * 40, "baseline")
        finish(j, "b", RunStatus.KEEP, 1.0)
        j.start_run("e", "1" * 40, "experiment")
        j.finish_run(RunResult(run_id="e", status=RunStatus.KEEP, val_bpb=0.99),
                     measure=KeepMeasure(1, 1.0, 1, 0.99, 0.001, 2, 0.01, 0.005))
    with sqlite3.connect(path) as db:             # the measures table as schema 2 made it
        db.execute("DROP TABLE reverts")
        db.execute("ALTER TABLE measures RENAME TO measures3")
        db.execute("CREATE TABLE measures (run_id TEXT PRIMARY KEY REFERENCES runs(id),"
                   " n_best INTEGER NOT NULL, best_mean REAL NOT NULL, n_candidate INTEGER"
                   " NOT NULL, candidate_mean REAL NOT NULL, sigma REAL, noise_dof INTEGER"
                   " NOT NULL, improvement REAL NOT NULL, margin REAL)")
        db.execute("INSERT INTO measures SELECT run_id, n_best, best_mean, n_candidate,"
                   " candidate_mean, sigma, noise_dof, improvement, margin FROM measures3")
        db.execute("DROP TABLE measures3")
        db.execute("PRAGMA user_version=2")
    with Journal(path) as j:
        assert j.get_run("e").measure == KeepMeasure(1, 1.0, 1, 0.99, 0.001, 2, 0.01, 0.005)
        assert j.get_run("e").revert is None
        j.revert_keep("e", Revert(KeepMeasure(1, 1.0, 2, 1.0, 0.001, 3, 0.0, 0.004, 0.001),
                                  "0" * 40, "b", "reverted"))
        assert j.best().run_id == "b"
