"""The whole loop with the Claude agent: a real Session, the real anthropic SDK against the
local fake Messages API, a real git workspace, real training subprocesses (the tiny config,
fixed steps) and the real SQLite journal.

Every proposal is drafted while the baseline (or the previous experiment) trains, so most
tests never wait for a run; the ones that judge a run use a change that surely lowers
val_bpb with the tiny config: EMBEDDING_LR 0.6 -> 0.3 (deterministic with fixed steps, about
-0.008 bits per byte).
"""

from __future__ import annotations

import subprocess
import threading
import time

import pytest

from engine.agents.claude import ClaudeAgent
from engine.base.events import (BestUpdated, DecisionMade, DraftFailed, DraftStarted, Notice,
                                ProposalReady, ProposalRebased, ProposalStale, ReasoningDelta,
                                RunStarted, SessionStopped, StateChanged)
from engine.base.records import DecisionKind, RunStatus
from engine.session import Session
from tests.fakeapi import (fake_api, rate_limited, server_error, str_replace,  # noqa: F401
                           submit, turn)

pytestmark = pytest.mark.e2e   # real runs through the evaluator

KEY = "sk-ant-session-test-KEY-9876543210"

EMBED_LR = ("EMBEDDING_LR = 0.6", "EMBEDDING_LR = 0.3")       # lowers val_bpb: a keep
WARMDOWN = ("WARMDOWN_RATIO = 0.5", "WARMDOWN_RATIO = 0.3")   # another line; a keep after it
WARMDOWN_CLASH = ("WARMDOWN_RATIO = 0.5", "WARMDOWN_RATIO = 0.7")  # the line WARMDOWN changes
SEED = ("SEED = 42", "SEED = 43")


def edit_turn(change: tuple[str, str], description: str, thinking: str | None = None):
    """One assistant turn that edits train.py and submits."""
    return turn(thinking=thinking, tool_uses=[str_replace("train.py", *change),
                                              submit(description, f"because {description}")])


class Recorder:
    """Collects the session's events; waits for one that matches."""

    def __init__(self):
        self.events = []
        self._changed = threading.Condition()

    def __call__(self, event) -> None:
        with self._changed:
            self.events.append(event)
            self._changed.notify_all()

    def of(self, event_type, /, **fields) -> list:
        return [e for e in self.events if isinstance(e, event_type)
                and all(getattr(e, k) == v for k, v in fields.items())]

    def wait_for(self, event_type, /, timeout: float = 90.0, count: int = 1, **fields):
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.of(event_type, **fields)) < count:
                left = deadline - time.monotonic()
                if left <= 0 or self.of(SessionStopped):
                    seen = [type(e).__name__ for e in self.events
                            if not isinstance(e, ReasoningDelta)]
                    raise AssertionError(f"no {event_type.__name__} {fields or ''} (count "
                                         f"{count}); events: {seen[-30:]}")
                self._changed.wait(min(left, 0.2))
            return self.of(event_type, **fields)[count - 1]


@pytest.fixture
def loop(fake_api, tiny_workspace, tiny_settings, monkeypatch):
    """make(**settings) -> (session, recorder): a session with the Claude agent against the
    fake API, the dummy key only in the environment. Stopped at the end of the test."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    sessions = []

    def make(agent_options: dict | None = None, **overrides):
        agent = ClaudeAgent(base_url=fake_api.base_url, backoff_base=0.001,
                            **(agent_options or {}))
        session = Session(tiny_workspace, agent, tiny_settings(**overrides), monitor=False)
        recorder = Recorder()
        session.subscribe(recorder)
        sessions.append(session)
        session.start()
        return session, recorder

    yield make
    for session in sessions:
        session.stop()
        assert session.wait(1), "the loop threads outlived stop()"


def git(session: Session, *args: str) -> str:
    """Ask git itself: the workspace's GitPython Repo belongs to the loop's threads."""
    return subprocess.run(["git", *args], cwd=session.workspace.root, check=True,
                          capture_output=True, text=True).stdout.strip()


def tsv_rows(session: Session) -> list[list[str]]:
    return [line.split("\t") for line in
            session.workspace.results_tsv_path.read_text().splitlines()]


# ---- review mode: accept, edit, veto --------------------------------------------------------

def test_accepted_proposal_trains_and_lands_in_journal_and_results_tsv(loop, fake_api):
    fake_api.script(edit_turn(EMBED_LR, "embedding lr 0.6 -> 0.3",
                              thinking="Embeddings overshoot at 0.6 in so few steps."))
    # speculation off: this test is of a trainer that waits for the human's decision
    session, events = loop(mode="review", max_experiments=1, speculate=False)
    proposal = events.wait_for(ProposalReady).proposal
    baseline_text = session.workspace.file_at(proposal.base_commit, "train.py")
    assert [p.id for p in session.pending()] == [proposal.id]
    assert "-EMBEDDING_LR = 0.6" in proposal.diff and "+EMBEDDING_LR = 0.3" in proposal.diff
    assert proposal.agent == "claude" and proposal.usage.input_tokens == 1000
    assert "Embeddings overshoot" in proposal.reasoning
    # The baseline done, nothing trains the proposal until the human says so.
    events.wait_for(BestUpdated)
    time.sleep(0.5)
    assert session.state == "reviewing" and session.pending() == [proposal]
    assert not events.of(RunStarted, proposal_id=proposal.id)

    session.accept(proposal.id)
    assert events.of(DecisionMade)[0].decision.kind is DecisionKind.ACCEPT
    assert session.pending() == []
    assert session.wait(timeout=120), "the loop did not stop at --max-experiments 1"

    run = events.of(RunStarted, proposal_id=proposal.id)[0]
    assert session.workspace.file_at(run.commit, "train.py") == \
        baseline_text.replace(*EMBED_LR)
    # the keep rule may re-run the baseline to measure the noise: judged runs only
    baseline, experiment = [e for e in session.experiments() if e.kind != "noise"]
    assert experiment.proposal_id == proposal.id and experiment.commit == run.commit
    assert experiment.status is RunStatus.KEEP and experiment.decided_by == "human"
    assert experiment.val_bpb < baseline.val_bpb
    assert session.best == (run.commit, experiment.val_bpb)
    assert git(session, "rev-parse", session.workspace.branch) == run.commit
    assert session.total_cost == pytest.approx(proposal.usage.cost_usd) and proposal.usage.cost_usd > 0
    header, first, second = tsv_rows(session)
    assert header == ["commit", "val_bpb", "memory_gb", "status", "description"]
    assert first[0] == baseline.commit[:7] and first[3] == "keep"
    assert second == [run.commit[:7], f"{experiment.val_bpb:.6f}", second[2], "keep",
                      "embedding lr 0.6 -> 0.3"]
    assert len(fake_api.requests) == 1
    # The dummy key went to the API and nowhere else.
    assert fake_api.requests[0].api_key == KEY
    stored = [path for path in session.workspace.pairlab_dir.rglob("*") if path.is_file()]
    assert any(path.suffix == ".log" for path in stored)
    assert not [path for path in stored if KEY.encode() in path.read_bytes()]


def test_human_edit_is_what_trains_and_the_agent_is_told(loop, fake_api):
    fake_api.script(edit_turn(EMBED_LR, "embedding lr 0.6 -> 0.3"),
                    edit_turn(WARMDOWN, "shorter warmdown"))
    session, events = loop(mode="review")
    proposal = events.wait_for(ProposalReady).proposal
    agents_text = session.proposal_text(proposal.id, "train.py")
    human_text = agents_text.replace("EMBEDDING_LR = 0.3", "EMBEDDING_LR = 0.4  # human: halfway")

    session.edit(proposal.id, {"train.py": human_text})

    decision = events.of(DecisionMade)[0].decision
    assert decision.kind is DecisionKind.EDIT and decision.who == "human"
    assert "-EMBEDDING_LR = 0.3" in decision.edited_diff
    assert "+EMBEDDING_LR = 0.4  # human: halfway" in decision.edited_diff
    run = events.wait_for(RunStarted, proposal_id=proposal.id)
    assert session.workspace.file_at(run.commit, "train.py") == human_text
    assert "pairlab-edited-by: human" in git(session, "log", "-1", "--format=%B", run.commit)

    # The next draft is made while the edited proposal trains, and hears about the edit.
    events.wait_for(ProposalReady, count=2)
    told = fake_api.requests[1].messages[0]["content"][0]["text"]
    assert f"the human edited your proposal {proposal.id} (embedding lr 0.6 -> 0.3)" in told
    assert "-EMBEDDING_LR = 0.3" in told and "+EMBEDDING_LR = 0.4  # human: halfway" in told
    assert "the human edited" not in fake_api.requests[0].text


def test_veto_reason_reaches_the_next_request(loop, fake_api):
    reason = "embedding LR is off limits this week: we are isolating the Muon changes"
    fake_api.script(edit_turn(EMBED_LR, "embedding lr 0.6 -> 0.3"),
                    edit_turn(WARMDOWN, "shorter warmdown"))
    session, events = loop(mode="review")
    vetoed = events.wait_for(ProposalReady).proposal
    assert reason not in fake_api.requests[0].text

    session.veto(vetoed.id, reason)

    decision = events.wait_for(DecisionMade).decision
    assert (decision.kind, decision.reason) == (DecisionKind.VETO, reason)
    redrafted = events.wait_for(ProposalReady, count=2).proposal
    assert [p.id for p in session.pending()] == [redrafted.id]
    told = fake_api.requests[1].system_text
    assert f"vetoed by the human, who said: {reason}" in told
    assert not events.of(RunStarted, proposal_id=vetoed.id)
    assert session.journal.get_proposal(vetoed.id).state.value == "vetoed"


# ---- the model's mistakes and the API's ---------------------------------------------------------

def test_missed_then_ambiguous_edit_repaired_by_the_retry_is_a_valid_proposal(loop, fake_api):
    fake_api.script(
        turn(text="Lower the embedding LR.",
             tool_uses=[str_replace("train.py", "EMBEDDING_LR = 0.7", "EMBEDDING_LR = 0.3")]),
        turn(tool_uses=[str_replace("train.py", "= 0.5", "= 0.4")]),
        edit_turn(WARMDOWN, "shorter warmdown"),
    )
    session, events = loop(mode="review")
    proposal = events.wait_for(ProposalReady).proposal

    missed, ambiguous = (fake_api.requests[n].tool_results()[0] for n in (1, 2))
    assert missed["is_error"] and missed["content"].startswith("No match for old_str in train.py")
    assert ambiguous["is_error"] and "old_str matches 2 times in train.py" in ambiguous["content"]
    assert len(fake_api.requests) == 3
    base = session.workspace.file_at(proposal.base_commit, "train.py")
    assert proposal.files == {"train.py": base.replace(*WARMDOWN)}
    warmdown = next(line for line in base.splitlines() if line.startswith("WARMDOWN_RATIO"))
    changed = [line for line in proposal.diff.splitlines()
               if line[:1] in "+-" and line[:3] not in ("+++", "---")]
    assert changed == ["-" + warmdown, "+" + warmdown.replace(*WARMDOWN)]
    assert not events.of(DraftFailed) and not events.of(Notice, level="error")
    tool_lines = "".join(e.text for e in events.of(ReasoningDelta, kind="tool"))
    assert "No match for old_str" in tool_lines and "submit_experiment: accepted" in tool_lines


def test_rate_limited_then_success(loop, fake_api):
    fake_api.script(rate_limited(retry_after=0.2), edit_turn(EMBED_LR, "embedding lr 0.6 -> 0.3"))
    session, events = loop(mode="review")
    proposal = events.wait_for(ProposalReady).proposal

    first, second = fake_api.requests
    assert second.at - first.at >= 0.2
    assert "+EMBEDDING_LR = 0.3" in proposal.diff
    tool_lines = "".join(e.text for e in events.of(ReasoningDelta, kind="tool"))
    assert "429 Too Many Requests; try 2 of 4" in tool_lines
    assert not session.paused and not events.of(Notice, level="error")


def test_server_errors_until_retries_run_out_pause_the_loop_and_resume_carries_on(loop, fake_api):
    fake_api.script(*[server_error()] * 3)
    session, events = loop({"max_tries": 3}, mode="review")

    notice = events.wait_for(Notice, level="error")
    assert notice.message == ("Anthropic API unavailable after 3 tries: 500 Internal Server "
                              "Error; the loop is paused — press p to resume")
    assert "status.anthropic.com" in notice.hint
    assert events.wait_for(DraftFailed).message == notice.message
    events.wait_for(StateChanged, state="paused")
    assert session.paused and session.state == "paused"
    assert len(fake_api.requests) == 3
    # Paused: no crash, no further requests, the threads still there.
    time.sleep(0.5)
    assert len(fake_api.requests) == 3 and not session.stopped
    assert session.journal.notices()[-1]["message"] == notice.message

    fake_api.script(edit_turn(EMBED_LR, "embedding lr 0.6 -> 0.3"))
    session.resume()
    proposal = events.wait_for(ProposalReady).proposal
    assert not session.paused and session.state != "paused"
    assert [p.id for p in session.pending()] == [proposal.id]
    assert len(fake_api.requests) == 4


# ---- pipelining --------------------------------------------------------------------------------

def test_pipelined_drafts_are_rebased_after_a_keep_or_redrafted_when_they_clash(loop, fake_api):
    fake_api.script(
        edit_turn(EMBED_LR, "embedding lr 0.6 -> 0.3"),      # 1: a keep
        edit_turn(WARMDOWN, "warmdown 0.5 -> 0.3"),          # 2: a keep on top of 1
        edit_turn(WARMDOWN_CLASH, "warmdown 0.5 -> 0.7"),    # 3: the line 2 changes
        edit_turn(SEED, "another seed"),                     # 4: the redraft of 3
    )
    session, events = loop(mode="auto", drafts_ahead=1)
    ws = session.workspace
    baseline = events.wait_for(BestUpdated)
    first_run = events.wait_for(RunStarted, proposal_id=1)

    # 2 is drafted against the old best while 1 trains ...
    second = events.wait_for(ProposalReady, count=2)
    assert second.proposal.id == 2
    assert events.of(DraftStarted, draft_id=2)[0].base_commit == baseline.commit
    kept = events.wait_for(BestUpdated, count=2)
    order = events.events.index
    assert order(first_run) < order(second) < order(kept)
    # ... and moves onto 1 when 1 is kept.
    assert kept.commit == first_run.commit
    rebased = events.wait_for(ProposalRebased, proposal_id=2)
    assert rebased.base_commit == first_run.commit
    assert "+WARMDOWN_RATIO = 0.3" in rebased.diff and "EMBEDDING_LR" not in rebased.diff
    second_run = events.wait_for(RunStarted, proposal_id=2)
    assert git(session, "rev-parse", f"{second_run.commit}^") == first_run.commit
    assert ws.file_at(second_run.commit, "train.py") == \
        ws.file_at(baseline.commit, "train.py").replace(*EMBED_LR).replace(*WARMDOWN)
    assert session.journal.get_proposal(2).base_commit == first_run.commit

    # 3 is drafted against 1 while 2 trains; when 2 is kept it no longer applies.
    third = events.wait_for(ProposalReady, count=3)
    assert third.proposal.id == 3
    assert events.of(DraftStarted, draft_id=3)[0].base_commit == first_run.commit
    kept_again = events.wait_for(BestUpdated, count=3)
    assert order(second_run) < order(third) < order(kept_again)
    assert kept_again.commit == second_run.commit
    stale = events.wait_for(ProposalStale, proposal_id=3)
    assert "no longer applies" in stale.reason
    assert session.journal.get_proposal(3).state.value == "stale"
    assert events.wait_for(ProposalReady, count=4).proposal.id == 4
    assert events.of(DraftStarted, draft_id=4)[0].base_commit == second_run.commit
    assert "Your proposal 3 (warmdown 0.5 -> 0.7) no longer applies" in \
        fake_api.requests[3].messages[0]["content"][0]["text"]
    assert not events.of(RunStarted, proposal_id=3)
    kept_rows = [e for e in session.experiments() if e.status is RunStatus.KEEP]
    assert [e.commit for e in kept_rows] == [baseline.commit, first_run.commit, second_run.commit]
    assert kept_rows[0].val_bpb > kept_rows[1].val_bpb > kept_rows[2].val_bpb
