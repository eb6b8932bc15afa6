"""Claude drafts experiments through the Anthropic Messages API.

One draft is a tool loop: the model thinks (streamed live), edits a scratch copy of the
target files with Anthropic's text editor tool, and ends with `submit_experiment`. The
engine's `validate` then checks the new files; a refusal goes back to the model as the
submit tool's error so it can repair the edit. The diff is computed by the engine from
the scratch copy, never taken from model text.

What the model is told is built in engine/agents/claude_prompt.py; each model turn is
streamed, and retried with backoff, in engine/agents/claude_stream.py.
"""

from __future__ import annotations

import os
import threading

import anthropic

from engine.agents.base import AgentError, DraftContext, Emit
from engine.agents.claude_prices import PRICES, Price
from engine.agents.claude_prompt import SUBMIT_TOOL_NAME, dynamic_context, static_context
from engine.agents.claude_stream import StreamingMixin, ToolCall, httpx
from engine.agents.editor_tool import TOOL_NAME as EDITOR_TOOL_NAME
from engine.agents.editor_tool import ScratchEditor, describe
from engine.base.api_key import redact as redact_key
from engine.base.api_key import value as configured_key
from engine.base.records import Draft, Usage

DEFAULT_MODEL = "claude-sonnet-4-6"

# Models that only take an explicit thinking budget; newer ones think adaptively (and
# Opus 4.7 refuses a budget), so adaptive is the default for any model not listed here.
BUDGET_THINKING_MODELS = ("claude-sonnet-4-5", "claude-opus-4-5", "claude-haiku-4-5",
                          "claude-opus-4-1", "claude-sonnet-4-2", "claude-opus-4-2",
                          "claude-3-7-sonnet")
# Lets a budget-thinking Claude 4 model think between tool calls, not only at the start.
INTERLEAVED_THINKING_BETA = "interleaved-thinking-2025-05-14"


class ClaudeAgent:
    name = "claude"

    def __init__(self, *, model: str | None = None, api_key: str | None = None,
                 base_url: str | None = None, max_tokens: int = 16000, thinking: bool = True,
                 thinking_budget: int = 8000, adaptive_thinking: bool | None = None,
                 max_turns: int = 20, max_failures: int = 3, max_tries: int = 4,
                 backoff_base: float = 1.0, backoff_max: float = 30.0, timeout: float = 600.0,
                 prices: dict[str, Price] | None = None, history_limit: int = 30):
        """model defaults to DEFAULT_MODEL; api_key and base_url to ANTHROPIC_API_KEY and
        ANTHROPIC_BASE_URL (read when drafting, so a key exported later is picked up).

        thinking: extended thinking on or off. adaptive_thinking: let the model size its
        own thinking (True), or give it thinking_budget tokens, below max_tokens (False);
        None picks by model: a budget for the Claude 4.5 generation and older, else adaptive.
        max_failures: failed edits / submissions in a row before the draft is abandoned.
        max_tries: API attempts per request (first try included) before giving up.
        """
        model = model or DEFAULT_MODEL
        if adaptive_thinking is None:
            adaptive_thinking = not model.startswith(BUDGET_THINKING_MODELS)
        if thinking and not adaptive_thinking and not 1024 <= thinking_budget < max_tokens:
            raise ValueError("thinking_budget must be at least 1024 and below max_tokens")
        self.model = model
        self.api_key = api_key
        self.base_url = base_url
        self.max_tokens = max_tokens
        self.thinking = thinking
        self.thinking_budget = thinking_budget
        self.adaptive_thinking = adaptive_thinking
        self.max_turns = max_turns
        self.max_failures = max_failures
        self.max_tries = max_tries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.timeout = timeout
        self.prices = PRICES if prices is None else prices
        self.history_limit = history_limit

    def draft(self, ctx: DraftContext, emit: Emit, cancel: threading.Event) -> Draft:
        key = self.api_key or configured_key()
        if not key:
            raise AgentError(
                "ANTHROPIC_API_KEY is not set, so the Claude agent cannot draft experiments",
                hint="export ANTHROPIC_API_KEY=<your key> and restart pairlab, "
                     "or run with --agent tuner (the offline tuner needs no key)",
            )
        base_url = self.base_url or os.environ.get("ANTHROPIC_BASE_URL") or None
        client = anthropic.Anthropic(api_key=key, base_url=base_url, max_retries=0,
                                     timeout=httpx.Timeout(self.timeout, connect=10.0))
        try:
            return _DraftRun(self, client, key, ctx, emit, cancel).run()
        finally:
            client.close()

    def price(self) -> Price | None:
        matches = [p for p in self.prices if self.model.startswith(p)]
        return self.prices[max(matches, key=len)] if matches else None

    def thinking_params(self) -> tuple[dict | None, dict]:
        """The thinking parameter and any extra headers it needs."""
        if not self.thinking:
            return None, {}
        if self.adaptive_thinking:
            # Some models omit thinking text by default; the reasoning panel wants it.
            return {"type": "adaptive", "display": "summarized"}, {}
        return ({"type": "enabled", "budget_tokens": self.thinking_budget},
                {"anthropic-beta": INTERLEAVED_THINKING_BETA})


class _DraftRun(StreamingMixin):
    """The state of one draft: conversation, scratch copy, usage, failure streak."""

    def __init__(self, agent: ClaudeAgent, client: anthropic.Anthropic, key: str,
                 ctx: DraftContext, emit: Emit, cancel: threading.Event):
        self.agent, self.client, self.key = agent, client, key
        self.ctx, self.cancel = ctx, cancel
        self._emit = emit
        self.editor = ScratchEditor(ctx.files, ctx.targets)
        self.usage = Usage()
        self.reasoning: list[str] = []
        self.failures = 0
        self.system = [
            {"type": "text", "text": static_context(ctx),
             "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": dynamic_context(ctx, agent.history_limit)},
        ]
        ask = ("Propose the next experiment: edit the target file(s) with "
               "str_replace_based_edit_tool, then call submit_experiment.")
        if ctx.feedback:
            ask += f"\n\nNotes from pairlab since your last draft:\n{ctx.feedback}"
        self.messages: list[dict] = [{"role": "user", "content": [{"type": "text", "text": ask}]}]

    def emit(self, kind: str, text: str) -> None:
        self._emit(kind, self.redact(text))

    def redact(self, text: str) -> str:
        return redact_key(text, self.key)

    def run(self) -> Draft:
        for _ in range(self.agent.max_turns):
            reply = self.request()
            self.usage.add(reply.usage)
            if reply.reasoning:
                self.reasoning.append(reply.reasoning)
            self.messages.append({"role": "assistant", "content": reply.content
                                  or [{"type": "text", "text": "(no content)"}]})
            if reply.stop_reason == "refusal":
                raise AgentError("Claude declined to propose an experiment (refusal)",
                                 hint="check program.md and the recent vetoes for what it objected to")
            if not reply.calls:
                why = (f"Your reply hit the max_tokens limit ({self.agent.max_tokens})"
                       if reply.stop_reason == "max_tokens" else "You ended your turn")
                answer = [{"type": "text", "text": self.fail(
                    f"{why} without calling submit_experiment. Make your edit with "
                    f"str_replace_based_edit_tool, then call submit_experiment.")}]
            else:
                answer = []
                for call in reply.calls:
                    draft = self.handle(call, answer)
                    if draft is not None:
                        return draft
            self.messages.append({"role": "user", "content": answer})
        raise AgentError(f"Claude did not submit an experiment within {self.agent.max_turns} turns",
                         hint="the draft was dropped; press p to resume and the agent drafts again", retryable=True)

    # ---- tools --------------------------------------------------------------------------

    def handle(self, call: ToolCall, answer: list[dict]) -> Draft | None:
        """Run one tool call, appending its tool_result to `answer`; a Draft when done."""
        if call.input is None:
            self.emit("tool", f"{call.name}: malformed input")
            return self.result(answer, call, self.fail(call.problem), error=True)
        if call.name == EDITOR_TOOL_NAME:
            outcome = self.editor.run(call.input)
            status = outcome.text.splitlines()[0] if outcome.is_error else "ok"
            self.emit("tool", f"{describe(call.input)}: {status}")
            if outcome.is_error:
                return self.result(answer, call, self.fail(outcome.text), error=True)
            if outcome.changed:
                self.failures = 0
            return self.result(answer, call, outcome.text)
        if call.name == SUBMIT_TOOL_NAME:
            return self.submit(call, answer)
        self.emit("tool", f"{call.name}: unknown tool")
        return self.result(answer, call, self.fail(
            f"There is no tool named {call.name}; use {EDITOR_TOOL_NAME} and {SUBMIT_TOOL_NAME}."),
            error=True)

    def submit(self, call: ToolCall, answer: list[dict]) -> Draft | None:
        description = call.input.get("description")
        hypothesis = call.input.get("hypothesis")
        problem = None
        if not isinstance(description, str) or not description.strip():
            problem = "submit_experiment needs a non-empty description (a string)."
        elif not isinstance(hypothesis, str) or not hypothesis.strip():
            problem = "submit_experiment needs a non-empty hypothesis (a string)."
        files = self.editor.changed()
        if problem is None and not files:
            problem = ("You have not changed any target file; make your edit with "
                       f"{EDITOR_TOOL_NAME} before calling submit_experiment.")
        if problem is None:
            refusal = self.ctx.validate(files)
            if refusal:
                problem = (f"The engine refused this change: {refusal}\nFix the files with "
                           f"{EDITOR_TOOL_NAME} and call submit_experiment again.")
        self.emit("tool", f"submit_experiment: {problem.splitlines()[0] if problem else 'accepted'}")
        if problem:
            return self.result(answer, call, self.fail(problem), error=True)
        # The model's words go into commit messages, events and the screen: never the key.
        return Draft(description=self.redact(description.strip()),
                     hypothesis=self.redact(hypothesis.strip()), files=files,
                     reasoning=self.redact("\n\n".join(self.reasoning)), usage=self.usage)

    def fail(self, message: str) -> str:
        """Count a failed edit or submission; abandon the draft after too many in a row."""
        self.failures += 1
        if self.failures >= self.agent.max_failures:
            raise AgentError(
                f"Claude made {self.failures} failed edits or submissions in a row; "
                f"the last: {self.redact(message.splitlines()[0])}",
                hint="the draft was dropped; press p to resume and the agent drafts again", retryable=True)
        return message

    @staticmethod
    def result(answer: list[dict], call: ToolCall, text: str, error: bool = False) -> None:
        block = {"type": "tool_result", "tool_use_id": call.id, "content": text}
        if error:
            block["is_error"] = True
        answer.append(block)
