"""A local fake of Anthropic's Messages API, for driving the real anthropic SDK in tests.

It listens on 127.0.0.1 on a free port and answers POST /v1/messages from a queue of
scripted replies: streamed turns in the real SSE protocol (thinking, text and tool_use
blocks, deltas in pieces, usage), plain JSON messages, HTTP errors with Anthropic's error
bodies, an error event in the middle of a stream, and a stream cut off mid-event.

    def test_something(fake_api):
        fake_api.script(
            turn(thinking="Warmup is short.", text="Raising it.",
                 tool_uses=[str_replace("train.py", "WARMUP = 10", "WARMUP = 50")]),
            rate_limited(retry_after=0.2),
            turn(tool_uses=[submit("longer warmup", "fewer early spikes")]),
        )
        ... point the client at fake_api.base_url ...
        assert "WARMUP" in fake_api.requests[1].text

Like the real API it refuses (400) a conversation whose tool_use / tool_result blocks do
not pair up, so an agent's bookkeeping mistakes show up as failures here.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

EDITOR = "str_replace_based_edit_tool"
SUBMIT = "submit_experiment"


# ---- scripted replies ------------------------------------------------------------------

@dataclass
class Turn:
    """One assistant message, streamed as SSE or returned as JSON as the request asks."""

    content: list[dict]
    stop_reason: str
    usage: dict
    pace: float = 0.0                 # seconds between streamed events (cancel tests)


@dataclass
class ApiError:
    """An HTTP error with Anthropic's error body: {"type": "error", "error": {...}}."""

    status: int
    error_type: str
    message: str
    headers: dict = field(default_factory=dict)


@dataclass
class Broken:
    """Stream `turn` but cut the connection halfway through event number `after`
    (0 is message_start). A non-streaming request gets the whole message."""

    turn: Turn
    after: int


@dataclass
class StreamError:
    """Start a 200 stream, then send an SSE `error` event (how overload shows mid-stream)."""

    error_type: str
    message: str


_tool_ids = iter(range(1, 1 << 30))


def turn(thinking: str | None = None, text: str | None = None,
         tool_uses: list[tuple[str, dict | str]] = (), *, stop_reason: str | None = None,
         usage: dict | None = None, pace: float = 0.0) -> Turn:
    """An assistant message: a thinking block, a text block, then tool_use blocks.

    A tool input given as a str is sent verbatim as the input JSON, so a test can send
    malformed JSON. `usage` overrides input_tokens, output_tokens,
    cache_creation_input_tokens and cache_read_input_tokens.
    """
    content: list[dict] = []
    if thinking is not None:
        content.append({"type": "thinking", "thinking": thinking,
                        "signature": f"sig-{len(thinking)}-{next(_tool_ids)}"})
    if text is not None:
        content.append({"type": "text", "text": text})
    for name, tool_input in tool_uses:
        content.append({"type": "tool_use", "id": f"toolu_fake{next(_tool_ids):06d}",
                        "name": name, "input": tool_input})
    counts = {"input_tokens": 1000, "output_tokens": 200,
              "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
    counts.update(usage or {})
    return Turn(content, stop_reason or ("tool_use" if tool_uses else "end_turn"), counts, pace)


def view(path: str, view_range: list[int] | None = None) -> tuple[str, dict]:
    args: dict = {"command": "view", "path": path}
    if view_range is not None:
        args["view_range"] = view_range
    return EDITOR, args


def str_replace(path: str, old_str: str, new_str: str) -> tuple[str, dict]:
    return EDITOR, {"command": "str_replace", "path": path, "old_str": old_str, "new_str": new_str}


def insert(path: str, insert_line: int, insert_text: str) -> tuple[str, dict]:
    return EDITOR, {"command": "insert", "path": path, "insert_line": insert_line,
                    "insert_text": insert_text}


def submit(description: str, hypothesis: str) -> tuple[str, dict]:
    return SUBMIT, {"description": description, "hypothesis": hypothesis}


def api_error(status: int, error_type: str, message: str, **headers: str) -> ApiError:
    return ApiError(status, error_type, message, {k.replace("_", "-"): v for k, v in headers.items()})


def rate_limited(retry_after: float | None = None) -> ApiError:
    headers = {} if retry_after is None else {"retry-after": str(retry_after)}
    return ApiError(429, "rate_limit_error", "Number of request tokens has exceeded your rate limit.",
                    headers)


def overloaded() -> ApiError:
    return ApiError(529, "overloaded_error", "Overloaded")


def server_error() -> ApiError:
    return ApiError(500, "api_error", "Internal server error")


def unauthorized() -> ApiError:
    return ApiError(401, "authentication_error", "invalid x-api-key")


def broken(of: Turn, after: int = 3) -> Broken:
    return Broken(of, after)


def stream_error(error_type: str = "overloaded_error", message: str = "Overloaded") -> StreamError:
    return StreamError(error_type, message)


# ---- what the client sent ----------------------------------------------------------------

@dataclass
class Recorded:
    path: str
    headers: dict[str, str]           # lower-cased names
    text: str                         # the raw body, for grepping
    at: float                         # time.monotonic() on arrival

    @property
    def api_key(self) -> str | None:
        """The key the client sent, as x-api-key or (newer SDKs) a bearer token."""
        bearer = self.headers.get("authorization", "")
        return self.headers.get("x-api-key") or bearer.removeprefix("Bearer ") or None

    @property
    def body(self) -> dict:
        return json.loads(self.text)

    @property
    def system_text(self) -> str:
        system = self.body.get("system", "")
        return system if isinstance(system, str) else "\n".join(b["text"] for b in system)

    @property
    def messages(self) -> list[dict]:
        return self.body["messages"]

    def tool_results(self) -> list[dict]:
        """The tool_result blocks of the last user message."""
        content = self.messages[-1]["content"]
        return [b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"]


# ---- the server ----------------------------------------------------------------------------

class FakeAnthropic:
    def __init__(self):
        self.requests: list[Recorded] = []
        self._queue: deque = deque()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.fake = self
        # A short poll interval keeps shutdown (one per test) quick.
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,),
                                        daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def script(self, *replies) -> None:
        """Queue replies; each request takes the next one."""
        with self._lock:
            self._queue.extend(replies)

    @property
    def pending(self) -> int:
        return len(self._queue)

    def start(self) -> "FakeAnthropic":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "FakeAnthropic":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _next(self, recorded: Recorded):
        with self._lock:
            self.requests.append(recorded)
            return self._queue.popleft() if self._queue else None


@pytest.fixture
def fake_api():
    with FakeAnthropic() as server:
        yield server


def closed_port() -> int:
    """A local port with nothing listening on it (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"     # keep-alive and chunked streams, as the real API

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", 0))
        text = self.rfile.read(length).decode()
        headers = {k.lower(): v for k, v in self.headers.items()}
        reply = self.server.fake._next(Recorded(self.path, headers, text, time.monotonic()))
        try:
            body = json.loads(text)
        except ValueError:
            return self._error(ApiError(400, "invalid_request_error", "body is not JSON"))
        if self.path.split("?")[0] != "/v1/messages":
            return self._error(ApiError(404, "not_found_error", f"no route {self.path}"))
        problem = _conversation_problem(body)
        if problem:
            return self._error(ApiError(400, "invalid_request_error", problem))
        if reply is None:
            return self._error(ApiError(400, "invalid_request_error",
                                        "fake API: no scripted reply left for this request"))
        if isinstance(reply, ApiError):
            return self._error(reply)
        if isinstance(reply, StreamError):
            return self._stream([_message_start(body, {"input_tokens": 10, "output_tokens": 1}),
                                 ("error", {"type": "error", "error": {
                                     "type": reply.error_type, "message": reply.message}})])
        of = reply.turn if isinstance(reply, Broken) else reply
        if not body.get("stream"):
            return self._json(200, _message(body, of))
        cut = reply.after if isinstance(reply, Broken) else None
        self._stream(_events(body, of), cut_at=cut, pace=of.pace)

    def _json(self, status: int, payload: dict, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("request-id", "req_fake")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, err: ApiError) -> None:
        self._json(err.status, {"type": "error",
                                "error": {"type": err.error_type, "message": err.message}},
                   err.headers)

    def _stream(self, events: list[tuple[str, dict]], cut_at: int | None = None,
                pace: float = 0.0) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("transfer-encoding", "chunked")
        self.send_header("request-id", "req_fake")
        self.end_headers()
        for n, (name, data) in enumerate(events):
            chunk = f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
            if n == cut_at:
                self._chunk(chunk[: len(chunk) // 2])
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self._chunk(chunk)
            if pace:
                time.sleep(pace)
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


# ---- the wire format ----------------------------------------------------------------------

def _message(request: dict, of: Turn) -> dict:
    return {"id": "msg_fake", "type": "message", "role": "assistant",
            "model": request.get("model", "claude-fake"), "content": of.content,
            "stop_reason": of.stop_reason, "stop_sequence": None, "usage": of.usage}


def _message_start(request: dict, usage: dict) -> tuple[str, dict]:
    message = _message(request, Turn([], "", usage))
    message.update(content=[], stop_reason=None, usage={**usage, "output_tokens": 1})
    return "message_start", {"type": "message_start", "message": message}


def _pieces(text: str, size: int) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)] or [""]


def _events(request: dict, of: Turn) -> list[tuple[str, dict]]:
    """The SSE events of one streamed message, deltas split the way the API splits them."""
    events = [_message_start(request, of.usage), ("ping", {"type": "ping"})]
    for index, block in enumerate(of.content):
        kind = block["type"]
        if kind == "thinking":
            start = {"type": "thinking", "thinking": "", "signature": ""}
            deltas = [{"type": "thinking_delta", "thinking": p} for p in _pieces(block["thinking"], 12)]
            deltas.append({"type": "signature_delta", "signature": block["signature"]})
        elif kind == "text":
            start = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": p} for p in _pieces(block["text"], 12)]
        else:
            start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            raw = block["input"] if isinstance(block["input"], str) else json.dumps(block["input"])
            deltas = [{"type": "input_json_delta", "partial_json": p} for p in _pieces(raw, 16)]
        events.append(("content_block_start",
                       {"type": "content_block_start", "index": index, "content_block": start}))
        events += [("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d})
                   for d in deltas]
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    events.append(("message_delta", {"type": "message_delta",
                                     "delta": {"stop_reason": of.stop_reason, "stop_sequence": None},
                                     "usage": {"output_tokens": of.usage["output_tokens"]}}))
    events.append(("message_stop", {"type": "message_stop"}))
    return events


def _conversation_problem(body: dict) -> str | None:
    """What the real API would refuse in this request's messages, in its words, or None."""
    for key in ("model", "max_tokens", "messages"):
        if key not in body:
            return f"{key}: Field required"
    messages = body["messages"]
    for i, message in enumerate(messages):
        if message.get("role") != ("user" if i % 2 == 0 else "assistant"):
            return f"messages.{i}: roles must alternate, starting with user"
        content = message.get("content")
        blocks = content if isinstance(content, list) else [{"type": "text", "text": content}]
        for j, block in enumerate(blocks):
            if block.get("type") == "text" and not block.get("text"):
                return f"messages.{i}.content.{j}: text content blocks must be non-empty"
            if block.get("type") == "thinking" and not block.get("signature"):
                return f"messages.{i}.content.{j}.signature: Field required"
        if message["role"] != "assistant":
            continue
        uses = {b["id"] for b in blocks if b.get("type") == "tool_use"}
        if i + 1 < len(messages):
            answer = messages[i + 1].get("content")
            answered = {b.get("tool_use_id") for b in answer if isinstance(b, dict)
                        and b.get("type") == "tool_result"} if isinstance(answer, list) else set()
            if uses - answered:
                return (f"messages.{i + 1}: `tool_use` ids were found without `tool_result` "
                        f"blocks immediately after: {', '.join(sorted(uses - answered))}")
            if answered - uses:
                return (f"messages.{i + 1}: unexpected `tool_use_id` found in `tool_result` "
                        f"blocks: {', '.join(sorted(answered - uses))}")
    return None
