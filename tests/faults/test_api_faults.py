"""Faults of the Anthropic API and of the model's tool calls, survived by the Claude agent.

Each test runs a real Session with the real ClaudeAgent against the fake Messages API
(tests/fakeapi.py), on a workspace whose baseline already trained, in review mode: the
faulty draft either ends as a proposal waiting for review (the fault was retried or
repaired) or pauses the loop with a message that says what to do. Nothing trains, so the
journal must keep every row it had, gain at most the new proposal and notices, and git must
still stand on the baseline.
"""

from __future__ import annotations

import threading
import time

import pytest

from engine.agents.claude import ClaudeAgent
from engine.base.events import (DraftFailed, Notice, ProposalReady, ReasoningDelta, SessionStopped,
                                StateChanged)
from engine.session import Session
from tests.fakeapi import (EDITOR, SUBMIT, broken, closed_port, fake_api, overloaded,  # noqa: F401
                           rate_limited, server_error, str_replace, stream_error, submit, turn)
from tests.faults.conftest import (assert_git_matches_journal, assert_nothing_lost, fault_settings,
                                   journal_snapshot)

KEY = "sk-ant-test-api-faults-0123456789"
EMBED_LR = ("EMBEDDING_LR = 0.6", "EMBEDDING_LR = 0.3")
WAIT_S = 60.0


def edit_turn(change: tuple[str, str] = EMBED_LR, description: str = "embedding lr 0.6 -> 0.3"):
    return turn(tool_uses=[str_replace("train.py", *change),
                           submit(description, f"because {description}")])


class Events:
    """The session's events, collected on the engine's threads; waits for one that matches."""

    def __init__(self):
        self.all = []
        self._changed = threading.Condition()

    def __call__(self, event) -> None:
        with self._changed:
            self.all.append(event)
            self._changed.notify_all()

    def of(self, event_type, /, **fields) -> list:
        return [e for e in self.all if isinstance(e, event_type)
                and all(getattr(e, k) == v for k, v in fields.items())]

    def wait_for(self, event_type, /, timeout: float = WAIT_S, **fields):
        deadline = time.monotonic() + timeout
        with self._changed:
            while not self.of(event_type, **fields):
                left = deadline - time.monotonic()
                if left <= 0 or self.of(SessionStopped):
                    seen = [type(e).__name__ for e in self.all if not isinstance(e, ReasoningDelta)]
                    raise AssertionError(f"no {event_type.__name__} {fields or ''}; events: {seen}")
                self._changed.wait(min(left, 0.2))
            return self.of(event_type, **fields)[0]

    def tool_lines(self) -> list[str]:
        """What the reasoning panel shows of tool calls and retries, one line each."""
        return [e.text for e in self.of(ReasoningDelta, kind="tool")]


class Loop:
    """One Session with the Claude agent; `finish` stops it and checks journal and git."""

    def __init__(self, workspace, agent: ClaudeAgent, settings):
        self.workspace = workspace
        self.agent = agent
        self.before = journal_snapshot(workspace)
        self.session = Session(workspace, agent, settings, monitor=False)
        self.events = Events()
        self.session.subscribe(self.events)
        self.session.start()

    def finish(self, new_proposals: int) -> dict:
        """Stop the loop; no run was added or changed, exactly `new_proposals` proposals were,
        each still waiting for review; git still stands on the baseline. Returns the snapshot."""
        self.session.stop()
        assert self.session.wait(1), "the loop threads outlived stop()"
        after = journal_snapshot(self.workspace)
        self.session.journal.close()
        assert_nothing_lost(self.before, after, new_runs=0)
        added = after["proposals"][len(self.before.get("proposals", [])):]
        assert len(added) == new_proposals
        assert all(p["state"] == "pending" for p in added)
        head = assert_git_matches_journal(self.workspace)
        assert head == self.before["runs"][0]["commit_sha"]
        return after


@pytest.fixture
def claude_loop(fake_api, baselined_workspace, dataset_dir, monkeypatch):
    """make(base_url=None, **agent_options) -> Loop in review mode against the fake API."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    loops = []

    def make(base_url: str | None = None, **agent_options) -> Loop:
        agent = ClaudeAgent(base_url=base_url or fake_api.base_url, backoff_base=0.001,
                            **agent_options)
        loop = Loop(baselined_workspace, agent, fault_settings(dataset_dir))
        loops.append(loop)
        return loop

    yield make
    for loop in loops:
        loop.session.stop()


def assert_proposal_is_the_edit(loop: Loop, proposal) -> None:
    assert [p.id for p in loop.session.pending()] == [proposal.id]
    changed = [line for line in proposal.diff.splitlines()
               if line[:1] in "+-" and line[:3] not in ("+++", "---")]
    assert changed == [f"-{EMBED_LR[0]}  # AdamW lr of the token and value embeddings",
                       f"+{EMBED_LR[1]}  # AdamW lr of the token and value embeddings"]
    assert not loop.events.of(DraftFailed) and not loop.events.of(Notice, level="error")
    assert not loop.session.paused


# ---- transient API errors: retried with backoff, shown in the reasoning panel ----------------

def test_rate_limited_then_ok(claude_loop, fake_api):
    fake_api.script(rate_limited(retry_after=0.3), edit_turn())
    loop = claude_loop()
    proposal = loop.events.wait_for(ProposalReady).proposal

    first, second = fake_api.requests
    assert second.at - first.at >= 0.3, "retry-after was not honoured"
    assert "Anthropic API: 429 Too Many Requests; try 2 of 4 in 0.3s" in loop.events.tool_lines()
    assert_proposal_is_the_edit(loop, proposal)
    assert proposal.usage.input_tokens == 1000          # the refused request costs nothing
    loop.finish(new_proposals=1)


def test_overloaded_529_and_overloaded_mid_stream_then_ok(claude_loop, fake_api):
    fake_api.script(overloaded(), stream_error("overloaded_error", "Overloaded"), edit_turn())
    loop = claude_loop()
    proposal = loop.events.wait_for(ProposalReady).proposal

    assert len(fake_api.requests) == 3
    retries = [line for line in loop.events.tool_lines() if line.startswith("Anthropic API")]
    assert retries == ["Anthropic API: 529 Overloaded; try 2 of 4 in 0.0s",
                       "Anthropic API: overloaded_error in the middle of the stream; "
                       "try 3 of 4 in 0.0s"]
    assert_proposal_is_the_edit(loop, proposal)
    loop.finish(new_proposals=1)


def test_server_errors_until_retries_run_out_pause_with_a_message_and_resume_works(
        claude_loop, fake_api):
    fake_api.script(*[server_error()] * 3)
    loop = claude_loop(max_tries=3)

    notice = loop.events.wait_for(Notice, level="error")
    assert notice.message == ("Anthropic API unavailable after 3 tries: 500 Internal Server "
                              "Error; the loop is paused — press p to resume")
    assert notice.hint == "check your network and https://status.anthropic.com"
    assert loop.events.wait_for(DraftFailed).message == notice.message
    loop.events.wait_for(StateChanged, state="paused")
    time.sleep(0.3)                                     # paused: no crash, no more requests
    assert len(fake_api.requests) == 3 and not loop.session.stopped
    assert loop.session.journal.notices()[-1]["message"] == notice.message
    assert journal_snapshot(loop.workspace)["proposals"] == loop.before.get("proposals", [])

    fake_api.script(edit_turn())
    loop.session.resume()
    proposal = loop.events.wait_for(ProposalReady).proposal
    assert proposal.id == 1 and len(fake_api.requests) == 4
    assert not loop.session.paused
    after = loop.finish(new_proposals=1)
    assert after["notices"][-1]["message"] == notice.message


def test_connection_refused_pauses_with_the_address_and_resume_works(claude_loop, fake_api):
    port = closed_port()
    loop = claude_loop(base_url=f"http://127.0.0.1:{port}", max_tries=2)

    notice = loop.events.wait_for(Notice, level="error")
    assert notice.message.startswith(f"Anthropic API unavailable after 2 tries: cannot connect "
                                     f"to http://127.0.0.1:{port}")
    assert notice.message.endswith("; the loop is paused — press p to resume")
    assert "check your network" in notice.hint
    retry = [line for line in loop.events.tool_lines() if line.startswith("Anthropic API")]
    assert retry == [f"Anthropic API: {notice.message.split(': ', 1)[1].split('; the loop')[0]}"
                     "; try 2 of 2 in 0.0s"]
    loop.events.wait_for(StateChanged, state="paused")
    assert not fake_api.requests
    assert KEY not in notice.message + notice.hint

    # The network comes back: resuming drafts again.
    fake_api.script(edit_turn())
    loop.agent.base_url = fake_api.base_url
    loop.session.resume()
    proposal = loop.events.wait_for(ProposalReady).proposal
    assert [p.id for p in loop.session.pending()] == [proposal.id]
    assert f"+{EMBED_LR[1]}" in proposal.diff and not loop.session.paused
    loop.finish(new_proposals=1)


def test_stream_broken_mid_event_is_retried(claude_loop, fake_api):
    fake_api.script(broken(edit_turn(), after=3), edit_turn())
    loop = claude_loop()
    proposal = loop.events.wait_for(ProposalReady).proposal

    assert len(fake_api.requests) == 2
    assert ("Anthropic API: the response stream broke off mid-message; try 2 of 4 in 0.0s"
            in loop.events.tool_lines())
    # The half-received turn is dropped whole: the retry is the same request, not a reply to it.
    assert fake_api.requests[1].messages == fake_api.requests[0].messages
    assert proposal.usage.input_tokens == 1000
    assert_proposal_is_the_edit(loop, proposal)
    loop.finish(new_proposals=1)


# ---- the model's own mistakes: sent back as tool errors, repaired on the next turn -----------

def test_malformed_tool_input_is_sent_back_and_repaired(claude_loop, fake_api):
    fake_api.script(
        turn(tool_uses=[(EDITOR, '{"command": "str_replace", "path": "train.py", "old_str": ')]),
        turn(tool_uses=[(EDITOR, {"command": "str_replace", "path": "train.py",
                                  "new_str": "EMBEDDING_LR = 0.3"})]),
        turn(tool_uses=[str_replace("train.py", *EMBED_LR),
                        (SUBMIT, {"description": "embedding lr 0.6 -> 0.3"})]),
        turn(tool_uses=[submit("embedding lr 0.6 -> 0.3", "smaller steps for embeddings")]),
    )
    loop = claude_loop()
    proposal = loop.events.wait_for(ProposalReady).proposal

    bad_json, = fake_api.requests[1].tool_results()
    assert bad_json["is_error"]
    assert bad_json["content"].startswith(f"The input for {EDITOR} was not valid JSON")
    missing, = fake_api.requests[2].tool_results()
    assert missing["is_error"] and missing["content"] == \
        "Missing required parameter old_str (a string) for command str_replace."
    edited, no_hypothesis = fake_api.requests[3].tool_results()
    assert not edited.get("is_error")
    assert no_hypothesis["is_error"] and no_hypothesis["content"] == \
        "submit_experiment needs a non-empty hypothesis (a string)."
    assert len(fake_api.requests) == 4
    lines = loop.events.tool_lines()
    assert f"{EDITOR}: malformed input" in lines
    assert "submit_experiment: accepted" in lines
    assert_proposal_is_the_edit(loop, proposal)
    assert proposal.hypothesis == "smaller steps for embeddings"
    loop.finish(new_proposals=1)


def test_edit_matching_nowhere_then_twice_is_repaired(claude_loop, fake_api):
    fake_api.script(
        turn(tool_uses=[str_replace("train.py", "EMBEDDING_LR = 0.7", "EMBEDDING_LR = 0.3")]),
        turn(tool_uses=[str_replace("train.py", "LR = 0.", "LR = 0.3")]),
        edit_turn(),
    )
    loop = claude_loop()
    proposal = loop.events.wait_for(ProposalReady).proposal

    nowhere, = fake_api.requests[1].tool_results()
    assert nowhere["is_error"] and nowhere["content"] == (
        "No match for old_str in train.py; view the file and copy the text exactly "
        "(whitespace and indentation included).")
    twice, = fake_api.requests[2].tool_results()
    assert twice["is_error"] and twice["content"].startswith("old_str matches ")
    assert " times in train.py (at lines " in twice["content"]
    assert twice["content"].endswith("include more surrounding lines so it matches exactly once.")
    lines = loop.events.tool_lines()
    assert any(line.endswith(": No match for old_str in train.py; view the file and copy the "
                             "text exactly (whitespace and indentation included).")
               for line in lines)
    assert_proposal_is_the_edit(loop, proposal)
    loop.finish(new_proposals=1)
