"""The OpenAI-compatible backend against a fake chat-completions server on loopback."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest
from langchain_core.messages import HumanMessage, SystemMessage
from PIL import Image

from segresearch.agents.backends.openai_compat import (
    check_openai_endpoint,
    make_openai_model,
    parse_openai_spec,
    restore_stop_string,
)
from segresearch.agents.content import image_block, text_block
from segresearch.testing.provider_servers import send_json

pytestmark = pytest.mark.network

STOP = ["</search>", "</keyframe>"]
SEARCH_CUT = '<thinking>a</thinking><search>{"name": "text_search", "query": "x"}'


class FakeOpenAIServer:
    """Records each request and answers with queued canned completions."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.replies: list[dict[str, Any]] = []
        self.closing = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path.rstrip("/") == "/v1/models":
                    send_json(self, 200, {"object": "list", "data": [{"id": "fake"}]})
                else:
                    send_json(self, 404, {"error": "not found"})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                fake.requests.append(
                    {
                        "path": self.path,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "json": body,
                    }
                )
                reply = fake.replies.pop(0) if fake.replies else {}
                if fake.closing.wait(reply.get("delay", 0.0)):
                    return
                content = reply.get("content", "ok")
                finish = reply.get("finish_reason", "stop")
                usage = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
                try:
                    if body.get("stream"):
                        self._stream(body, content, finish, usage)
                    else:
                        send_json(self,
                            200,
                            {
                                "id": "cmpl-1",
                                "object": "chat.completion",
                                "created": 0,
                                "model": body["model"],
                                "choices": [
                                    {
                                        "index": 0,
                                        "message": {"role": "assistant", "content": content},
                                        "finish_reason": finish,
                                    }
                                ],
                                "usage": usage,
                            },
                        )
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _stream(self, body: dict, content: str, finish: str, usage: dict) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()

                def event(choices: list, extra: dict | None = None) -> None:
                    chunk = {
                        "id": "cmpl-1",
                        "object": "chat.completion.chunk",
                        "created": 0,
                        "model": body["model"],
                        "choices": choices,
                        **(extra or {}),
                    }
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())

                pieces = [content[i : i + 5] for i in range(0, len(content), 5)]
                for piece in pieces:
                    event([{"index": 0, "delta": {"content": piece}, "finish_reason": None}])
                event([{"index": 0, "delta": {}, "finish_reason": finish}])
                if (body.get("stream_options") or {}).get("include_usage"):
                    event([], {"usage": usage})
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    @property
    def last(self) -> dict[str, Any]:
        return self.requests[-1]["json"]

    def close(self) -> None:
        self.closing.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    srv = FakeOpenAIServer()
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture(autouse=True)
def _no_ambient_openai_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("SEGRESEARCH_OPENAI_API_KEY", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(var, raising=False)


def _hosted(server: FakeOpenAIServer, **kw: Any):
    """The fake server posing as a hosted API: no vLLM extras, stop strings stripped."""
    return make_openai_model("gpt-test", server.base_url, api_key="k", vllm_extras=False, **kw)


def test_images_arrive_as_data_urls_in_order(server: FakeOpenAIServer) -> None:
    red = image_block(Image.new("RGB", (8, 6), (255, 0, 0)))
    blue = image_block(Image.new("RGB", (4, 4), (0, 0, 255)), fmt="PNG")
    model = make_openai_model("Qwen/Qwen3-VL-4B-Instruct", server.base_url)
    messages = [
        SystemMessage("you segment things"),
        HumanMessage(content=[text_block("frame 1:"), red, text_block("frame 2:"), blue]),
    ]
    out = model.invoke(messages, stop=STOP)
    assert out.content == "ok"
    sent = server.last["messages"]
    assert sent[0] == {"role": "system", "content": "you segment things"}
    blocks = sent[1]["content"]
    assert [b["type"] for b in blocks] == ["text", "image_url", "text", "image_url"]
    assert blocks[0]["text"] == "frame 1:" and blocks[2]["text"] == "frame 2:"
    assert blocks[1]["image_url"]["url"] == red["image_url"]["url"]
    assert blocks[3]["image_url"]["url"] == blue["image_url"]["url"]
    assert blocks[1]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert blocks[3]["image_url"]["url"].startswith("data:image/png;base64,")


def test_store_references_are_sent_inline_as_before(server: FakeOpenAIServer) -> None:
    """The graph keeps references in its messages; the server receives the same JPEG data
    URL an inline block held before references existed, and the message is not changed."""
    from segresearch.agents.content import media_block

    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8))
    ref = media_block(img)
    assert ref["image_url"]["url"].startswith("media-ref:")
    model = make_openai_model("Qwen/Qwen3-VL-4B-Instruct", server.base_url)
    msg = HumanMessage(content=[text_block("frame 0:"), ref])
    model.invoke([msg], stop=STOP)
    sent = server.last["messages"][0]["content"]
    assert sent[1]["image_url"]["url"] == image_block(img)["image_url"]["url"]
    assert msg.content[1] == ref  # the caller's message still holds the reference


def test_local_server_gets_stop_and_vllm_extras(server: FakeOpenAIServer) -> None:
    server.replies.append({"content": SEARCH_CUT + "</search>"})
    model = make_openai_model("m", server.base_url)
    out = model.invoke([HumanMessage("q")], stop=STOP, max_tokens=77, temperature=0.7)
    payload = server.last
    assert payload["stop"] == STOP
    assert payload["include_stop_str_in_output"] is True
    assert payload["max_tokens"] == 77
    assert payload["temperature"] == 0.7
    # The server echoed the stop string already: nothing is added twice.
    assert out.content == SEARCH_CUT + "</search>"
    assert out.response_metadata["finish_reason"] == "stop"
    assert out.usage_metadata is not None
    assert out.usage_metadata["input_tokens"] == 11
    assert out.usage_metadata["output_tokens"] == 7


def test_defaults_reach_payload_and_per_call_extra_body_merges(server: FakeOpenAIServer) -> None:
    model = make_openai_model("m", server.base_url, temperature=0.0, max_tokens=321)
    model.invoke([HumanMessage("q")], extra_body={"top_k": 5})
    payload = server.last
    assert payload["max_tokens"] == 321
    assert payload["temperature"] == 0.0
    assert payload["top_k"] == 5
    assert payload["include_stop_str_in_output"] is True


def test_hosted_reply_gets_stop_string_restored(server: FakeOpenAIServer) -> None:
    server.replies.append({"content": SEARCH_CUT, "finish_reason": "stop"})
    model = _hosted(server)
    out = model.invoke([HumanMessage("q")], stop=STOP, max_tokens=50, temperature=0.2)
    assert out.content == SEARCH_CUT + "</search>"
    payload = server.last
    assert "include_stop_str_in_output" not in payload
    assert payload["stop"] == STOP
    assert payload["max_completion_tokens"] == 50
    assert payload["temperature"] == 0.2


def test_length_cut_is_kept_unrepaired(server: FakeOpenAIServer) -> None:
    server.replies.append({"content": '<search>{"na', "finish_reason": "length"})
    out = _hosted(server).invoke([HumanMessage("q")], stop=STOP)
    assert out.content == '<search>{"na'
    assert out.response_metadata["finish_reason"] == "length"


def test_stream_restores_stop_string(server: FakeOpenAIServer) -> None:
    server.replies.append({"content": "<keyframe>3", "finish_reason": "stop"})
    chunks = list(_hosted(server).stream([HumanMessage("q")], stop=STOP))
    assert "".join(c.content for c in chunks) == "<keyframe>3</keyframe>"
    assert server.last["stream"] is True


def test_ainvoke_and_astream(server: FakeOpenAIServer) -> None:
    server.replies += [
        {"content": SEARCH_CUT, "finish_reason": "stop"},
        {"content": "<keyframe>1", "finish_reason": "stop"},
    ]
    model = _hosted(server)

    async def go() -> tuple[str, str]:
        msg = await model.ainvoke([HumanMessage("q")], stop=STOP, max_tokens=9)
        parts = [c.content async for c in model.astream([HumanMessage("q")], stop=STOP)]
        return msg.content, "".join(parts)

    invoked, streamed = asyncio.run(go())
    assert invoked == SEARCH_CUT + "</search>"
    assert streamed == "<keyframe>1</keyframe>"
    assert server.requests[0]["json"]["max_completion_tokens"] == 9


def test_api_key_sent_but_never_shown(server: FakeOpenAIServer) -> None:
    secret = "sk-test-very-secret-123"
    model = make_openai_model("m", server.base_url, api_key=secret)
    model.invoke([HumanMessage("q")])
    assert server.requests[-1]["headers"]["authorization"] == f"Bearer {secret}"
    assert secret not in repr(model)
    assert secret not in str(model)


def test_api_key_from_environment(server: FakeOpenAIServer, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "from-openai")
    monkeypatch.setenv("SEGRESEARCH_OPENAI_API_KEY", "from-segresearch")
    make_openai_model("m", server.base_url).invoke([HumanMessage("q")])
    assert server.requests[-1]["headers"]["authorization"] == "Bearer from-segresearch"
    monkeypatch.delenv("SEGRESEARCH_OPENAI_API_KEY")
    make_openai_model("m", server.base_url).invoke([HumanMessage("q")])
    assert server.requests[-1]["headers"]["authorization"] == "Bearer from-openai"
    monkeypatch.delenv("OPENAI_API_KEY")
    make_openai_model("m", server.base_url).invoke([HumanMessage("q")])
    assert server.requests[-1]["headers"]["authorization"] == "Bearer EMPTY"


def test_base_url_from_environment(server: FakeOpenAIServer, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    model = make_openai_model("m")
    model.invoke([HumanMessage("q")], stop=STOP)
    assert server.requests[-1]["headers"]["authorization"] == "Bearer EMPTY"
    # An environment URL usually points at a hosted proxy: no vLLM-only fields.
    assert "include_stop_str_in_output" not in server.last


def test_missing_key_for_default_endpoint_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        make_openai_model("gpt-test")


def test_vllm_extras_default() -> None:
    assert make_openai_model("m", "http://127.0.0.1:1/v1").vllm_extras is True
    assert make_openai_model("m", "https://api.openai.com/v1", api_key="k").vllm_extras is False
    assert make_openai_model("m", api_key="k").vllm_extras is False
    assert make_openai_model("m", api_key="k", vllm_extras=True).vllm_extras is True


def test_timeout_fails_fast(server: FakeOpenAIServer) -> None:
    server.replies.append({"delay": 5.0})
    model = make_openai_model("m", server.base_url, timeout=0.3, max_retries=0)
    start = time.monotonic()
    with pytest.raises(Exception) as info:
        model.invoke([HumanMessage("q")])
    elapsed = time.monotonic() - start
    assert "timed out" in str(info.value).lower() or "timeout" in type(info.value).__name__.lower()
    assert elapsed < 1.5
    assert len(server.requests) == 1


def test_timeout_with_one_retry(server: FakeOpenAIServer) -> None:
    server.replies += [{"delay": 5.0}, {"delay": 5.0}]
    model = make_openai_model("m", server.base_url, timeout=0.3, max_retries=1)
    start = time.monotonic()
    with pytest.raises(Exception):  # noqa: B017 - the openai SDK's timeout class varies
        model.invoke([HumanMessage("q")])
    elapsed = time.monotonic() - start
    # Two attempts of 0.3 s plus the SDK's sub-second backoff.
    assert 0.6 <= elapsed < 3.0
    assert len(server.requests) == 2


def test_check_endpoint(server: FakeOpenAIServer) -> None:
    assert check_openai_endpoint(server.base_url) is None
    assert check_openai_endpoint(server.base_url + "/") is None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    msg = check_openai_endpoint(closed, timeout=1.0)
    assert msg is not None and "\n" not in msg
    assert closed in msg
    assert "vllm serve Qwen/Qwen3-VL-4B-Instruct --port 8000" in msg
    assert "replay:" in msg
    wrong_path = check_openai_endpoint(f"http://127.0.0.1:{server.port}")
    assert wrong_path is not None and "404" in wrong_path


def test_check_endpoint_hides_credentials_in_url() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    msg = check_openai_endpoint(f"http://user:hunter2@127.0.0.1:{port}/v1", timeout=1.0)
    assert msg is not None and "hunter2" not in msg


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            "Qwen/Qwen3-VL-4B-Instruct@http://127.0.0.1:8000/v1",
            ("Qwen/Qwen3-VL-4B-Instruct", "http://127.0.0.1:8000/v1"),
        ),
        ("gpt-4o@https://api.example.com/v1", ("gpt-4o", "https://api.example.com/v1")),
        ("Qwen/Qwen3-VL-4B-Instruct", ("Qwen/Qwen3-VL-4B-Instruct", None)),
        ("org/model@rev2", ("org/model@rev2", None)),
        ("org/model@rev2@http://h:1/v1", ("org/model@rev2", "http://h:1/v1")),
        ("  m@http://h/v1  ", ("m", "http://h/v1")),
    ],
)
def test_parse_openai_spec(spec: str, expected: tuple[str, str | None]) -> None:
    assert parse_openai_spec(spec) == expected


@pytest.mark.parametrize("spec", ["", "@http://h/v1"])
def test_parse_openai_spec_rejects_missing_model(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_openai_spec(spec)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (SEARCH_CUT, SEARCH_CUT + "</search>"),
        ("<keyframe>4", "<keyframe>4</keyframe>"),
        ("<search>q</search>", "<search>q</search>"),  # echoed already
        ("<search>a</search> then <keyframe>2", "<search>a</search> then <keyframe>2</keyframe>"),
        ("<keyframe>1</keyframe><search>x", "<keyframe>1</keyframe><search>x</search>"),
        ("<answer>cat</answer>", "<answer>cat</answer>"),  # natural end, no open tag
        ("plan: <search> next.<answer>x</answer>", "plan: <search> next.<answer>x</answer>"),
        ("", ""),
    ],
)
def test_restore_stop_string(text: str, expected: str) -> None:
    assert restore_stop_string(text, STOP) == expected


def test_restore_stop_string_needs_matching_stop() -> None:
    assert restore_stop_string("<search>x", None) == "<search>x"
    assert restore_stop_string("<search>x", ["</keyframe>"]) == "<search>x"
    assert restore_stop_string("<search>x", "</search>") == "<search>x</search>"
    assert restore_stop_string("<search>x", ["\n\n"]) == "<search>x"
