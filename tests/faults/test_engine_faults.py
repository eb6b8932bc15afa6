"""Faults around the engine: it is killed, a human touches the workspace, the disk fills up,
the prepared data goes missing or bad. Real git, real SQLite, real training processes.
"""

import os
import shutil
import signal
import subprocess
import time

import psutil
import pytest

from engine.agents.tuner import TunerAgent
from engine.base.events import Notice, ProposalReady, SessionStopped
from engine.base.records import RunStatus
from engine.journal import Journal
from engine.session import Session
from engine.workspace import Workspace
from tests.faults.conftest import (assert_git_matches_journal, assert_nothing_lost, fault_settings,
                                   headless, journal_snapshot, prepend, results_rows, run_fault,
                                   stash_list, wait_for)

CRASH_NOW = "raise RuntimeError('deliberate crash')"
HUMAN_LINE = "# human: try a deeper model next"


def _trainers(root):
    """Training processes running in the workspace (any that outlived their engine)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        try:
            if proc.info["cwd"] == str(root) and "train.py" in (proc.info["cmdline"] or []):
                found.append(proc)
        except psutil.Error:
            pass
    return found


# ---------------------------------------------------------------------- the engine is killed

def test_engine_killed_with_sigkill_mid_run_resumes_on_restart(baselined_workspace,
                                                                 dataset_dir):
    root = baselined_workspace.root
    engine = headless(root, dataset_dir, "--mode", "auto", "--max-experiments", "1")
    wait_for(lambda: _trainers(root), what="an experiment training")
    before = journal_snapshot(root)
    in_flight = [r for r in before["runs"] if r["status"] == "running"]
    assert [r["kind"] for r in in_flight] == ["experiment"]
    engine.send_signal(signal.SIGKILL)
    engine.communicate(timeout=10)
    # the orphaned run dies with its engine instead of holding the accelerator
    wait_for(lambda: not _trainers(root), timeout=10, what="the orphaned run to die")

    engine = headless(root, dataset_dir, "--mode", "auto", "--max-experiments", "1")
    out, err = engine.communicate(timeout=120)
    assert engine.returncode == 0, err
    after = journal_snapshot(root)
    # The proposal trains again; a win may add re-runs of the best for the keep rule's noise
    # estimate (noise runs), counted apart from experiments.
    known = {r["id"] for r in before["runs"]}
    new_kinds = [r["kind"] for r in after["runs"] if r["id"] not in known]
    assert new_kinds.count("experiment") == 1 and set(new_kinds) <= {"experiment", "noise"}
    added = assert_nothing_lost(before, after, new_runs=len(new_kinds))
    retrained = next(r for r in added if r["kind"] == "experiment")
    interrupted = next(r for r in after["runs"] if r["id"] == in_flight[0]["id"])
    assert interrupted["status"] == RunStatus.INTERRUPTED.value
    assert retrained["proposal_id"] == in_flight[0]["proposal_id"]     # the same proposal
    assert retrained["status"] in ("keep", "discard")
    assert (f"warning: run {in_flight[0]['id']} ({in_flight[0]['description']}) was "
            "interrupted when the engine stopped; it trains again now (nothing recorded was "
            "lost)") in out
    assert "stopped: reached --max-experiments 1" in out
    assert_git_matches_journal(root)
    assert len(results_rows(baselined_workspace)) == 2     # baseline + the retrained run


def test_engine_killed_between_commit_and_run(baselined_workspace, dataset_dir):
    """The window between `commit_change` and `journal.start_run` has no hook a test can
    stop a real engine in, so the state a kill -9 there leaves is built exactly: a proposal
    accepted in the journal, its commit on the research branch, no run row."""
    ws = baselined_workspace
    session = Session(ws, TunerAgent(), fault_settings(dataset_dir), monitor=False)
    session.start()
    try:
        proposal = wait_for(lambda: (session.pending() or [None])[0], what="a proposal")
        session.pause()                       # decided, but the trainer must not take it
        text = session.proposal_text(proposal.id, "train.py")
        session.edit(proposal.id, {"train.py": prepend(text, CRASH_NOW)})
    finally:
        session.stop()
    session.journal.close()
    journal = Journal(ws.pairlab_dir / "journal.db")
    decided = journal.get_proposal(proposal.id)
    baseline = journal.best().commit
    journal.close()
    orphan = ws.commit_change(decided.files, decided.commit_message(None), parent=baseline)
    assert ws.head() == orphan != baseline

    outcome = run_fault(ws, fault_settings(dataset_dir), proposal_id=proposal.id)
    added = assert_nothing_lost(outcome.before, outcome.after)
    assert added[0]["proposal_id"] == proposal.id and added[0]["status"] == "crash"
    assert outcome.finished.result.message == "train.py crashed: RuntimeError: deliberate crash"
    warning = next(n for n in outcome.notices if "stood at" in n.message)
    assert warning.message == (
        f"the research branch stood at {orphan[:7]}, a commit with no result in the journal: "
        f"pairlab reset it to the best kept commit {baseline[:7]}; an accepted proposal that "
        "had not trained yet trains now")
    assert f"`git branch keep-{orphan[:7]} {orphan[:7]}`" in warning.hint
    assert outcome.head == baseline
    assert subprocess.run(["git", "merge-base", "--is-ancestor", orphan, ws.head()],
                          cwd=ws.root).returncode == 1
    assert outcome.next_proposals


# ---------------------------------------------------------------------- a human in the workspace

def test_uncommitted_human_changes_at_start_are_stashed_not_lost(baselined_workspace,
                                                                 dataset_dir):
    ws = baselined_workspace
    train = ws.root / "train.py"
    human_text = train.read_text() + HUMAN_LINE + "\n"
    train.write_text(human_text)
    (ws.root / "program.md").write_text("Focus on the learning rates.\n")   # not a target

    outcome = run_fault(ws, fault_settings(dataset_dir),
                        lambda text: prepend(text, CRASH_NOW))
    assert_nothing_lost(outcome.before, outcome.after)
    [stash] = stash_list(ws)
    stash_commit = stash.split()[0]
    notice = next(n for n in outcome.notices if "stash" in n.message)
    assert notice.message == (f"your uncommitted changes to train.py were saved as a git stash "
                              f"({stash_commit[:7]}) before pairlab restored the research "
                              "branch")
    assert notice.hint == "get them back with `git stash pop` in the workspace"
    assert ws.file_at(stash_commit, "train.py") == human_text          # nothing lost
    assert (ws.root / "program.md").read_text() == "Focus on the learning rates.\n"
    assert outcome.next_proposals


def test_human_edits_train_py_while_a_run_is_in_flight(baselined_workspace, dataset_dir):
    ws = baselined_workspace
    slow_crash = ("import time\nprint('pairlab-test: running', flush=True)\n"
                  "time.sleep(1.5)\n" + CRASH_NOW)

    def human_edits(session, started):
        log = ws.logs_dir / f"{started.run_id}.log"
        wait_for(lambda: log.exists() and "pairlab-test: running" in log.read_text(),
                 what="the run to print")
        train = ws.root / "train.py"
        text = train.read_text() + HUMAN_LINE + "\n"
        train.write_text(text)
        return text

    outcome = run_fault(ws, fault_settings(dataset_dir), lambda text: prepend(text, slow_crash),
                        during=human_edits)
    assert_nothing_lost(outcome.before, outcome.after)
    assert outcome.finished.result.message == "train.py crashed: RuntimeError: deliberate crash"
    [stash] = stash_list(ws)
    stash_commit = stash.split()[0]
    assert ws.file_at(stash_commit, "train.py") == outcome.extra["during"]
    notice = next(n for n in outcome.notices if "stash" in n.message)
    assert notice.message == (f"your uncommitted changes to train.py were saved as a git stash "
                              f"({stash_commit[:7]}) before pairlab reset the research branch")
    assert notice.hint == "get them back with `git stash pop` in the workspace"
    assert outcome.next_proposals


# ---------------------------------------------------------------------- the disk is full

@pytest.fixture
def small_disk(tmp_path):
    """A real 4 MiB filesystem (tmpfs): ENOSPC comes from the kernel, exactly as on a full
    disk. Mounting needs root (CI containers run as root); elsewhere the test is skipped,
    because RLIMIT_FSIZE raises EFBIG/SIGXFSZ per file, which is a different fault."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=True)


def _fill(directory):
    """Write a filler file until the filesystem refuses, down to the last byte: disk full."""
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        for size in (1 << 16, 4096, 1):
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError:
                    break
    finally:
        os.close(fd)


def test_disk_full_stops_the_loop_and_loses_nothing(baselined_workspace, dataset_dir,
                                                    small_disk):
    shutil.copytree(baselined_workspace.root, small_disk / "ws", symlinks=True)
    ws = Workspace.open(small_disk / "ws")
    slow_crash = ("import time\nprint('pairlab-test: running', flush=True)\n"
                  "time.sleep(1.0)\n" + CRASH_NOW)

    def disk_fills_up(session, started):
        log = ws.logs_dir / f"{started.run_id}.log"
        wait_for(lambda: log.exists() and "pairlab-test: running" in log.read_text(),
                 what="the run to print")
        _fill(small_disk)
        return journal_snapshot(ws)

    full = run_fault(ws, fault_settings(dataset_dir), lambda text: prepend(text, slow_crash),
                     during=disk_fills_up, expect="stopped", check_git=False)
    # everything the journal had when the disk filled up is still there
    assert_nothing_lost(full.extra["during"], full.after, new_runs=0)
    notice = next(n for n in full.notices if n.message.startswith("disk full"))
    assert notice.level == "error"
    assert notice.message.startswith(f"disk full: no space left on the device of {ws.root} (")
    assert notice.message.endswith("); pairlab stopped the loop")
    assert notice.hint == ("free some space there, then start pairlab again: it resumes where "
                           "it stopped, and nothing already recorded is lost")
    stopped = [e for e in full.events if isinstance(e, SessionStopped)]
    assert [e.reason for e in stopped] == ["disk full"]

    # The user frees space and starts again: the cut-off run is redone, git follows the journal.
    (small_disk / "filler").unlink()
    again = run_fault(ws, fault_settings(dataset_dir), proposal_id=full.proposal_id)
    added = assert_nothing_lost(full.before, again.after, new_runs=2)
    assert [r["status"] for r in added] == ["interrupted", "crash"]
    assert again.finished.result.message == "train.py crashed: RuntimeError: deliberate crash"
    assert any("was interrupted when the engine stopped; it trains again now" in n.message
               for n in again.notices)
    assert again.next_proposals


# ---------------------------------------------------------------------- the data cache

def _data_fault(workspace, data_dir, break_data, expected_message):
    """Start a session on broken data: it must pause with the message and run nothing; once
    the data is whole again, `resume` (the p key) lets the loop go on."""
    original = data_dir.parent / "original"
    shutil.copytree(data_dir, original)
    break_data(data_dir)
    before = journal_snapshot(workspace)
    session = Session(workspace, TunerAgent(), fault_settings(data_dir), monitor=False)
    events = []
    session.subscribe(events.append)
    session.start()
    try:
        wait_for(lambda: session.paused, what="the loop to pause")
        time.sleep(0.3)                            # nothing may train or draft meanwhile
        notices = [e for e in events if isinstance(e, Notice)]
        assert [(n.level, n.message) for n in notices] == [("error", expected_message)]
        assert notices[0].hint == ("rebuild it with `pairlab prepare --force` (with your own "
                                   "text: `pairlab prepare --text FILE... --force`), then "
                                   "press p to resume")
        assert session.state == "paused"
        assert_nothing_lost(before, journal_snapshot(workspace), new_runs=0)
        assert_git_matches_journal(workspace)

        shutil.rmtree(data_dir, ignore_errors=True)
        shutil.copytree(original, data_dir)       # `pairlab prepare --force`, in effect
        session.resume()
        wait_for(lambda: any(isinstance(e, ProposalReady) for e in events),
                 what="the loop to go on")
    finally:
        session.stop()
    session.journal.close()
    assert_git_matches_journal(workspace)


def test_data_cache_missing(baselined_workspace, dataset_dir, tmp_path):
    data = tmp_path / "data" / "default"
    shutil.copytree(dataset_dir, data)
    _data_fault(baselined_workspace, data, shutil.rmtree,
                f"there is no prepared training data at {data}")


def test_data_cache_val_bin_truncated(baselined_workspace, dataset_dir, tmp_path):
    data = tmp_path / "data" / "default"
    shutil.copytree(dataset_dir, data)
    size = (data / "val.bin").stat().st_size

    def truncate(directory):
        with open(directory / "val.bin", "r+b") as f:
            f.truncate(1000)

    _data_fault(baselined_workspace, data, truncate,
                f"the training data at {data} is corrupt: val.bin is 1,000 bytes, meta.json "
                f"says {size:,} (truncated or overwritten)")


def test_data_cache_tokenizer_is_garbage(baselined_workspace, dataset_dir, tmp_path):
    data = tmp_path / "data" / "default"
    shutil.copytree(dataset_dir, data)

    def garble(directory):
        (directory / "tokenizer.pkl").write_bytes(b"not a pickle at all")

    _data_fault(baselined_workspace, data, garble,
                f"the training data at {data} is corrupt: val.bin, tokenizer.pkl or "
                "token_bytes.npy changed since it was prepared (checksum mismatch)")
