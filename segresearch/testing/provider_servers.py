"""Loopback servers that speak hosted chat APIs' wire formats, for tests of real clients.

The point of these fakes is that the real client libraries (``langchain-openai`` over the
``openai`` SDK, ``langchain-anthropic`` over the ``anthropic`` SDK) run unchanged against
them: what a test checks is the JSON those clients really send (how a tool's images are
placed, how tool calls are echoed back) and how they read the replies back into
``AIMessage.tool_calls``, streamed and not. Each server plays scripted replies in order
and records every request body it got; it never checks a key, and records no headers.

Formats, as the providers document them:

* OpenAI chat completions (``POST /v1/chat/completions``): a ``chat.completion`` object
  whose message carries ``tool_calls`` (``function.arguments`` a JSON string), or with
  ``"stream": true`` server-sent ``chat.completion.chunk`` events whose tool-call deltas
  carry ``index``, then ``id``/``name`` once and the arguments in pieces, ending in
  ``data: [DONE]``. vLLM and SGLang serve the same schema. ``GET /v1/models`` answers too
  (the CLI's early probe).
* Anthropic Messages (``POST /v1/messages``): a ``message`` whose ``content`` holds
  ``text`` and ``tool_use`` blocks (``input`` an object), ``stop_reason`` ``tool_use`` or
  ``end_turn``; streamed as ``message_start``, ``content_block_start`` /
  ``content_block_delta`` (``text_delta``, ``input_json_delta`` with ``partial_json``) /
  ``content_block_stop``, ``message_delta`` and ``message_stop`` events.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["AnthropicServer", "OpenAIServer", "Reply", "ToolCall"]


@dataclass(frozen=True)
class ToolCall:
    """One call a scripted reply makes. ``arguments``: an object (sent as JSON) or a raw
    string, sent as it is (a malformed call, as a model may write one)."""

    name: str
    arguments: dict[str, Any] | str
    id: str = ""

    def arguments_json(self) -> str:
        return self.arguments if isinstance(self.arguments, str) else json.dumps(self.arguments)


@dataclass(frozen=True)
class Reply:
    """One scripted assistant turn: its text and the tool calls it makes."""

    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()


def _pieces(text: str, size: int = 7) -> list[str]:
    """``text`` cut into small pieces, as a streaming server sends arguments."""
    return [text[i:i + size] for i in range(0, len(text), size)] or [""]


@dataclass
class _Script:
    replies: list[Reply]
    requests: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next(self, body: dict[str, Any]) -> tuple[Reply, int]:
        with self.lock:
            self.requests.append(body)
            n = len(self.requests)
            if not self.replies:
                return Reply(text="(no scripted reply left)"), n
            return self.replies.pop(0), n


class _LoopbackServer:
    """A threaded HTTP server on a free loopback port; a context manager that stops it."""

    def __init__(self, replies: list[Reply]) -> None:
        self.script = _Script(list(replies))
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet test output
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                server.handle_get(self)

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except ValueError:
                    send_json(self, 400, {"error": {"message": "body is not JSON"}})
                    return
                server.handle_post(self, body)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def requests(self) -> list[dict[str, Any]]:
        """The JSON bodies of the requests answered so far, in order."""
        with self.script.lock:
            return list(self.script.requests)

    def add(self, *replies: Reply) -> None:
        with self.script.lock:
            self.script.replies.extend(replies)

    def handle_get(self, h: BaseHTTPRequestHandler) -> None:
        send_json(h, 404, {"error": {"message": f"no route {h.path}"}})

    def handle_post(self, h: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> _LoopbackServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def send_json(h: BaseHTTPRequestHandler, status: int, payload: dict[str, Any]) -> None:
    """One JSON reply with its length (every loopback fake here answers this way)."""
    data = json.dumps(payload).encode()
    h.send_response(status)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", str(len(data)))
    h.end_headers()
    h.wfile.write(data)


def _start_sse(h: BaseHTTPRequestHandler) -> None:
    h.send_response(200)
    h.send_header("Content-Type", "text/event-stream")
    h.send_header("Cache-Control", "no-cache")
    h.send_header("Connection", "close")
    h.end_headers()
    h.close_connection = True


def _sse(h: BaseHTTPRequestHandler, data: dict[str, Any] | str, event: str | None = None) -> None:
    text = data if isinstance(data, str) else json.dumps(data)
    h.wfile.write(((f"event: {event}\n" if event else "") + f"data: {text}\n\n").encode())
    h.wfile.flush()


class OpenAIServer(_LoopbackServer):
    """OpenAI's chat-completions API (as vLLM and SGLang serve it) on loopback; clients use
    :attr:`base_url` (``http://127.0.0.1:PORT/v1``)."""

    model = "fake-openai"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def handle_get(self, h: BaseHTTPRequestHandler) -> None:
        if h.path.rstrip("/") == "/v1/models":
            send_json(h, 200, {"object": "list", "data": [
                {"id": self.model, "object": "model", "owned_by": "loopback"}]})
            return
        super().handle_get(h)

    def handle_post(self, h: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        if h.path.rstrip("/") != "/v1/chat/completions":
            send_json(h, 404, {"error": {"message": f"no route {h.path}"}})
            return
        reply, n = self.script.next(body)
        calls = [(c.id or f"call_{n}_{i}", c) for i, c in enumerate(reply.tool_calls)]
        finish = "tool_calls" if calls else "stop"
        model = str(body.get("model") or self.model)
        base = {"id": f"chatcmpl-{n}", "created": 1700000000 + n, "model": model}
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": reply.text or None}
            if calls:
                message["tool_calls"] = [
                    {"id": cid, "type": "function",
                     "function": {"name": c.name, "arguments": c.arguments_json()}}
                    for cid, c in calls]
            send_json(h, 200, {**base, "object": "chat.completion", "choices": [
                {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}})
            return
        _start_sse(h)

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> None:
            _sse(h, {**base, "object": "chat.completion.chunk", "choices": [
                {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]})

        chunk({"role": "assistant", "content": ""})
        for piece in _pieces(reply.text) if reply.text else []:
            chunk({"content": piece})
        for i, (cid, c) in enumerate(calls):
            chunk({"tool_calls": [{"index": i, "id": cid, "type": "function",
                                   "function": {"name": c.name, "arguments": ""}}]})
            for piece in _pieces(c.arguments_json()):
                chunk({"tool_calls": [{"index": i, "function": {"arguments": piece}}]})
        chunk({}, finish)
        _sse(h, "[DONE]")


class AnthropicServer(_LoopbackServer):
    """Anthropic's Messages API on loopback; ``ChatAnthropic(base_url=server.base_url)``
    (or ``ANTHROPIC_BASE_URL``) reaches it, the client appending ``/v1/messages``."""

    model = "claude-fake"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def handle_post(self, h: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        if h.path.split("?")[0].rstrip("/") != "/v1/messages":
            send_json(h, 404, {"type": "error", "error": {
                "type": "not_found_error", "message": f"no route {h.path}"}})
            return
        reply, n = self.script.next(body)
        blocks: list[dict[str, Any]] = [{"type": "text", "text": reply.text}] if reply.text else []
        for i, c in enumerate(reply.tool_calls):
            args = c.arguments if isinstance(c.arguments, dict) else json.loads(c.arguments)
            blocks.append({"type": "tool_use", "id": c.id or f"toolu_{n}_{i}", "name": c.name,
                           "input": args})
        stop = "tool_use" if reply.tool_calls else "end_turn"
        model = str(body.get("model") or self.model)
        usage = {"input_tokens": 10, "output_tokens": 5}
        message = {"id": f"msg_{n}", "type": "message", "role": "assistant", "model": model,
                   "stop_sequence": None}
        if not body.get("stream"):
            send_json(h, 200, {**message, "content": blocks, "stop_reason": stop, "usage": usage})
            return
        _start_sse(h)
        _sse(h, {"type": "message_start", "message": {
            **message, "content": [], "stop_reason": None,
            "usage": {"input_tokens": 10, "output_tokens": 1}}}, "message_start")
        for i, b in enumerate(blocks):
            if b["type"] == "text":
                _sse(h, {"type": "content_block_start", "index": i,
                         "content_block": {"type": "text", "text": ""}}, "content_block_start")
                for piece in _pieces(b["text"]):
                    _sse(h, {"type": "content_block_delta", "index": i,
                             "delta": {"type": "text_delta", "text": piece}}, "content_block_delta")
            else:
                _sse(h, {"type": "content_block_start", "index": i, "content_block": {
                    "type": "tool_use", "id": b["id"], "name": b["name"], "input": {}}},
                    "content_block_start")
                for piece in _pieces(json.dumps(b["input"])):
                    _sse(h, {"type": "content_block_delta", "index": i, "delta": {
                        "type": "input_json_delta", "partial_json": piece}}, "content_block_delta")
            _sse(h, {"type": "content_block_stop", "index": i}, "content_block_stop")
        _sse(h, {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                 "usage": {"output_tokens": 5}}, "message_delta")
        _sse(h, {"type": "message_stop"}, "message_stop")
