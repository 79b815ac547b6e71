"""An OpenAI-compatible chat server that plays a script and counts every model turn it serves.

Crash tests and the serving benchmark need to know exactly which model turns a server sent,
and how many times: after a ``kill -9`` and a restart, a finished turn sent again is work
redone. The server answers turn ``k`` of a run (``k`` = the assistant messages already in
the request) with ``script[k]``, after ``delay`` seconds, and counts requests per
``(run tag, turn)``; the run tag is the first ``[tag:…]`` found in the request (tests put
it in the query), so concurrent runs are told apart without any state on the client side.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from segresearch.testing.provider_servers import send_json

_TAG = re.compile(r"\[tag:([A-Za-z0-9_.-]+)\]")


def keyframe_script(frame_ids: Sequence[int], box: Sequence[int] = (100, 120, 400, 500),
                    point: Sequence[int] = (250, 300)) -> list[str]:
    """One ``<keyframe>`` turn per frame id, then an answer: ``len(frame_ids) + 1`` turns that
    need no search backend."""
    turns = [f"<thinking>look at frame {f}</thinking><keyframe> {f} </keyframe>" for f in frame_ids]
    answer = json.dumps({"bbox_2d": list(box), "point_2d": list(point)})
    return [*turns, f"<thinking>found it</thinking><answer>{answer}</answer>"]


class CountingModelServer:
    """The server, in a thread of the calling process (so it outlives the servers under test)."""

    def __init__(self, script: Sequence[str], delay: float = 0.0) -> None:
        self.script = list(script)
        self.delay = delay
        self.counts: Counter[tuple[str, int]] = Counter()
        self.started: Counter[tuple[str, int]] = Counter()
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def spec(self, model: str = "counting") -> str:
        """The ``Context.model`` spec that points at this server."""
        return f"openai:{model}@{self.base_url}"

    def turns_served(self, tag: str) -> dict[int, int]:
        """Turn -> number of completed answers for the run tagged ``tag``."""
        with self._lock:
            return {k: n for (t, k), n in sorted(self.counts.items()) if t == tag}

    def turns_started(self, tag: str) -> dict[int, int]:
        """Turn -> number of requests received (answered or not) for ``tag``."""
        with self._lock:
            return {k: n for (t, k), n in sorted(self.started.items()) if t == tag}

    def wait_for_turn(self, tag: str, turn: int, timeout: float = 60) -> bool:
        """Whether a request for ``turn`` of ``tag`` arrived within ``timeout`` seconds."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self._lock:
                if self.started[(tag, turn)]:
                    return True
            time.sleep(0.02)
        return False

    def close(self) -> None:
        self._closing.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def _reply(self, body: dict[str, Any]) -> tuple[str, int, str]:
        text = json.dumps(body.get("messages", []))
        match = _TAG.search(text)
        tag = match.group(1) if match else ""
        turn = sum(1 for m in body.get("messages", []) if m.get("role") == "assistant")
        content = self.script[min(turn, len(self.script) - 1)]
        return tag, turn, content

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path.rstrip("/").endswith("/models"):
                    send_json(self, 200, {"object": "list", "data": [{"id": "counting"}]})
                else:
                    send_json(self, 404, {"error": "not found"})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                tag, turn, content = server._reply(body)
                with server._lock:
                    server.started[(tag, turn)] += 1
                if server._closing.wait(server.delay):
                    return
                usage = {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}
                try:
                    if body.get("stream"):
                        self._stream(body, content, usage)
                    else:
                        send_json(self, 200, {
                            "id": "cmpl-count", "object": "chat.completion", "created": 0,
                            "model": body.get("model", "counting"),
                            "choices": [{"index": 0, "finish_reason": "stop",
                                         "message": {"role": "assistant", "content": content}}],
                            "usage": usage})
                except (BrokenPipeError, ConnectionResetError):
                    return  # the client went away (a killed server): not a served turn
                with server._lock:
                    server.counts[(tag, turn)] += 1

            def _stream(self, body: dict[str, Any], content: str, usage: dict[str, int]) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                chunk = {"id": "cmpl-count", "object": "chat.completion.chunk", "created": 0,
                         "model": body.get("model", "counting")}
                for choices, extra in (
                    ([{"index": 0, "delta": {"role": "assistant", "content": content},
                       "finish_reason": None}], {}),
                    ([{"index": 0, "delta": {}, "finish_reason": "stop"}], {}),
                    ([], {"usage": usage}),
                ):
                    self.wfile.write(f"data: {json.dumps({**chunk, 'choices': choices, **extra})}\n\n".encode())
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()

        return Handler
