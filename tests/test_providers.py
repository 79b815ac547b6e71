"""Chat-model providers in the tool-calling protocol, checked on the wire.

Each provider takes a tool's images in its own form (OpenAI: a user message after the
``role: "tool"`` message; Anthropic: image blocks inside the ``tool_result``), and a mistake
there is invisible until a hosted API rejects the request. So these tests run the real
LangChain clients (``langchain-openai``, ``langchain-anthropic``) against loopback servers
that speak each documented wire format (``segresearch.testing.provider_servers``) and
assert the exact JSON the clients send, and that tool calls come back into
``AIMessage.tool_calls`` (streamed and not) the way the graph's parser reads them. The
model specs (``anthropic:...``, ``google_genai:...``), their one-line errors and the
serving policy for them are checked here too.
"""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from PIL import Image

from segresearch.agents.client_settings import validate_context
from segresearch.agents.content import media_block
from segresearch.agents.model_spec import PROVIDERS, SPEC_HELP, ModelSpec, Provider
from segresearch.agents.models import clear_model_cache, resolve_model
from segresearch.agents.path_policy import ALLOWED_MODELS_ENV, PathRefused
from segresearch.agents.providers import image_placement, messages_for, provider_family
from segresearch.cli.model_check import check_model
from segresearch.core.media import MEDIA_ROOTS_ENV
from segresearch.core.protocol import AnswerAction, KeyframeAction, SearchAction
from segresearch.core.tool_protocol import parse_tool_calls, tool_definitions, tool_observation
from segresearch.testing.provider_servers import AnthropicServer, OpenAIServer, Reply, ToolCall

pytestmark = pytest.mark.network

KEY = "sk-test-provider-secret-0123456789"
KEY_VARS = ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "ANTHROPIC_API_URL", "GOOGLE_API_KEY",
            "GEMINI_API_KEY", "OPENAI_API_KEY", "SEGRESEARCH_OPENAI_API_KEY", "OPENAI_BASE_URL",
            "SEGRESEARCH_MODEL", ALLOWED_MODELS_ENV, MEDIA_ROOTS_ENV)
ANSWER = {"keyframe": 3, "bbox_2d": [100, 200, 300, 400], "point_2d": [200, 300]}
SCRIPT = [Reply("Let me look at frame 3.", (ToolCall("keyframe", {"index": 3}),)),
          Reply("", (ToolCall("answer", ANSWER),))]
RED, BLUE = (220, 30, 30), (30, 30, 220)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    """No key or endpoint from the developer's shell; a fresh model cache per test."""
    for var in KEY_VARS:
        monkeypatch.delenv(var, raising=False)
    clear_model_cache()
    yield
    clear_model_cache()


def _frames() -> list[dict[str, Any]]:
    """Two images as the graph holds them: media-store references, not pixels."""
    return [media_block(Image.new("RGB", (16, 12), c)) for c in (RED, BLUE)]


def _bound(model):
    return model.bind_tools(tool_definitions("qwen3", 1000, True))


def _two_turns(model, placement: str, *, stream: bool) -> list[BaseMessage]:
    """Turn 1 calls ``keyframe``; its result (text and two images) goes back in
    ``placement``'s form, as the graph sends it; turn 2 answers. The conversation."""
    bound = _bound(model)
    msgs: list[BaseMessage] = [SystemMessage("You segment."), HumanMessage("Find the red car.")]

    def call(history: list[BaseMessage]) -> AIMessage:
        sent = messages_for(model, history)
        if not stream:
            return bound.invoke(sent)
        out = None
        for chunk in bound.stream(sent):
            out = chunk if out is None else out + chunk
        return AIMessage(content=out.content, tool_calls=out.tool_calls,
                         invalid_tool_calls=out.invalid_tool_calls)

    first = call(msgs)
    msgs += [first, *tool_observation(first.tool_calls[0]["id"],
                                      "Keyframe 3 at 1000 px: <image> and its neighbour <image>",
                                      _frames(), placement)]
    msgs.append(call(msgs))
    return msgs


def _pixel(b64: str) -> tuple[int, int, int]:
    return Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB").getpixel((8, 6))


def _close(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return all(abs(x - y) <= 12 for x, y in zip(a, b, strict=True))  # JPEG


# ------------------------------------------------------------------ OpenAI wire


@pytest.mark.parametrize("stream", [False, True])
def test_openai_sends_images_after_the_tool_message(stream):
    """OpenAI's chat completions take a tool result as text only: the client must send
    the assistant's tool call, then the ``role: "tool"`` message with the text, then a
    ``role: "user"`` message whose ``image_url`` parts hold the pixels inline (the graph's
    store references never leave the process)."""
    with OpenAIServer(SCRIPT) as server:
        model = resolve_model(f"openai:Qwen/Qwen3-VL-4B-Instruct@{server.base_url}")
        assert image_placement(model) == "after" and provider_family(model) == "qwen"
        msgs = _two_turns(model, image_placement(model), stream=stream)
        sent = server.requests
    assert len(sent) == 2 and bool(sent[1].get("stream")) is stream
    assert [t["function"]["name"] for t in sent[0]["tools"]] == [
        "text_search", "image_search", "keyframe", "answer"]
    assistant, tool, user = sent[1]["messages"][2:]
    assert assistant["role"] == "assistant"
    assert assistant["tool_calls"] == [{"type": "function", "id": "call_1_0", "function": {
        "name": "keyframe", "arguments": json.dumps({"index": 3})}}]
    assert tool == {"role": "tool", "tool_call_id": "call_1_0",
                    "content": "Keyframe 3 at 1000 px: [image 1] and its neighbour [image 2]"}
    assert user["role"] == "user"
    images = [p["image_url"]["url"] for p in user["content"] if p["type"] == "image_url"]
    texts = [p["text"] for p in user["content"] if p["type"] == "text"]
    assert [t.strip() for t in texts[1:]] == ["[image 1]", "[image 2]"]
    assert all(u.startswith("data:image/jpeg;base64,") for u in images)
    assert [_close(_pixel(u.split(",", 1)[1]), c) for u, c in zip(images, (RED, BLUE), strict=True)] \
        == [True, True]
    assert "media-ref" not in json.dumps(sent)
    action, dropped = parse_tool_calls(msgs[-1])
    assert isinstance(action, AnswerAction) and dropped == []
    assert (action.bbox_2d, action.point_2d) == ([100, 200, 300, 400], [200, 300])


@pytest.mark.parametrize("stream", [False, True])
def test_openai_tool_calls_come_back_as_tool_calls(stream):
    """Arguments streamed in pieces are joined into one call; several calls keep their
    order; arguments that are not JSON arrive as an invalid call, not as an exception."""
    script = [Reply("", (ToolCall("text_search", {"query": "red car"}),
                         ToolCall("keyframe", {"index": 2}))),
              Reply("", (ToolCall("keyframe", "index=3", id="call_bad"),))]
    with OpenAIServer(script) as server:
        bound = _bound(resolve_model(f"openai:gpt-4o@{server.base_url}"))
        replies = []
        for _ in script:
            if stream:
                out = None
                for chunk in bound.stream([HumanMessage("go")]):
                    out = chunk if out is None else out + chunk
                replies.append(out)
            else:
                replies.append(bound.invoke([HumanMessage("go")]))
    first, bad = replies
    assert [(c["name"], c["args"]) for c in first.tool_calls] == [
        ("text_search", {"query": "red car"}), ("keyframe", {"index": 2})]
    action, not_run = parse_tool_calls(first)
    assert isinstance(action, SearchAction) and action.query == "red car"
    assert [c["name"] for c in not_run] == ["keyframe"]
    assert bad.tool_calls == [] and bad.invalid_tool_calls[0]["args"] == "index=3"
    malformed = parse_tool_calls(bad)[0]  # read as a malformed <keyframe> tag is
    assert isinstance(malformed, KeyframeAction) and malformed.frame is None
    assert malformed.raw == "index=3"


# --------------------------------------------------------------- Anthropic wire


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_sends_images_inside_the_tool_result(monkeypatch, stream):
    """Anthropic's Messages API takes images inside the tool result: the client, built
    from the spec ``anthropic:...`` with the key and base URL from the environment, must
    send one user message whose ``tool_result`` block holds the text and base64 image
    blocks, in order, for the ``tool_use`` id the server gave."""
    with AnthropicServer(SCRIPT) as server:
        monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.base_url)
        model = resolve_model("anthropic:claude-sonnet-4-5")
        assert type(model).__name__ == "ChatAnthropic"
        assert image_placement(model) == "inside" and provider_family(model) == "anthropic"
        assert KEY not in repr(model)
        msgs = _two_turns(model, image_placement(model), stream=stream)
        sent = server.requests
    assert len(sent) == 2 and bool(sent[1].get("stream")) is stream
    assert sent[1]["model"] == "claude-sonnet-4-5" and sent[1]["system"] == "You segment."
    assert [t["name"] for t in sent[0]["tools"]] == ["text_search", "image_search", "keyframe", "answer"]
    assert sent[0]["tools"][3]["input_schema"]["required"] == ["keyframe", "bbox_2d", "point_2d"]
    assistant, result = sent[1]["messages"][1:]
    assert assistant["role"] == "assistant"
    assert [b for b in assistant["content"] if b["type"] == "tool_use"] == [
        {"type": "tool_use", "id": "toolu_1_0", "name": "keyframe", "input": {"index": 3}}]
    assert result["role"] == "user" and len(result["content"]) == 1
    block = result["content"][0]
    assert block["type"] == "tool_result" and block["tool_use_id"] == "toolu_1_0"
    kinds = [b["type"] for b in block["content"]]
    assert kinds == ["text", "image", "text", "image"]
    assert block["content"][0]["text"].startswith("Keyframe 3 at 1000 px:")
    images = [b["source"] for b in block["content"] if b["type"] == "image"]
    assert all(s["type"] == "base64" and s["media_type"] == "image/jpeg" for s in images)
    assert [_close(_pixel(s["data"]), c) for s, c in zip(images, (RED, BLUE), strict=True)] == [True, True]
    assert KEY not in json.dumps(sent) and "media-ref" not in json.dumps(sent)
    action, dropped = parse_tool_calls(msgs[-1])
    assert isinstance(action, AnswerAction) and dropped == []
    assert action.bbox_2d == [100, 200, 300, 400]


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_tool_use_comes_back_as_tool_calls(monkeypatch, stream):
    """``tool_use`` blocks (streamed as ``input_json_delta`` pieces or whole) become
    ``AIMessage.tool_calls`` with their ids; the text before them stays the reply's text."""
    script = [Reply("Searching first.", (ToolCall("image_search", {"query": "red sedan"}),
                                         ToolCall("answer", ANSWER)))]
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    with AnthropicServer(script) as server:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.base_url)
        bound = _bound(resolve_model("anthropic:claude-sonnet-4-5"))
        if stream:
            reply = None
            for chunk in bound.stream([HumanMessage("go")]):
                reply = chunk if reply is None else reply + chunk
        else:
            reply = bound.invoke([HumanMessage("go")])
    assert [(c["name"], c["args"], c["id"]) for c in reply.tool_calls] == [
        ("image_search", {"query": "red sedan"}, "toolu_1_0"), ("answer", ANSWER, "toolu_1_1")]
    assert reply.text.startswith("Searching first.")
    action, not_run = parse_tool_calls(reply)
    assert isinstance(action, SearchAction) and action.query == "red sedan"
    assert [c["id"] for c in not_run] == ["toolu_1_1"]


# ------------------------------------------------------------ specs and families


def test_provider_families_and_placements_from_specs():
    """What H3's coordinate defaults and the graph's observation form key on."""
    cases = {
        "openai:gpt-4o": ("openai", "after"),
        "openai:Qwen/Qwen3-VL-8B-Instruct@http://127.0.0.1:8000/v1": ("qwen", "after"),
        "openai:meta-llama/Llama-4-Scout@http://127.0.0.1:8000/v1": ("other", "after"),
        "anthropic:claude-sonnet-4-5": ("anthropic", "inside"),
        "google_genai:gemini-2.5-pro": ("google", "after"),
        "hf:/models/Qwen2.5-VL-3B-Instruct": ("qwen", "after"),
        "replay:cassette.json": ("other", "after"),
    }
    assert {s: (provider_family(s), image_placement(s)) for s in cases} == cases


def test_google_genai_spec_builds_gemini_with_key_from_environment(monkeypatch):
    """``google_genai:`` builds LangChain's Gemini client; GEMINI_API_KEY is enough, it
    never shows in the model's repr, and a tool's images reach it after the tool result."""
    pytest.importorskip("langchain_google_genai")  # the optional extra 'google'
    with pytest.raises(ValueError) as e:
        resolve_model("google_genai:gemini-2.5-pro")
    assert str(e.value) == ("model 'google_genai:gemini-2.5-pro': no API key for google_genai: "
                            "set GOOGLE_API_KEY or GEMINI_API_KEY")
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    model = resolve_model("google_genai:gemini-2.5-pro")
    assert type(model).__name__ == "ChatGoogleGenerativeAI" and KEY not in repr(model)
    assert provider_family(model) == "google" and image_placement(model) == "after"


def test_missing_key_and_package_are_one_line_at_the_cli_check(monkeypatch):
    """The CLI's early check names the variable to set, or the extra to install, in one
    line, before any folder is made; ``openai:NAME`` keeps its own key check."""
    assert check_model("anthropic:claude-sonnet-4-5", 1.0) == (
        "--model anthropic:claude-sonnet-4-5: no API key for anthropic: set ANTHROPIC_API_KEY")
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    assert check_model("anthropic:claude-sonnet-4-5", 1.0) is None
    monkeypatch.setitem(PROVIDERS, "anthropic", Provider(
        "langchain-anthropic", "langchain_anthropic_not_installed", "anthropic", ("ANTHROPIC_API_KEY",)))
    assert check_model("anthropic:claude-sonnet-4-5", 1.0) == (
        "--model anthropic:claude-sonnet-4-5: the anthropic provider needs langchain-anthropic; "
        "install it with `pip install 'segresearch[anthropic]'`")
    problem = check_model("groq:llama-3.3-70b", 1.0)
    assert problem is not None and "\n" not in problem and "pip install langchain-groq" in problem
    assert "OPENAI_API_KEY" in (check_model("openai:gpt-4o", 1.0) or "")
    assert ModelSpec.parse("vllm:model").problem == f"unknown model backend 'vllm': {SPEC_HELP}"


def test_served_clients_may_not_name_provider_models(monkeypatch, tmp_path):
    """A provider spec spends the operator's key: served, a client may name it only when
    it is the operator's own model or listed in SEGRESEARCH_ALLOWED_MODELS."""
    monkeypatch.setenv(MEDIA_ROOTS_ENV, str(tmp_path))
    with pytest.raises(PathRefused) as e:
        validate_context({"model": "anthropic:claude-opus-4-1"})
    assert str(e.value).count("\n") == 0 and ALLOWED_MODELS_ENV in str(e.value)
    monkeypatch.setenv(ALLOWED_MODELS_ENV, "openai:gpt-4o, Anthropic: claude-opus-4-1")
    assert validate_context({"model": "anthropic:claude-opus-4-1"}).model == "anthropic:claude-opus-4-1"
    with pytest.raises(PathRefused):
        validate_context({"model": "anthropic:claude-opus-4-1-other"})
    monkeypatch.delenv(ALLOWED_MODELS_ENV)
    monkeypatch.setenv("SEGRESEARCH_MODEL", "google_genai:gemini-2.5-pro")
    assert validate_context({"model": "google_genai:gemini-2.5-pro"}).model == "google_genai:gemini-2.5-pro"
