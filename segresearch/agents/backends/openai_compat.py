"""Chat backend for any server that speaks OpenAI's chat-completions API.

The same code path serves a local vLLM (or SGLang, LM Studio, ...) and hosted APIs, so the
graph never needs to know which one it talks to. Two differences between them matter to
the agent loop and are smoothed over here:

* The graph stops generation at ``</search>`` / ``</keyframe>`` and then parses the tag.
  vLLM drops the stop string from the output unless asked to keep it
  (``include_stop_str_in_output``); hosted APIs always drop it and reject unknown fields.
  So local servers get that field, and for servers that still strip the string the missing
  closing tag is put back (:func:`restore_stop_string`).
* Hosted APIs need a real key, local servers accept anything, and the key must never end
  up in logs, reprs or checkpoints.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, ClassVar
from urllib.parse import urlsplit

import httpx
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_openai import ChatOpenAI

from segresearch.agents.content import inline_media
from segresearch.agents.model_spec import parse_openai_spec
from segresearch.agents.path_policy import api_key_allowed
from segresearch.core.envvars import env_str
from segresearch.core.urls import redact_url

__all__ = [
    "OpenAICompatChatModel",
    "check_openai_endpoint",
    "make_openai_model",
    "parse_openai_spec",
    "restore_stop_string",
]

API_KEY_ENV_VARS = ("SEGRESEARCH_OPENAI_API_KEY", "OPENAI_API_KEY")
# vLLM's documented placeholder: its server requires *some* bearer token only when started
# with --api-key, and the openai client refuses to run without one.
PLACEHOLDER_API_KEY = "EMPTY"
# Hosts known to reject vLLM-only request fields with HTTP 400.
_HOSTED_OPENAI_HOSTS = frozenset({"api.openai.com"})

_CLOSING_TAG = re.compile(r"</([A-Za-z_][\w.-]*)>")
_ANY_CLOSING_TAG = re.compile(r"</[A-Za-z_][\w.-]*\s*>")


def _as_stop_list(stop: str | Sequence[str] | None) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    return [s for s in stop if s]


def restore_stop_string(text: str, stop: str | Sequence[str] | None) -> str:
    """Put back a closing-tag stop string that the server cut off.

    Call it only when the server reported ``finish_reason == "stop"``: after a length cut
    the tag really is unfinished and must stay so. Only stop strings that are closing tags
    (``</name>``) can be restored, and only when the text ends inside the matching opening
    tag, i.e. ``<name>`` occurs after the last ``</name>`` and no other closing tag follows
    it. That guard keeps an ordinary end-of-sequence stop from gaining a tag, e.g. when
    ``<search>`` was merely mentioned earlier and the reply went on to ``<answer>..</answer>``.
    """
    stops = _as_stop_list(stop)
    if not text or not stops or any(text.endswith(s) for s in stops):
        return text
    best_open = -1
    best_stop: str | None = None
    for s in stops:
        m = _CLOSING_TAG.fullmatch(s)
        if m is None:
            continue
        opening = re.compile(rf"<{re.escape(m.group(1))}(?:\s[^<>]*)?>")
        last_open = -1
        for om in opening.finditer(text):
            last_open = om.start()
        if last_open < 0 or text.rfind(s) > last_open:
            continue
        if _ANY_CLOSING_TAG.search(text, last_open):
            continue
        if last_open > best_open:
            best_open, best_stop = last_open, s
    return text + best_stop if best_stop is not None else text


class OpenAICompatChatModel(ChatOpenAI):
    """``ChatOpenAI`` that keeps stop strings in the reply on every server.

    A subclass rather than a wrapper so ``bind_tools``, ``with_structured_output``,
    batching, callbacks and LangGraph's token streaming keep working untouched; only the
    request payload and the finished text are adjusted. Streaming is covered too, since
    LangGraph switches ``invoke`` to ``_stream`` whenever a run streams messages.
    """

    # reads the graph's media-store references itself (segresearch.agents.providers.messages_for)
    resolves_media_refs: ClassVar[bool] = True

    vllm_extras: bool = False
    """Send vLLM's ``include_stop_str_in_output`` and the classic ``max_tokens`` field."""

    @classmethod
    def is_lc_serializable(cls) -> bool:
        # The inherited namespace would deserialise into a plain ChatOpenAI and silently
        # lose the stop-string repair; refusing is the honest answer.
        return False

    def _effective_stop(self, stop: list[str] | None) -> list[str]:
        return _as_stop_list(stop if stop is not None else self.stop)

    def _get_request_payload(
        self,
        input_: LanguageModelInput,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> dict:
        # The graph's images are store references; the server gets them inline.
        input_ = inline_media(self._convert_input(input_).to_messages())
        payload = super()._get_request_payload(input_, stop=stop, **kwargs)
        if self.vllm_extras and "messages" in payload:
            # Merged per request so a caller's own per-call extra_body cannot drop it.
            extra = dict(payload.get("extra_body") or {})
            extra.setdefault("include_stop_str_in_output", True)
            payload["extra_body"] = extra
            # Every OpenAI-compatible server understands max_tokens; not all of them know
            # the newer max_completion_tokens that ChatOpenAI sends by default.
            if "max_completion_tokens" in payload and "max_tokens" not in payload:
                payload["max_tokens"] = payload.pop("max_completion_tokens")
        return payload

    def _repair(self, result: ChatResult, stop: list[str] | None) -> ChatResult:
        stops = self._effective_stop(stop)
        if not stops:
            return result
        generations: list[ChatGeneration] = []
        for gen in result.generations:
            info = gen.generation_info or {}
            content = gen.message.content
            if info.get("finish_reason") == "stop" and isinstance(content, str):
                fixed = restore_stop_string(content, stops)
                if fixed != content:
                    message = gen.message.model_copy(update={"content": fixed})
                    gen = ChatGeneration(message=message, generation_info=gen.generation_info)
            generations.append(gen)
        return ChatResult(generations=generations, llm_output=result.llm_output)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        result = super()._generate(messages, stop=stop, run_manager=run_manager, **kwargs)
        return self._repair(result, stop)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        result = await super()._agenerate(messages, stop=stop, run_manager=run_manager, **kwargs)
        return self._repair(result, stop)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        tracker = _StreamTracker(self._effective_stop(stop))
        for chunk in super()._stream(messages, stop=stop, run_manager=run_manager, **kwargs):
            tracker.observe(chunk)
            yield chunk
        tail = tracker.missing_tail()
        if tail is not None:
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=tail))
            if run_manager:
                run_manager.on_llm_new_token(tail, chunk=chunk)
            yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        tracker = _StreamTracker(self._effective_stop(stop))
        async for chunk in super()._astream(messages, stop=stop, run_manager=run_manager, **kwargs):
            tracker.observe(chunk)
            yield chunk
        tail = tracker.missing_tail()
        if tail is not None:
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=tail))
            if run_manager:
                await run_manager.on_llm_new_token(tail, chunk=chunk)
            yield chunk


class _StreamTracker:
    """Collects streamed text so the missing stop string can be sent as one last chunk."""

    def __init__(self, stop: list[str]) -> None:
        self.stop = stop
        self.parts: list[str] = []
        self.finish_reason: str | None = None

    def observe(self, chunk: ChatGenerationChunk) -> None:
        content = chunk.message.content
        self.parts.append(content if isinstance(content, str) else chunk.text)
        reason = (chunk.generation_info or {}).get("finish_reason")
        if reason:
            self.finish_reason = reason

    def missing_tail(self) -> str | None:
        if not self.stop or self.finish_reason != "stop":
            return None
        text = "".join(self.parts)
        fixed = restore_stop_string(text, self.stop)
        return fixed[len(text) :] if fixed != text else None


def _is_hosted_openai(base_url: str) -> bool:
    try:
        host = urlsplit(base_url).hostname or ""
    except ValueError:
        return False
    return host.lower() in _HOSTED_OPENAI_HOSTS


def _env_key_allowed(base_url: str | None) -> bool:
    """Whether the key in the environment (the operator's) may go to ``base_url``. When
    the graph is served a client names the model endpoint, so the key goes only where the
    operator's own settings point (see ``path_policy.api_key_allowed``); locally, always."""
    return api_key_allowed(base_url)


def _resolve_api_key(api_key: str | None, base_url: str | None) -> str:
    if api_key:
        return api_key
    for var in API_KEY_ENV_VARS:
        value = env_str(var)
        if value:
            # Another endpoint gets the placeholder: the request still goes out (a server
            # without --api-key answers it), the secret does not.
            return value if _env_key_allowed(base_url) else PLACEHOLDER_API_KEY
    if base_url:
        return PLACEHOLDER_API_KEY
    raise ValueError(
        "No API key for the OpenAI API: set SEGRESEARCH_OPENAI_API_KEY or OPENAI_API_KEY, "
        "or give the base URL of a local OpenAI-compatible server (e.g. vLLM)."
    )


def make_openai_model(
    model: str,
    base_url: str | None = None,
    *,
    api_key: str | None = None,
    timeout: float = 120.0,
    max_retries: int = 2,
    temperature: float = 0.0,
    max_tokens: int = 1024,
    vllm_extras: bool | None = None,
) -> BaseChatModel:
    """Build the chat model for an OpenAI-compatible server.

    ``vllm_extras=None`` enables vLLM's extra request fields exactly when an explicit
    ``base_url`` was given (a self-hosted server), except for api.openai.com, which
    rejects them. A base URL taken from ``OPENAI_BASE_URL`` counts as hosted, since that
    variable usually points at a proxy of a hosted API. The key is never logged; it lives
    in a ``SecretStr`` and is masked in ``repr``.
    """
    if not model or not model.strip():
        raise ValueError("model name must not be empty")
    resolved_base = base_url or env_str("OPENAI_BASE_URL") or None
    try:
        key = _resolve_api_key(api_key, resolved_base)
    except ValueError as e:
        name, at, tail = model.strip().rpartition("@")
        if at:  # most likely an endpoint that lost its http://, not a model name with '@'
            raise ValueError(f"{tail!r} after '@' is not an http:// or https:// URL; for a "
                             f"server of your own write {name or 'NAME'}@http://HOST:PORT/v1 "
                             "(without a URL the hosted OpenAI API is used, which needs "
                             "SEGRESEARCH_OPENAI_API_KEY or OPENAI_API_KEY)") from e
        raise
    if vllm_extras is None:
        vllm_extras = base_url is not None and not _is_hosted_openai(base_url)
    return OpenAICompatChatModel(
        model=model.strip(),
        base_url=resolved_base,
        api_key=key,
        timeout=timeout,
        max_retries=max_retries,
        temperature=temperature,
        max_tokens=max_tokens,
        vllm_extras=vllm_extras,
        # Images travel as chat-completions image_url blocks; the Responses API (which
        # ChatOpenAI picks for some model names) expects another shape.
        use_responses_api=False,
    )


def check_openai_endpoint(base_url: str, timeout: float = 3.0) -> str | None:
    """Probe ``{base_url}/models`` so the CLI fails in seconds, not after retries.

    Returns None when a server answered; 401/403 count as answered because this probe
    carries no key and the real request will report auth problems precisely. Otherwise a
    one-line message that says how to get a server (or to run without one).
    """
    shown = redact_url(base_url)
    url = base_url.rstrip("/") + "/models"
    try:
        response = httpx.get(url, timeout=timeout)
    except httpx.TimeoutException:
        reason = f"no answer within {timeout:g} s"
    except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:
        detail = " ".join(str(exc).split()) or type(exc).__name__
        reason = detail
    else:
        if response.status_code < 400 or response.status_code in (401, 403):
            return None
        reason = f"GET /models answered HTTP {response.status_code}"
        if response.status_code == 404:
            reason += "; does the base URL end in /v1?"
    return (
        f"The OpenAI-compatible server at {shown} is not reachable ({reason}). "
        "Start one with `vllm serve Qwen/Qwen3-VL-4B-Instruct --port 8000` "
        "(then use --model openai:Qwen/Qwen3-VL-4B-Instruct@http://127.0.0.1:8000/v1), "
        "or run without a server using `--model replay:...`."
    )
