"""Real engine processes (started the way `pairlab` starts them: detached, serving the
workspace's socket) with real clients: several at once, a kill -9 under them, and a storm of
random commands. Real git, real SQLite, real training (tiny config) or a stand-in run."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from test_service_support import (WAIT_S, Watch, engine_argv, engine_env,  # noqa: F401
                                  engine_pid, wait_gone)

from engine import workspace as ws_module
from engine.base.events import DecisionMade, ProposalReady, RunFinished, RunStarted
from engine.base.records import DecisionKind
from engine.service.client import CommandRefused, EngineFailed
from engine.workspace.patch import PatchRefused
from pairlab.cli import attach, restart_argv, start_engine
from tests.faults.conftest import (assert_git_matches_journal, assert_nothing_lost,  # noqa: F401
                                   baselined_template, baselined_workspace, journal_snapshot)

pytestmark = pytest.mark.e2e

def first_pending(client, watch: Watch) -> int:
    if client.pending():
        return client.pending()[0].id
    return watch.wait_for(lambda e: isinstance(e, ProposalReady), "a proposal").proposal.id


def test_two_clients_see_one_veto_and_the_second_decision_is_refused(baselined_workspace,
                                                                      engine_env):
    root = baselined_workspace.root
    engine_env.append(root)
    first = start_engine(baselined_workspace, engine_argv(root, "--mode", "review"))
    second = attach(baselined_workspace)
    first_watch, second_watch = Watch(first), Watch(second)
    proposal_id = first_pending(first, first_watch)

    first.veto(proposal_id, "too risky for this budget")
    vetoed = second_watch.wait_for(
        lambda e: isinstance(e, DecisionMade) and e.decision.proposal_id == proposal_id,
        "the veto in the other client")
    assert vetoed.decision.kind is DecisionKind.VETO
    assert vetoed.decision.reason == "too risky for this budget"
    assert proposal_id not in {p.id for p in second.pending()}
    with pytest.raises(CommandRefused) as refused:
        second.accept(proposal_id)
    assert str(proposal_id) in str(refused.value)

    pid = engine_pid(root)
    assert os.getsid(pid) == pid          # its own session: the terminal closing cannot end it
    second.stop()
    for watch in (first_watch, second_watch):
        assert watch.lost().stopped is True
    wait_gone(pid)
    decisions = journal_snapshot(root)["decisions"]
    assert [(d["proposal_id"], d["kind"]) for d in decisions] == [(proposal_id, "veto")]
    assert_git_matches_journal(root)


def test_kill_9_under_two_clients_both_say_so_and_a_restart_loses_nothing(baselined_workspace,
                                                                           engine_env):
    root = baselined_workspace.root
    engine_env.append(root)
    first = start_engine(baselined_workspace,
                         engine_argv(root, "--mode", "auto", "--max-experiments", "1"))
    second = attach(baselined_workspace, read_only=True)
    first_watch, second_watch = Watch(first), Watch(second)
    run = first_watch.wait_for(lambda e: isinstance(e, RunStarted) and e.proposal_id is not None,
                               "an experiment training")
    pid = engine_pid(root)
    os.kill(pid, signal.SIGKILL)
    for watch in (first_watch, second_watch):
        lost = watch.lost()
        assert lost.stopped is False
        assert lost.message.startswith("the engine is gone (killed or crashed)")
    wait_gone(pid)
    before = journal_snapshot(root)

    restarted = start_engine(baselined_workspace, restart_argv(baselined_workspace))
    assert engine_pid(root) != pid
    watch = Watch(restarted)
    finished = watch.wait_for(lambda e: isinstance(e, RunFinished)
                              and e.experiment.proposal_id == run.proposal_id,
                              "the interrupted proposal to train again")
    assert finished.result.status.value in ("keep", "discard")
    assert watch.lost().stopped is True                # it stops by itself: --max-experiments 1
    wait_gone(engine_pid(root))
    after = journal_snapshot(root)
    added = assert_nothing_lost(before, after, new_runs=1)
    assert added[0]["proposal_id"] == run.proposal_id
    interrupted = next(r for r in after["runs"] if r["id"] == run.run_id)
    assert interrupted["status"] == "interrupted"
    assert_git_matches_journal(root)


# ---------------------------------------------------------------------- the stress test

STAND_IN = '''"""A stand-in for training in the service stress test: a run in milliseconds, its
val_bpb a fixed function of train.py, printed as autoresearch's summary block."""
import hashlib
source = open("train.py", encoding="utf-8").read()
digest = int(hashlib.sha256(source.encode()).hexdigest()[:8], 16)
for step in range(4):
    print(f"step {step} | loss: {3.0 - step * 0.1:.3f}", flush=True)
print("---")
print(f"val_bpb: {1.0 + (digest % 10000) / 100000:.6f}")
print("peak_vram_mb: 1.0")
'''


@pytest.fixture
def stand_in_workspace(tmp_path):
    """An adopted repo: the real train.py template, run by a stand-in that takes no time."""
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copy(Path(__file__).resolve().parents[1] / "nanochat" / "train.py", root / "train.py")
    (root / "stand_in.py").write_text(STAND_IN)
    for args in (["init", "-q"], ["add", "."], ["-c", "user.name=t", "-c", "user.email=t@t",
                                                "commit", "-qm", "start"]):
        subprocess.run(["git", *args], cwd=root, check=True)
    return ws_module.adopt(root, run_command=[sys.executable, "stand_in.py"],
                           metric_source="summary_line", tag="stress")


COMMANDS_PER_CLIENT = 500


def storm(client, watch: Watch, seed: int, workspace, failures: list) -> None:
    """Random commands, paced by the engine: every few commands, wait for its next event."""
    rng = random.Random(seed)
    for number in range(COMMANDS_PER_CLIENT):
        if number % 10 == 0:
            count = len(watch.events)
            watch.wait_for(lambda e, c=count: len(watch.events) > c, "the next event")
            if not client.connected:
                failures.append(f"the engine stopped after {number} commands:\n{watch.story()}")
                return
        pending = [p.id for p in client.pending()]
        target = rng.choice(pending) if pending and rng.random() < 0.8 else rng.randint(1, 500)
        choice = rng.choice(["accept", "accept", "veto", "pause", "resume", "mode", "kill",
                             "text", "edit", "note"])
        try:
            if choice == "accept":
                client.accept(target)
            elif choice == "veto":
                client.veto(target, f"stress {seed}-{number}")
            elif choice == "pause":
                client.pause()
            elif choice == "resume":
                client.resume()
            elif choice == "mode":
                client.set_mode(rng.choice(["review", "auto"]))
            elif choice == "kill":
                client.kill_run()
            elif choice == "text":
                client.proposal_text(target, "train.py")
            elif choice == "edit":
                proposal = client.proposal(target)
                text = client.proposal_text(target, "train.py")
                client.edit(target, {"train.py": text + f"# stress {number}\n"},
                            proposal.base_commit)
            elif choice == "note":
                client.note(f"stress note {number}")
        except EngineFailed as exc:
            failures.append(f"{choice} #{target}: {exc}")
        except (CommandRefused, PatchRefused, KeyError):
            pass                               # refused with a message: what a race looks like


def test_two_clients_storm_the_engine_and_everything_stays_consistent(stand_in_workspace,
                                                                      engine_env):
    root = stand_in_workspace.root
    engine_env.append(root)
    first = start_engine(stand_in_workspace, engine_argv(root, "--mode", "review",
                                                         "--drafts-ahead", "2"))
    second = attach(stand_in_workspace)
    watches = [Watch(first), Watch(second)]
    failures: list[str] = []
    threads = [threading.Thread(target=storm, args=(client, watch, seed, stand_in_workspace,
                                                    failures))
               for seed, (client, watch) in enumerate(zip((first, second), watches))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S * 3)
    assert not any(t.is_alive() for t in threads), "a client stopped getting answers"
    assert failures == []
    assert first.connected and second.connected, "the engine died under the storm"

    pid = engine_pid(root)
    first.stop()
    for watch in watches:
        assert watch.lost().stopped is True
    wait_gone(pid)
    snapshot = journal_snapshot(root)
    # one decision per proposal, before it trains; a held win's later settlement by a
    # human is its own record, one per held run
    decided = [d["proposal_id"] for d in snapshot["decisions"]]
    twice = {i for i in decided if decided.count(i) > 1}
    assert not twice, "a proposal was decided twice:\n" + "\n".join(
        repr(row) for table in ("decisions", "settlements", "runs")
        for row in snapshot.get(table, []) if row["proposal_id"] in twice)
    experiments = [r for r in snapshot["runs"] if r["kind"] == "experiment"]
    assert experiments, "no experiment trained during the storm"
    trained = [r["proposal_id"] for r in experiments if r["status"] != "interrupted"]
    assert len(trained) == len(set(trained)), "a proposal trained twice"
    assert set(trained) <= set(decided)
    vetoed = {d["proposal_id"] for d in snapshot["decisions"] if d["kind"] == "veto"}
    assert not vetoed & set(trained), "a vetoed proposal trained"
    settled = {s["run_id"]: s["proposal_id"] for s in snapshot["settlements"]}
    assert {r["id"]: r["proposal_id"] for r in experiments if r["id"] in settled} == settled
    # a speculative run of a vetoed proposal was killed or dropped as vetoed (or cut short
    # by a rebase before the veto); an accepted one's finished run became its experiment
    ahead = [r for r in snapshot["runs"] if r["kind"] == "speculative"]
    assert {r["status"] for r in ahead if r["proposal_id"] in vetoed} <= {"vetoed",
                                                                         "interrupted"}
    assert not [r for r in ahead if r["proposal_id"] in set(decided) - vetoed
                and r["status"] == "speculative"], "an accepted run trained ahead was not judged"
    assert_git_matches_journal(root)
    log = (root / ".pairlab" / "engine.log").read_text()
    assert "Traceback" not in log and "internal error" not in log
