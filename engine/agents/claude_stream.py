"""One model turn of a Claude draft over the Messages API: the streamed reply read
event by event (thinking and text passed on live, tool calls parsed), and the
retries around it. The SDK's own retries are off: every retry (429, 5xx, 529,
connection errors, a stream cut off mid-message) happens here, with backoff, so
each one is visible in the reasoning panel and a cancel interrupts the wait.
"""

from __future__ import annotations

import email.utils
import json
import random
import time
from dataclasses import dataclass
from http import HTTPStatus

import anthropic

# anthropic 2.x streams over httpx2; a connection dropped mid-stream surfaces as the
# transport's own error or (2.17 and later) wrapped in the SDK's APIConnectionError.
try:
    import httpx2 as httpx
except ImportError:
    import httpx

from engine.agents.base import AgentError, DraftCancelled
from engine.agents.claude_prices import cost
from engine.agents.claude_prompt import SUBMIT_TOOL, with_cache_breakpoint
from engine.agents.editor_tool import TOOL_NAME as EDITOR_TOOL_NAME
from engine.base.records import Usage

RETRY_AFTER_MAX = 300.0           # seconds


@dataclass
class ToolCall:
    id: str
    name: str
    input: dict | None            # None when the streamed JSON did not parse
    problem: str = ""


@dataclass
class _Reply:
    content: list[dict]           # the assistant message as it must be sent back
    calls: list[ToolCall]
    stop_reason: str
    usage: Usage
    reasoning: str


class _StreamBroke(Exception):
    """The stream ended before message_stop."""


class StreamingMixin:
    """The API side of a draft run (its agent, client, system, messages, cancel, emit)."""

    def request(self) -> _Reply:
        """One model turn, retried with backoff on transient failures."""
        attempt = 0
        while True:
            attempt += 1
            self.check_cancel()
            try:
                return self.stream_once()
            except anthropic.AuthenticationError:
                raise AgentError("the API key was rejected (401): check ANTHROPIC_API_KEY",
                                 hint="create a key at https://console.anthropic.com/settings/keys "
                                      "and export it as ANTHROPIC_API_KEY") from None
            except anthropic.APIStatusError as err:
                if not _transient(err):
                    raise AgentError(
                        f"the Anthropic API refused the request ({err.status_code}): "
                        f"{self.redact(str(err.api_message or err.message))}",
                        hint="check the model name and the settings of the Claude agent") from None
                failure, wait = _status_text(err), _retry_after(err.response.headers)
            except anthropic.APIConnectionError as err:
                failure, wait = self.connection_text(err), None
            except (httpx.TransportError, _StreamBroke):
                failure, wait = "the response stream broke off mid-message", None
            if attempt == self.agent.max_tries:
                raise AgentError(
                    f"Anthropic API unavailable after {attempt} tries: {failure}; "
                    f"the loop is paused — press p to resume",
                    hint="check your network and https://status.anthropic.com", retryable=True)
            delay = wait if wait is not None else self.backoff(attempt)
            self.emit("tool", f"Anthropic API: {failure}; try {attempt + 1} of "
                              f"{self.agent.max_tries} in {delay:.1f}s")
            if self.cancel.wait(delay):
                raise DraftCancelled()

    def backoff(self, attempt: int) -> float:
        base = min(self.agent.backoff_base * 2 ** (attempt - 1), self.agent.backoff_max)
        return base + random.uniform(0, base / 2)

    def connection_text(self, err: anthropic.APIConnectionError) -> str:
        if isinstance(err, anthropic.APITimeoutError):
            return "the request timed out"
        cause = err.__cause__
        return self.redact(f"cannot connect to {self.client.base_url} ({cause or err.message})")

    def check_cancel(self) -> None:
        if self.cancel.is_set():
            raise DraftCancelled()

    def stream_once(self) -> _Reply:
        thinking, headers = self.agent.thinking_params()
        params = {"model": self.agent.model, "max_tokens": self.agent.max_tokens,
                  "system": self.system, "tools": [
                      {"type": "text_editor_20250728", "name": EDITOR_TOOL_NAME}, SUBMIT_TOOL],
                  "messages": with_cache_breakpoint(self.messages)}
        if thinking is not None:
            params["thinking"] = thinking
        content: list[dict] = []
        json_parts: dict[int, list[str]] = {}
        stop_reason, usage, finished = "", Usage(), False
        stream = self.client.messages.create(stream=True, extra_headers=headers, **params)
        with stream:
            try:
                for event in stream:
                    if self.cancel.is_set():
                        raise DraftCancelled()
                    kind = event.type
                    if kind == "message_start":
                        usage = _usage(event.message.usage, Usage())
                    elif kind == "content_block_start":
                        block = event.content_block
                        content.append(_block_param(block))
                        if block.type == "tool_use":
                            json_parts[event.index] = []
                    elif kind == "content_block_delta":
                        block, delta = content[event.index], event.delta
                        if delta.type == "thinking_delta":
                            block["thinking"] += delta.thinking
                            self.emit("thinking", delta.thinking)
                        elif delta.type == "signature_delta":
                            block["signature"] = delta.signature
                        elif delta.type == "text_delta":
                            block["text"] += delta.text
                            self.emit("text", delta.text)
                        elif delta.type == "input_json_delta":
                            json_parts[event.index].append(delta.partial_json)
                    elif kind == "message_delta":
                        stop_reason = event.delta.stop_reason or stop_reason
                        usage = _usage(event.usage, usage)
                    elif kind == "message_stop":
                        finished = True
            except (anthropic.APIConnectionError, httpx.TransportError) as error:
                # the response had begun: whatever the SDK calls it, it broke off
                raise _StreamBroke() from error
        if not finished:
            raise _StreamBroke()
        return self._reply(content, json_parts, stop_reason, usage)

    def _reply(self, content: list[dict], json_parts: dict[int, list[str]], stop_reason: str,
               usage: Usage) -> _Reply:
        """A whole streamed message as a reply: its tool calls parsed, its cost priced, what
        it said, and its content as it can be sent back."""
        calls = []
        for index, parts in json_parts.items():
            block = content[index]
            call = _parse_tool_input(block["id"], block["name"], "".join(parts))
            block["input"] = call.input if call.input is not None else {}
            calls.append(call)
        usage.cost_usd = cost(usage, self.agent.price())
        said = [b.get("thinking") or b.get("text") for b in content
                if b["type"] in ("thinking", "text")]
        reasoning = "\n\n".join(text for text in said if text)
        # Sent back, the API refuses empty text blocks and thinking without its signature
        # (a reply cut off by max_tokens can end in one).
        content = [b for b in content if not (b["type"] == "text" and not b["text"])
                   and not (b["type"] == "thinking" and not b["signature"])]
        return _Reply(content, calls, stop_reason, usage, reasoning)


def _block_param(block) -> dict:
    """A streamed content block as it must be sent back in the next request."""
    if block.type == "thinking":
        return {"type": "thinking", "thinking": "", "signature": ""}
    if block.type == "redacted_thinking":
        return {"type": "redacted_thinking", "data": block.data}
    if block.type == "tool_use":
        return {"type": "tool_use", "id": block.id, "name": block.name, "input": {}}
    return {"type": "text", "text": getattr(block, "text", "")}


def _parse_tool_input(tool_id: str, name: str, raw: str) -> ToolCall:
    try:
        value = json.loads(raw) if raw.strip() else {}
    except ValueError as err:
        return ToolCall(tool_id, name, None,
                        f"The input for {name} was not valid JSON ({err}); send the call again "
                        f"with a well-formed JSON object.")
    if not isinstance(value, dict):
        return ToolCall(tool_id, name, None, f"The input for {name} must be a JSON object.")
    return ToolCall(tool_id, name, value)


def _usage(reported, so_far: Usage) -> Usage:
    """Fold a message_start or message_delta usage report in; its counts are totals."""
    def pick(name: str, current: int) -> int:
        value = getattr(reported, name, None)
        return current if value is None else value
    return Usage(input_tokens=pick("input_tokens", so_far.input_tokens),
                 output_tokens=pick("output_tokens", so_far.output_tokens),
                 cache_read_tokens=pick("cache_read_input_tokens", so_far.cache_read_tokens),
                 cache_write_tokens=pick("cache_creation_input_tokens", so_far.cache_write_tokens))


def _transient(err: anthropic.APIStatusError) -> bool:
    if err.status_code in (408, 409, 429) or err.status_code >= 500:
        return True
    # An error event inside a 200 stream carries its kind in the body only.
    return err.type in ("overloaded_error", "api_error", "rate_limit_error")


def _status_text(err: anthropic.APIStatusError) -> str:
    if err.status_code == 200:
        return f"{err.type or 'error'} in the middle of the stream"
    if err.status_code == 529:
        return "529 Overloaded"
    try:
        return f"{err.status_code} {HTTPStatus(err.status_code).phrase}"
    except ValueError:
        return f"{err.status_code} {err.type or 'error'}"


def _retry_after(headers) -> float | None:
    """Seconds the server asked us to wait, from retry-after-ms or retry-after."""
    if ms := headers.get("retry-after-ms"):
        try:
            return min(max(float(ms) / 1000, 0.0), RETRY_AFTER_MAX)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    # Honoured, but a bogus huge value must not stall the loop for hours.
    return min(max(seconds, 0.0), RETRY_AFTER_MAX)
